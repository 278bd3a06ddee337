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
#include <signal.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tpar.h"

/* Exit codes of a worker that could not start (pyworker/loop.h): another
 * would not start either. */
enum { EXIT_INIT_FAILED = 70, EXIT_NO_PYTHON = 72 };

static int redialling; /* a first connection worked: later failures are quiet */

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
    if (tpar_addr_split(addr, host, sizeof host, &port) < 0)
        fail("--connect %s: expected HOST:PORT", addr);
    if (!*host) {
        /* ":PORT": the host that started us with srun, at the address its
         * slurmd reached it by, which this node can reach too (tpar
         * --slurm listens on every address). */
        const char *h = getenv("SLURM_SRUN_COMM_HOST");
        if (!h || !*h)
            h = getenv("SLURM_LAUNCH_NODE_IPADDR");
        if (!h || !*h || strlen(h) >= sizeof host)
            fail("--connect %s: no host, and no SLURM_SRUN_COMM_HOST (not started by srun)",
                 addr);
        strcpy(host, h);
    }
    snprintf(serv, sizeof serv, "%u", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(host, serv, &hints, &res);
    if (rc != 0 && redialling)
        return -1;
    if (rc != 0)
        fail("--connect %s: %s", addr, gai_strerror(rc));
    int fd = -ECONNREFUSED;
    unsigned pause_ms = 50;
    for (;;) {
        for (struct addrinfo *ai = res; ai; ai = ai->ai_next)
            if ((fd = dial_one(ai, deadline)) >= 0)
                break;
        /* Refused when dialling again: the parent has closed its listener. */
        if (fd >= 0 || fd != -ECONNREFUSED || redialling ||
            ms_left(deadline) <= (int)pause_ms)
            break;
        poll(NULL, 0, (int)pause_ms);
        pause_ms = pause_ms < 800 ? pause_ms * 2 : 1000;
    }
    freeaddrinfo(res);
    if (fd < 0 && redialling)
        return -1;
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

/* Dials and authenticates: the socket; after a failure, no return on the
 * first connection, -1 on later ones (the parent has gone). */
static int connect_once(const char *addr, const uint8_t key[TPAR_SECRET_LEN], double timeout)
{
    double deadline = tpar_now() + timeout;
    int fd = dial(addr, deadline);
    if (fd < 0)
        return -1;
    int rc = handshake(fd, key, deadline);
    if (rc == 0)
        return fd;
    close(fd);
    if (redialling)
        return -1;
    if (rc == TPAR_EAUTH)
        fail("%s did not prove it knows the secret: not our parent", addr);
    if (rc == -ECONNRESET || rc == -EPIPE)
        fail("%s closed the connection during authentication (wrong secret?)", addr);
    fail("authentication with %s failed: %s", addr, tpar_strerror(rc));
}

static void sigint_noop(int sig)
{
    (void)sig;
}

static void describe(int st, char *buf, size_t n)
{
    if (WIFSIGNALED(st)) {
        const char *abbrev = sigabbrev_np(WTERMSIG(st));
        snprintf(buf, n, "killed by signal %d (SIG%s)", WTERMSIG(st), abbrev ? abbrev : "?");
    } else {
        snprintf(buf, n, "exited with code %d", WEXITSTATUS(st));
    }
}

/* One worker slot of the supervisor: a connection and the worker serving
 * it. */
struct slot {
    int fd;       /* our copy of the socket, -1 when empty */
    pid_t pid;    /* the worker, 0 when none */
    int killed;   /* we killed it: the parent dropped the connection */
    double born;
    int done;     /* not to be refilled */
};

static struct {
    struct slot *s;
    int n;
    int sfd;            /* SIGCHLD */
    sigset_t old_mask;
    const char *addr;
    double timeout;
    int exit_code;      /* a worker's start-up failure, passed on */
    uint8_t key[TPAR_SECRET_LEN];
} S;

/* Dials for slot i and forks its worker.  Returns the socket in the
 * worker; 0 in the supervisor. */
static int fill(int i)
{
    struct slot *sl = &S.s[i];
    int fd = connect_once(S.addr, S.key, S.timeout);
    if (fd < 0) { /* the parent is gone (quiet when redialling) */
        sl->done = 1;
        return 0;
    }
    pid_t pid = fork();
    if (pid < 0)
        fail("fork: %s", strerror(errno));
    if (pid == 0) {
        for (int k = 0; k < S.n; k++)
            if (S.s[k].fd >= 0)
                close(S.s[k].fd);
        close(S.sfd);
        sigprocmask(SIG_SETMASK, &S.old_mask, NULL);
        setpgid(0, 0); /* a timeout kills what the job started too */
        explicit_bzero(S.key, sizeof S.key);
        return fd;
    }
    sl->fd = fd;
    sl->pid = pid;
    sl->killed = 0;
    sl->born = tpar_now();
    redialling = 1;
    return 0;
}

/* Slot i's worker ended with wait status st. */
static void ended(int i, int st)
{
    struct slot *sl = &S.s[i];
    close(sl->fd); /* now the parent sees the connection end */
    sl->fd = -1;
    sl->pid = 0;
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0) {
        sl->done = 1; /* SHUTDOWN or end of input */
    } else if (WIFEXITED(st) && (WEXITSTATUS(st) == EXIT_INIT_FAILED ||
                                 WEXITSTATUS(st) == EXIT_NO_PYTHON)) {
        char d[64];
        describe(st, d, sizeof d);
        fprintf(stderr, "tpar-worker[%d]: its worker %s\n", (int)getpid(), d);
        sl->done = 1; /* it could not start: another would not either */
        if (!S.exit_code)
            S.exit_code = WEXITSTATUS(st);
    } else if (WIFSIGNALED(st) && !sl->killed && tpar_now() - sl->born < 1.0) {
        poll(NULL, 0, 100); /* dying at once: not too fast a loop */
    }
}

static void reap(void)
{
    struct signalfd_siginfo si;
    int st;
    pid_t pid;
    while (read(S.sfd, &si, sizeof si) > 0)
        ;
    while ((pid = waitpid(-1, &st, WNOHANG)) > 0)
        for (int i = 0; i < S.n; i++)
            if (S.s[i].pid == pid)
                ended(i, st);
}

/* Kills the worker of every slot whose connection the parent dropped. */
static void watch(struct pollfd *p)
{
    int n = 0, any_killed = 0;
    for (int i = 0; i < S.n; i++) {
        p[n].fd = S.s[i].pid && !S.s[i].killed ? S.s[i].fd : -1;
        p[n].events = POLLRDHUP;
        p[n].revents = 0;
        any_killed |= S.s[i].pid && S.s[i].killed;
        n++;
    }
    p[n] = (struct pollfd){.fd = S.sfd, .events = POLLIN};
    if (poll(p, (nfds_t)n + 1, any_killed ? 100 : -1) < 0)
        return;
    for (int i = 0; i < S.n; i++) {
        struct slot *sl = &S.s[i];
        if (p[i].fd >= 0 && (p[i].revents & (POLLRDHUP | POLLHUP | POLLERR))) {
            kill(-sl->pid, SIGKILL); /* the job's own children too */
            kill(sl->pid, SIGKILL);
            sl->killed = 1;
        }
    }
}

int tpar__worker_connect(const char *addr, double timeout, int workers)
{
    int rc = tpar_secret_from_env(S.key);
    if (rc == -ENOENT)
        rc = secret_from_stdin(S.key, tpar_now() + timeout);
    stdin_to_devnull();
    if (rc == -ENOENT)
        fail("no secret: set %s (tpar passes it) or give it on stdin", TPAR_SECRET_ENV);
    if (rc == -ETIMEDOUT)
        fail("no secret on stdin within %g s", timeout);
    if (rc < 0)
        fail("%s is not the run's secret (%d hex digits)", TPAR_SECRET_ENV,
             TPAR_SECRET_HEX);

    struct sigaction sa = {.sa_handler = sigint_noop, .sa_flags = SA_RESTART};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL); /* Ctrl-C is the parent's to handle */
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, &S.old_mask);
    if ((S.sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK)) < 0)
        fail("signalfd: %s", strerror(errno));
    S.addr = addr;
    S.timeout = timeout;
    S.n = workers > 0 ? workers : 1;
    S.s = calloc((size_t)S.n, sizeof *S.s);
    struct pollfd *p = calloc((size_t)S.n + 1, sizeof *p);
    if (!S.s || !p)
        fail("out of memory");
    for (int i = 0; i < S.n; i++)
        S.s[i].fd = -1;
    for (;;) {
        int live = 0;
        for (int i = 0; i < S.n; i++) {
            if (!S.s[i].pid && !S.s[i].done) {
                int fd = fill(i);
                if (fd > 0)
                    return fd; /* in the worker */
            }
            live += S.s[i].pid != 0;
        }
        if (!live)
            exit(S.exit_code);
        watch(p);
        reap();
    }
}
