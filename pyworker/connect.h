/* `tpar-worker --connect HOST:PORT`: a remote worker dials its parent and
 * authenticates (core/tpar.h, "remote workers") before it serves the same
 * frames it would serve on pipes. */
#ifndef TPAR_WORKER_CONNECT_H
#define TPAR_WORKER_CONNECT_H

/* Exit codes: could not connect or authenticate; a worker that retired
 * (--max-tasks, retire()) and wants its supervisor to dial again. */
enum { EXIT_CONNECT = 73, EXIT_RETIRED = 74 };

/* The connecting side is two processes.  The one started by the launcher
 * (srun, ssh) stays a small supervisor without Python: it dials, and for
 * each authenticated connection forks the worker that serves it.  It keeps
 * a copy of the socket to watch: when the parent closes the connection
 * while the worker lives (a job timed out; tpar was killed), it SIGKILLs
 * the worker's process group at once, so no job outlives its parent, and
 * dials again for a fresh worker (if the parent is gone, that fails and
 * the supervisor exits 0).  When the worker dies on its own (a job crashed
 * it, it exited with any code but these) it closes its copy, so the
 * parent sees the connection drop, and dials again; when the worker exits
 * 0 (SHUTDOWN or end of input) the slot is done; when it could not start
 * (70: its --init failed, 72: no Python) the slot is done too, and the
 * supervisor exits with that code once every slot is.
 * So a launcher's slot keeps serving the run however its workers end.
 * With `workers` > 1 it keeps that many workers, each on a connection of
 * its own, and exits when every one of them is done.
 *
 * Takes the run's secret from TPAR_SECRET (wiped from the environment), or
 * when that is unset from the first line of stdin (ssh passes stdin on, and
 * not the environment), then points stdin at /dev/null.  Dials addr
 * ("HOST:PORT", "[v6]:PORT"; ":PORT" under srun: the host srun runs on, as
 * SLURM_SRUN_COMM_HOST says), retrying refused connections for up to
 * `timeout` seconds, and authenticates within that time too.  Returns only
 * in the worker: the connected, authenticated socket (blocking, O_CLOEXEC),
 * with the worker a process-group leader.  A first dial or handshake that
 * fails prints why on stderr and exits EXIT_CONNECT.  Call before Python
 * starts, so that the secret never reaches it. */
int tpar__worker_connect(const char *addr, double timeout, int workers);

#endif
