/* The zygote's server in tpar-worker (zygote.c). */
#ifndef TPAR_WORKER_ZYGOTE_H
#define TPAR_WORKER_ZYGOTE_H

#include "loop.h"

/* Runs the zygote on the control socket (the input fd): forks a worker for
 * each FORK request and reports its pid, then its exit.  Call with Python
 * started; never returns (exits when the parent closes the socket). */
_Noreturn void tpar__zygote_serve(const struct tpar_worker_opts *o);

#endif
