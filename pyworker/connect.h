/* `tpar-worker --connect HOST:PORT`: a remote worker dials its parent and
 * authenticates (core/tpar.h, "remote workers") before it serves the same
 * frames it would serve on pipes. */
#ifndef TPAR_WORKER_CONNECT_H
#define TPAR_WORKER_CONNECT_H

/* Exit code of a worker that could not connect or authenticate. */
enum { EXIT_CONNECT = 73 };

/* Takes the run's secret from TPAR_SECRET (wiped from the environment), or
 * when that is unset from the first line of stdin (a launcher such as ssh
 * that does not pass the environment on passes stdin), then points stdin
 * at /dev/null.  Dials addr ("HOST:PORT", "[v6]:PORT"), retrying refused
 * connections for up to `timeout` seconds, and runs the handshake within
 * that time too.  Returns the connected, authenticated socket (blocking,
 * O_CLOEXEC); on any failure prints why on stderr and exits EXIT_CONNECT.
 * Call before Python starts, so that the secret never reaches it. */
int tpar__worker_connect(const char *addr, double timeout);

#endif
