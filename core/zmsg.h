/* The zygote's control messages: what the parent (core/zygote.c) and the
 * zygote (pyworker/zygote.c) say to each other over its SOCK_SEQPACKET
 * socket, one datagram per message.  Internal: not installed. */
#ifndef TPAR_ZMSG_H
#define TPAR_ZMSG_H

#include <stdint.h>

/*   FORK  p->z  a = request tag, b = how many fds follow (2 or 4): the two
 *               job-pipe ends, then the down and up lanes, as SCM_RIGHTS
 *   PID   z->p  a = request tag, b = the worker's pid or -errno
 *   EXIT  z->p  a = pid, b = wait status, c = its request's tag (matched by
 *               tag, not pid: by then the pid may be another worker's)
 *   KILL  p->z  a = request tag, b = signal: send it to that worker's
 *               process group and to the worker, if it has not been
 *               reaped; no answer.  Only the zygote, which reaps its
 *               children, knows that a pid is still its worker's: a parent
 *               that signalled the pid itself could hit a recycled one.
 * The zygote forwards a FORK request, fds and all, to its spare worker.
 * It kills a worker's process group before it reaps the worker, so what
 * a job started dies with it, whatever ended it. */
enum { TPAR__Z_FORK = 'F', TPAR__Z_PID = 'P', TPAR__Z_EXIT = 'X', TPAR__Z_KILL = 'K' };
struct tpar__zmsg {
    int32_t kind;
    int32_t a;
    int32_t b;
    int32_t c;
};

/* Sends a message with no fds.  0 or -errno (-EPIPE: the peer is gone). */
int tpar__zsend(int sock, int32_t kind, int32_t a, int32_t b, int32_t c);

/* Sends a FORK request: fds[0..1] the child's pipe ends, fds[2..3] the
 * lanes or -1.  0 or -errno. */
int tpar__zsend_fork(int sock, int32_t tag, const int fds[4]);

/* Receives one request (blocking) into *m: a FORK with its fds (as
 * tpar__zrecv_fork gives them) or a KILL (fds untouched).  0; -EPIPE at
 * EOF or on a socket error; -EPROTO for anything else. */
int tpar__zrecv(int sock, struct tpar__zmsg *m, int fds[4]);

/* Receives a FORK request (blocking): its tag and fds, received
 * close-on-exec; fds[2..3] are -1 when it came without lanes.  0; -EPIPE
 * at EOF or on a socket error; -EPROTO when the message is not a
 * well-formed FORK request. */
int tpar__zrecv_fork(int sock, int32_t *tag, int fds[4]);

#endif
