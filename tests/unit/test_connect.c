/* `tpar-worker --connect`: a remote worker dials the listener, proves it
 * knows the secret, and serves frames over the socket; its supervisor
 * kills it when the parent drops the connection and dials again; SHUTDOWN
 * ends both; a wrong secret ends with code 73.  Uses the real tpar-worker,
 * whose path is argv[1]. */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "tpar.h"

static char *worker;
static uint8_t key[TPAR_SECRET_LEN];
static char hex[TPAR_SECRET_HEX + 1];

/* Starts the supervisor: secret in the environment, or (stdin_secret) on
 * a pipe to its stdin.  extra: one more option or NULL. */
static pid_t start_worker(unsigned port, const char *secret, int stdin_secret,
                          const char *extra)
{
    char addr[64];
    int in[2];
    snprintf(addr, sizeof addr, "127.0.0.1:%u", port);
    if (pipe(in) < 0)
        abort();
    pid_t pid = fork();
    if (pid == 0) {
        dup2(in[0], 0);
        close(in[0]);
        close(in[1]);
        if (stdin_secret)
            unsetenv(TPAR_SECRET_ENV);
        else
            setenv(TPAR_SECRET_ENV, secret, 1);
        char *argv[] = {worker, "--connect", addr, (char *)extra, NULL};
        execv(worker, argv);
        _exit(127);
    }
    close(in[0]);
    if (stdin_secret) {
        char line[TPAR_SECRET_HEX + 2];
        snprintf(line, sizeof line, "%s\n", secret);
        CHECK_EQ(write(in[1], line, strlen(line)), (ssize_t)strlen(line));
    }
    close(in[1]);
    return pid;
}

static int next_worker(tpar_listener *l, double secs)
{
    double end = tpar_now() + secs;
    tpar_listen_event ev;
    while (tpar_now() < end) {
        int rc = tpar_listener_next(l, &ev);
        if (rc == 1 && ev.kind == TPAR_LISTEN_WORKER)
            return ev.fd;
        if (rc == 1)
            return -1000 + ev.err; /* refused */
        struct pollfd p = {.fd = tpar_listener_fd(l), .events = POLLIN};
        poll(&p, 1, 50);
    }
    return -ETIMEDOUT;
}

struct conn {
    int fd;
    tpar_decoder dec;
    uint8_t buf[1 << 16];
    size_t off, len;
};

/* The next frame's kind, its payload copied into out (cap bytes at most,
 * NUL-terminated); -EPIPE at EOF, -ETIMEDOUT after secs. */
static int recv_frame(struct conn *c, char *out, size_t cap, size_t *len, double secs)
{
    double end = tpar_now() + secs;
    for (;;) {
        while (c->off < c->len) {
            tpar_frame f;
            int got;
            ptrdiff_t r = tpar_decoder_feed(&c->dec, c->buf + c->off, c->len - c->off, &f, &got);
            if (r < 0)
                return (int)r;
            c->off += (size_t)r;
            if (got) {
                size_t n = f.len < cap - 1 ? f.len : cap - 1;
                memcpy(out, f.payload, n);
                out[n] = 0;
                if (len)
                    *len = f.len;
                return f.kind;
            }
        }
        struct pollfd p = {.fd = c->fd, .events = POLLIN};
        int ms = (int)((end - tpar_now()) * 1000);
        if (ms <= 0 || poll(&p, 1, ms) != 1)
            return -ETIMEDOUT;
        ssize_t n = read(c->fd, c->buf, sizeof c->buf);
        if (n <= 0)
            return n == 0 ? -EPIPE : -errno;
        c->off = 0;
        c->len = (size_t)n;
    }
}

static void conn_init(struct conn *c, int fd)
{
    memset(c, 0, sizeof *c);
    c->fd = fd;
    tpar_decoder_init(&c->dec, 0);
}

static void conn_close(struct conn *c)
{
    close(c->fd);
    tpar_decoder_free(&c->dec);
}

static int send_all(int fd, const void *p, size_t n)
{
    const uint8_t *b = p;
    while (n) {
        ssize_t w = write(fd, b, n);
        if (w < 0 && errno == EAGAIN) {
            struct pollfd pf = {.fd = fd, .events = POLLOUT};
            poll(&pf, 1, 1000);
            continue;
        }
        if (w <= 0)
            return -1;
        b += w;
        n -= (size_t)w;
    }
    return 0;
}

static int send_job(struct conn *c, const char *fn, const char *args, size_t args_len)
{
    tpar_buf b = {0};
    size_t fl = strlen(fn) + 1;
    uint8_t h[TPAR_FRAME_HEADER];
    tpar_frame_header(h, TPAR_FRAME_JOB_JSON, 0, (uint32_t)(fl + args_len + 1));
    tpar_buf_append(&b, h, sizeof h);
    tpar_buf_append(&b, fn, fl);
    tpar_buf_append(&b, args, args_len);
    tpar_buf_append(&b, "", 1); /* NUL, then empty kwargs */
    int rc = send_all(c->fd, b.data, b.len);
    tpar_buf_free(&b);
    return rc;
}

static uint32_t ready_pid(struct conn *c)
{
    char out[64];
    uint32_t pid = 0;
    CHECK_EQ(recv_frame(c, out, sizeof out, NULL, 20), TPAR_FRAME_READY);
    memcpy(&pid, out, 4);
    return pid;
}

static int wait_exit(pid_t pid, double secs)
{
    double end = tpar_now() + secs;
    int st;
    while (tpar_now() < end) {
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid)
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        poll(NULL, 0, 20);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    return -1;
}

static int gone(pid_t pid, double secs)
{
    double end = tpar_now() + secs;
    while (tpar_now() < end) {
        if (kill(pid, 0) < 0 && errno == ESRCH)
            return 1;
        poll(NULL, 0, 20);
    }
    return 0;
}

static tpar_listener *listener(void)
{
    tpar_listener *l = NULL;
    CHECK_EQ(tpar_listener_open(&l, "127.0.0.1", 0, key, NULL), 0);
    return l;
}

static void test_jobs_over_tcp(void)
{
    tpar_listener *l = listener();
    pid_t sup = start_worker(tpar_listener_port(l), hex, 0, NULL);
    struct conn c;
    int fd = next_worker(l, 20);
    CHECK(fd >= 0);
    conn_init(&c, fd);
    uint32_t wpid = ready_pid(&c);
    CHECK(wpid > 0 && wpid != (uint32_t)sup); /* served by the supervisor's child */
    static char out[1 << 16];
    size_t len;
    CHECK_EQ(send_job(&c, "operator:add", "[40,2]", 6), 0);
    CHECK_EQ(recv_frame(&c, out, sizeof out, &len, 20), TPAR_FRAME_RESULT);
    CHECK_EQ(len, 8 + 2);
    CHECK(memcmp(out + 8, "42", 2) == 0);
    /* 10 MB each way, inline. */
    size_t big = 10 * 1000 * 1000;
    char *args = malloc(big + 4);
    args[0] = '[';
    args[1] = '"';
    memset(args + 2, 'x', big);
    memcpy(args + 2 + big, "\"]", 2);
    double t0 = tpar_now();
    CHECK_EQ(send_job(&c, "builtins:len", args, big + 4), 0);
    CHECK_EQ(recv_frame(&c, out, sizeof out, &len, 30), TPAR_FRAME_RESULT);
    CHECK(memcmp(out + 8, "10000000", 8) == 0);
    fprintf(stderr, "# 10 MB there: %.1f ms\n", (tpar_now() - t0) * 1e3);
    CHECK_EQ(send_job(&c, "operator:mul", "[\"y\",10000000]", 14), 0);
    CHECK_EQ(recv_frame(&c, out, sizeof out, &len, 30), TPAR_FRAME_RESULT);
    CHECK_EQ(len, 8 + big + 2);
    fprintf(stderr, "# 10 MB there, 10 MB back over loopback TCP: %.1f ms\n",
            (tpar_now() - t0) * 1e3);
    free(args);
    /* SHUTDOWN: the worker exits 0, then its supervisor, with no redial. */
    uint8_t h[TPAR_FRAME_HEADER];
    tpar_frame_header(h, TPAR_FRAME_SHUTDOWN, 0, 0);
    CHECK_EQ(send_all(fd, h, sizeof h), 0);
    CHECK_EQ(recv_frame(&c, out, sizeof out, NULL, 10), -EPIPE);
    CHECK_EQ(wait_exit(sup, 10), 0);
    CHECK(gone((pid_t)wpid, 5));
    conn_close(&c);
    CHECK_EQ(next_worker(l, 0.3), -ETIMEDOUT);
    tpar_listener_free(l);
}

/* The parent drops the connection while a job runs (its timeout): the
 * worker and what its job started die at once, and a fresh worker dials
 * in.  Then the parent goes away for good: the supervisor exits 0. */
static void test_dropped_connection_kills_and_redials(void)
{
    tpar_listener *l = listener();
    pid_t sup = start_worker(tpar_listener_port(l), hex, 0, NULL);
    struct conn c;
    int fd = next_worker(l, 20);
    CHECK(fd >= 0);
    conn_init(&c, fd);
    uint32_t wpid = ready_pid(&c);
    char pidfile[] = "/tmp/tpar-test-connect-XXXXXX", args[128];
    int pf = mkstemp(pidfile);
    close(pf);
    snprintf(args, sizeof args, "[\"sleep 60 & echo $! >%s; wait\"]", pidfile);
    CHECK_EQ(send_job(&c, "os:system", args, strlen(args)), 0);
    pid_t sleeper = 0;
    for (int i = 0; i < 100 && sleeper <= 0; i++) {
        poll(NULL, 0, 50);
        FILE *f = fopen(pidfile, "r");
        if (f && fscanf(f, "%d", &sleeper) != 1)
            sleeper = 0;
        if (f)
            fclose(f);
    }
    unlink(pidfile);
    CHECK(sleeper > 0);
    shutdown(fd, SHUT_RDWR);
    conn_close(&c);
    CHECK(gone((pid_t)wpid, 5));
    CHECK(sleeper > 0 && gone(sleeper, 5)); /* what the job started died too */
    fd = next_worker(l, 20); /* a replacement */
    CHECK(fd >= 0);
    conn_init(&c, fd);
    uint32_t wpid2 = ready_pid(&c);
    CHECK(wpid2 != wpid);
    /* A job that crashes its worker: the connection drops, and a new
     * worker comes. */
    CHECK_EQ(send_job(&c, "os:abort", "[]", 2), 0);
    char out[256];
    CHECK_EQ(recv_frame(&c, out, sizeof out, NULL, 10), -EPIPE);
    conn_close(&c);
    fd = next_worker(l, 20);
    CHECK(fd >= 0);
    conn_init(&c, fd);
    ready_pid(&c);
    /* One that exits with a code of its own (not a start-up failure): the
     * same. */
    CHECK_EQ(send_job(&c, "os:_exit", "[3]", 3), 0);
    CHECK_EQ(recv_frame(&c, out, sizeof out, NULL, 10), -EPIPE);
    conn_close(&c);
    fd = next_worker(l, 20);
    CHECK(fd >= 0);
    conn_init(&c, fd);
    uint32_t wpid3 = ready_pid(&c);
    /* tpar goes away mid-job: listener closed, connection closed. */
    CHECK_EQ(send_job(&c, "time:sleep", "[60]", 4), 0);
    poll(NULL, 0, 200);
    tpar_listener_free(l);
    conn_close(&c);
    CHECK(gone((pid_t)wpid3, 5));
    CHECK_EQ(wait_exit(sup, 10), 0);
}

static void test_secret_on_stdin_and_retirement(void)
{
    tpar_listener *l = listener();
    pid_t sup = start_worker(tpar_listener_port(l), hex, 1, "--max-tasks=1");
    struct conn c;
    char out[256];
    int fd = next_worker(l, 20);
    CHECK(fd >= 0);
    conn_init(&c, fd);
    uint32_t wpid = ready_pid(&c);
    CHECK_EQ(send_job(&c, "operator:add", "[1,2]", 5), 0);
    CHECK_EQ(recv_frame(&c, out, sizeof out, NULL, 10), TPAR_FRAME_RESULT);
    CHECK(memcmp(out + 8, "3", 1) == 0);
    CHECK_EQ(recv_frame(&c, out, sizeof out, NULL, 10), -EPIPE); /* retired */
    conn_close(&c);
    CHECK(gone((pid_t)wpid, 5));
    fd = next_worker(l, 20); /* its supervisor dialled again */
    CHECK(fd >= 0);
    conn_init(&c, fd);
    ready_pid(&c);
    tpar_listener_free(l);
    conn_close(&c);
    CHECK_EQ(wait_exit(sup, 10), 0);
}

/* One supervisor, three workers, three connections; each ends on its own
 * SHUTDOWN, and the supervisor once all three have. */
static void test_several_workers(void)
{
    tpar_listener *l = listener();
    pid_t sup = start_worker(tpar_listener_port(l), hex, 0, "--workers=3");
    struct conn c[3];
    uint32_t pids[3];
    char out[64];
    for (int i = 0; i < 3; i++) {
        int fd = next_worker(l, 20);
        CHECK(fd >= 0);
        conn_init(&c[i], fd);
        pids[i] = ready_pid(&c[i]);
    }
    CHECK(pids[0] != pids[1] && pids[1] != pids[2] && pids[0] != pids[2]);
    CHECK_EQ(next_worker(l, 0.3), -ETIMEDOUT); /* no fourth */
    uint8_t h[TPAR_FRAME_HEADER];
    tpar_frame_header(h, TPAR_FRAME_SHUTDOWN, 0, 0);
    for (int i = 0; i < 3; i++) {
        CHECK_EQ(send_job(&c[i], "operator:add", "[1,1]", 5), 0);
        CHECK_EQ(recv_frame(&c[i], out, sizeof out, NULL, 10), TPAR_FRAME_RESULT);
        CHECK_EQ(send_all(c[i].fd, h, sizeof h), 0);
        CHECK_EQ(recv_frame(&c[i], out, sizeof out, NULL, 10), -EPIPE);
        if (i < 2)
            CHECK_EQ(waitpid(sup, NULL, WNOHANG), 0); /* still serving the others */
        conn_close(&c[i]);
    }
    CHECK_EQ(wait_exit(sup, 10), 0);
    CHECK_EQ(next_worker(l, 0.3), -ETIMEDOUT); /* no redial after SHUTDOWN */
    tpar_listener_free(l);
}

static void test_wrong_secret(void)
{
    tpar_listener *l = listener();
    uint8_t k2[TPAR_SECRET_LEN];
    char hex2[TPAR_SECRET_HEX + 1];
    tpar_secret_new(k2, hex2);
    pid_t sup = start_worker(tpar_listener_port(l), hex2, 0, NULL);
    CHECK_EQ(next_worker(l, 20), -1000 + TPAR_EAUTH);
    CHECK_EQ(wait_exit(sup, 10), 73);
    sup = start_worker(tpar_listener_port(l), "not hex", 0, NULL);
    CHECK_EQ(wait_exit(sup, 10), 73);
    tpar_listener_free(l);
    /* Nobody listening: it tries for --connect-timeout, then gives up. */
    sup = start_worker(1, hex, 0, "--connect-timeout=1");
    CHECK_EQ(wait_exit(sup, 10), 73);
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return 2;
    worker = argv[1];
    signal(SIGPIPE, SIG_IGN);
    if (tpar_secret_new(key, hex) < 0)
        return 1;
    RUN(test_jobs_over_tcp);
    RUN(test_dropped_connection_kills_and_redials);
    RUN(test_secret_on_stdin_and_retirement);
    RUN(test_several_workers);
    RUN(test_wrong_secret);
    return CHECK_DONE();
}
