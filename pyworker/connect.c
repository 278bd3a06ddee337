/* The remote worker's side of the connection: the secret, the dial, the
 * handshake.  Blocking, with one deadline for all of it; no Python yet. */
#include "connect.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tpar.h"

static _Noreturn void fail(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "tpar-worker[%d]: ", (int)getpid());
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(EXIT_CONNECT);
}

static int ms_left(double deadline)
{
    double left = deadline - tpar_now();
    return left <= 0 ? 0 : (int)(left * 1000) + 1;
}

/* Reads the secret's hex line from stdin, byte by byte (so nothing past it
 * is taken), within the deadline. */
static int secret_from_stdin(uint8_t key[TPAR_SECRET_LEN], double deadline)
{
    char line[TPAR_SECRET_HEX + 2];
    size_t n = 0;
    if (isatty(STDIN_FILENO))
        return -ENOENT;
    while (n < sizeof line - 1) {
        struct pollfd p = {.fd = STDIN_FILENO, .events = POLLIN};
        int r = poll(&p, 1, ms_left(deadline));
        if (r == 0)
            return -ETIMEDOUT;
        if (r < 0 && errno == EINTR)
            continue;
        ssize_t k = read(STDIN_FILENO, line + n, 1);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            break;
        if (line[n] == '\n')
            break;
        n++;
    }
    line[n] = '\0';
    if (n == 0)
        return -ENOENT;
    /* Through the environment parser, so both paths check alike. */
    setenv(TPAR_SECRET_ENV, line, 1);
    explicit_bzero(line, sizeof line);
    return tpar_secret_from_env(key);
}

static void stdin_to_devnull(void)
{
    int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (null >= 0) {
        dup2(null, STDIN_FILENO);
        close(null);
    }
}

/* Connects to one address, waiting at most until the deadline: the fd, or
 * -errno. */
static int dial_one(const struct addrinfo *ai, double deadline)
{
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK,
                    ai->ai_protocol);
    if (fd < 0)
        return -errno;
    int err = 0;
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
        err = errno;
        if (err == EINPROGRESS) {
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            int r;
            while ((r = poll(&p, 1, ms_left(deadline))) < 0 && errno == EINTR)
                ;
            socklen_t sl = sizeof err;
            if (r == 0)
                err = ETIMEDOUT;
            else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &sl) < 0)
                err = errno;
        }
    }
    if (err) {
        close(fd);
        return -err;
    }
    int fl = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    tpar_tcp_tune(fd);
    return fd;
}

/* Tries every address of host:port until one connects; refused ones are
 * tried again (a parent may be a moment late to listen) until the
 * deadline. */
static int dial(const char *addr, double deadline)
{
    char host[256], serv[8];
    unsigned port;
    if (tpar_addr_split(addr, host, sizeof host, &port) < 0 || !*host)
        fail("--connect %s: expected HOST:PORT", addr);
    snprintf(serv, sizeof serv, "%u", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(host, serv, &hints, &res);
    if (rc != 0)
        fail("--connect %s: %s", addr, gai_strerror(rc));
    int fd = -ECONNREFUSED;
    unsigned pause_ms = 50;
    for (;;) {
        for (struct addrinfo *ai = res; ai; ai = ai->ai_next)
            if ((fd = dial_one(ai, deadline)) >= 0)
                break;
        if (fd >= 0 || fd != -ECONNREFUSED || ms_left(deadline) <= (int)pause_ms)
            break;
        poll(NULL, 0, (int)pause_ms);
        pause_ms = pause_ms < 800 ? pause_ms * 2 : 1000;
    }
    freeaddrinfo(res);
    if (fd < 0)
        fail("cannot connect to %s: %s", addr, tpar_strerror(fd));
    return fd;
}

/* Reads exactly n bytes (the handshake's; what follows is the stream's). */
static int read_exact(int fd, uint8_t *p, size_t n, double deadline)
{
    while (n) {
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        int r = poll(&pf, 1, ms_left(deadline));
        if (r < 0 && errno == EINTR)
            continue;
        if (r == 0)
            return -ETIMEDOUT;
        ssize_t k = recv(fd, p, n, 0);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return k < 0 ? -errno : -ECONNRESET;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

static int handshake(int fd, const uint8_t key[TPAR_SECRET_LEN], double deadline)
{
    tpar_auth a;
    uint8_t buf[TPAR_FRAME_HEADER + TPAR_AUTH_FRAME_MAX];
    int rc = tpar_auth_init(&a, TPAR_AUTH_WORKER, key);
    while (rc == 0) {
        size_t want = tpar_auth_want(&a);
        if ((rc = read_exact(fd, buf, want, deadline)) < 0)
            break;
        rc = tpar_auth_feed(&a, buf, want);
        while (rc >= 0 && a.out.len) {
            ssize_t w = send(fd, a.out.data, a.out.len, MSG_NOSIGNAL);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0) {
                rc = -errno;
                break;
            }
            tpar_buf_consume(&a.out, (size_t)w);
        }
    }
    tpar_auth_clear(&a);
    return rc == 1 ? 0 : rc;
}

int tpar__worker_connect(const char *addr, double timeout)
{
    uint8_t key[TPAR_SECRET_LEN];
    double deadline = tpar_now() + timeout;
    int rc = tpar_secret_from_env(key);
    if (rc == -ENOENT)
        rc = secret_from_stdin(key, deadline);
    stdin_to_devnull();
    if (rc == -ENOENT)
        fail("no secret: set %s (tpar passes it) or give it on stdin", TPAR_SECRET_ENV);
    if (rc == -ETIMEDOUT)
        fail("no secret on stdin within %g s", timeout);
    if (rc < 0)
        fail("%s is not the run's secret (%d hex digits)", TPAR_SECRET_ENV,
             TPAR_SECRET_HEX);
    int fd = dial(addr, deadline);
    rc = handshake(fd, key, deadline);
    explicit_bzero(key, sizeof key);
    if (rc == TPAR_EAUTH)
        fail("%s did not prove it knows the secret: not our parent", addr);
    if (rc == -ECONNRESET || rc == -EPIPE)
        fail("%s closed the connection during authentication (wrong secret?)", addr);
    if (rc < 0)
        fail("authentication with %s failed: %s", addr, tpar_strerror(rc));
    return fd;
}
