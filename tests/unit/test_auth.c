/* The remote workers' handshake (core/auth.c) and the parent's listener
 * (core/net.c): the handshake in memory, byte by byte; every way a peer
 * can fail it; and the listener over real loopback sockets, refusing
 * wrong secrets, silent peers, garbage and oversized frames, and bounding
 * the connections that wait. */
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <arpa/inet.h>

#include "check.h"
#include "tpar.h"

static uint8_t key_a[TPAR_SECRET_LEN], key_b[TPAR_SECRET_LEN];

/* Moves what `from` has to send into `to`, n bytes at a time (never more
 * than `to` wants).  Returns the last feed's result, or 0 when nothing
 * moved. */
static int pump(tpar_auth *from, tpar_auth *to, size_t step)
{
    int rc = 0;
    while (from->out.len && tpar_auth_want(to)) {
        size_t n = tpar_auth_want(to);
        if (n > step)
            n = step;
        if (n > from->out.len)
            n = from->out.len;
        rc = tpar_auth_feed(to, from->out.data, n);
        tpar_buf_consume(&from->out, n);
        if (rc != 0)
            return rc;
    }
    return rc;
}

static void handshake(const uint8_t *pk, const uint8_t *wk, size_t step, int *prc, int *wrc)
{
    tpar_auth p, w;
    CHECK_EQ(tpar_auth_init(&p, TPAR_AUTH_PARENT, pk), 0);
    CHECK_EQ(tpar_auth_init(&w, TPAR_AUTH_WORKER, wk), 0);
    CHECK_EQ(tpar_auth_want(&w), TPAR_FRAME_HEADER);
    CHECK_EQ(p.out.len, TPAR_FRAME_HEADER + TPAR_AUTH_NONCE_LEN); /* CHALLENGE */
    *wrc = pump(&p, &w, step);                                    /* -> worker */
    *prc = pump(&w, &p, step);                                    /* RESPONSE */
    if (*prc == 1)
        *wrc = pump(&p, &w, step); /* PROOF */
    CHECK_EQ(p.out.len, 0);
    tpar_auth_clear(&p);
    tpar_auth_clear(&w);
}

static void test_handshake_in_any_split(void)
{
    size_t steps[] = {1, 3, 7, 8, 100};
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        int prc, wrc;
        handshake(key_a, key_a, steps[i], &prc, &wrc);
        CHECK_EQ(prc, 1);
        CHECK_EQ(wrc, 1);
    }
}

static void test_wrong_secret_is_refused(void)
{
    int prc, wrc;
    handshake(key_a, key_b, 5, &prc, &wrc);
    CHECK_EQ(prc, TPAR_EAUTH);
    CHECK_EQ(wrc, 0); /* the worker never got a proof */
}

/* A parent that does not know the secret cannot fake a proof: the worker
 * refuses it (a worker dialled the wrong host, or a man in the middle). */
static void test_forged_proof_is_refused(void)
{
    tpar_auth p, w, fake;
    CHECK_EQ(tpar_auth_init(&p, TPAR_AUTH_PARENT, key_a), 0);
    CHECK_EQ(tpar_auth_init(&w, TPAR_AUTH_WORKER, key_a), 0);
    CHECK_EQ(pump(&p, &w, 64), 0);
    CHECK_EQ(pump(&w, &p, 64), 1);
    /* The real proof, one bit changed. */
    p.out.data[TPAR_FRAME_HEADER + 5] ^= 0x10;
    CHECK_EQ(pump(&p, &w, 64), TPAR_EAUTH);
    CHECK_EQ(tpar_auth_want(&w), 0);
    tpar_auth_clear(&p);
    tpar_auth_clear(&w);
    /* A worker's answer sent back as the parent's proof (reflection): the
     * labels differ, so it fails too. */
    CHECK_EQ(tpar_auth_init(&fake, TPAR_AUTH_PARENT, key_a), 0);
    CHECK_EQ(tpar_auth_init(&w, TPAR_AUTH_WORKER, key_a), 0);
    CHECK_EQ(pump(&fake, &w, 64), 0);
    uint8_t proof[TPAR_FRAME_HEADER + TPAR_AUTH_MAC_LEN];
    tpar_frame_header(proof, TPAR_FRAME_AUTH, TPAR_AUTH_PROOF, TPAR_AUTH_MAC_LEN);
    memcpy(proof + TPAR_FRAME_HEADER, w.out.data + TPAR_FRAME_HEADER + TPAR_AUTH_NONCE_LEN,
           TPAR_AUTH_MAC_LEN);
    CHECK_EQ(tpar_auth_feed(&w, proof, TPAR_FRAME_HEADER), 0);
    CHECK_EQ(tpar_auth_feed(&w, proof + TPAR_FRAME_HEADER, TPAR_AUTH_MAC_LEN), TPAR_EAUTH);
    tpar_auth_clear(&fake);
    tpar_auth_clear(&w);
}

/* Feeds one header to a parent waiting for RESPONSE. */
static int parent_gets_header(uint8_t kind, uint8_t status, uint32_t len)
{
    tpar_auth p;
    uint8_t h[TPAR_FRAME_HEADER];
    CHECK_EQ(tpar_auth_init(&p, TPAR_AUTH_PARENT, key_a), 0);
    tpar_frame_header(h, kind, status, len);
    int rc = tpar_auth_feed(&p, h, sizeof h);
    CHECK_EQ(tpar_auth_want(&p), 0); /* failed for good */
    tpar_auth_clear(&p);
    return rc;
}

static void test_bad_frames_before_auth(void)
{
    CHECK_EQ(parent_gets_header(TPAR_FRAME_AUTH, TPAR_AUTH_RESPONSE, 1u << 30), TPAR_ETOOBIG);
    CHECK_EQ(parent_gets_header(TPAR_FRAME_AUTH, TPAR_AUTH_RESPONSE, 65), TPAR_ETOOBIG);
    CHECK_EQ(parent_gets_header(TPAR_FRAME_JOB_PICKLE, 0, 10), TPAR_EBADFRAME);
    CHECK_EQ(parent_gets_header(TPAR_FRAME_READY, 1, 4), TPAR_EBADFRAME);
    CHECK_EQ(parent_gets_header(TPAR_FRAME_AUTH, TPAR_AUTH_PROOF, 32), TPAR_EBADFRAME);
    CHECK_EQ(parent_gets_header(TPAR_FRAME_AUTH, TPAR_AUTH_RESPONSE, 63), TPAR_EBADFRAME);
    /* Plain text ("GET / HTTP/1.1"). */
    tpar_auth p;
    CHECK_EQ(tpar_auth_init(&p, TPAR_AUTH_PARENT, key_a), 0);
    CHECK(tpar_auth_feed(&p, (const uint8_t *)"GET / HT", 8) < 0);
    tpar_auth_clear(&p);
}

static void test_secret_from_env(void)
{
    uint8_t key[TPAR_SECRET_LEN];
    char hex[TPAR_SECRET_HEX + 1];
    CHECK_EQ(tpar_secret_new(key_b, hex), 0);
    CHECK_EQ(strlen(hex), TPAR_SECRET_HEX);
    setenv(TPAR_SECRET_ENV, hex, 1);
    CHECK_EQ(tpar_secret_from_env(key), 0);
    CHECK(memcmp(key, key_b, sizeof key) == 0);
    CHECK(getenv(TPAR_SECRET_ENV) == NULL);
    CHECK_EQ(tpar_secret_from_env(key), -ENOENT);
    setenv(TPAR_SECRET_ENV, "abc", 1);
    CHECK_EQ(tpar_secret_from_env(key), -EINVAL);
    CHECK(getenv(TPAR_SECRET_ENV) == NULL);
    hex[10] = 'x';
    setenv(TPAR_SECRET_ENV, hex, 1);
    CHECK_EQ(tpar_secret_from_env(key), -EINVAL);
    /* Two fresh secrets differ. */
    uint8_t k2[TPAR_SECRET_LEN];
    CHECK_EQ(tpar_secret_new(k2, hex), 0);
    CHECK(memcmp(k2, key_b, sizeof k2) != 0);
}

static void test_addr_split(void)
{
    char h[64];
    unsigned port;
    CHECK_EQ(tpar_addr_split("node7:4000", h, sizeof h, &port), 0);
    CHECK(strcmp(h, "node7") == 0);
    CHECK_EQ(port, 4000);
    CHECK_EQ(tpar_addr_split(":0", h, sizeof h, &port), 0);
    CHECK(strcmp(h, "") == 0);
    CHECK_EQ(port, 0);
    CHECK_EQ(tpar_addr_split("[::1]:65535", h, sizeof h, &port), 0);
    CHECK(strcmp(h, "::1") == 0);
    CHECK_EQ(port, 65535);
    CHECK_EQ(tpar_addr_split("node7", h, sizeof h, &port), -EINVAL);
    CHECK_EQ(tpar_addr_split("node7:", h, sizeof h, &port), -EINVAL);
    CHECK_EQ(tpar_addr_split("node7:65536", h, sizeof h, &port), -EINVAL);
    CHECK_EQ(tpar_addr_split("node7:-1", h, sizeof h, &port), -EINVAL);
    CHECK_EQ(tpar_addr_split("node7:12x", h, sizeof h, &port), -EINVAL);
    CHECK_EQ(tpar_addr_split("::1:80", h, sizeof h, &port), -EINVAL);
    CHECK_EQ(tpar_addr_split("[::1]80", h, sizeof h, &port), -EINVAL);
    CHECK_EQ(tpar_addr_split("abcdefgh:1", h, 4, &port), -EINVAL);
}

/* ---------------------------------------------------------- the listener */

static int dial(unsigned port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
        abort();
    return fd;
}

/* Drives the listener until it has an event or `secs` pass: 1 or 0. */
static int next_event(tpar_listener *l, tpar_listen_event *ev, double secs)
{
    double end = tpar_now() + secs;
    for (;;) {
        int rc = tpar_listener_next(l, ev);
        CHECK(rc >= 0);
        if (rc != 0)
            return rc > 0;
        double now = tpar_now(), d = tpar_listener_deadline(l);
        if (now >= end)
            return 0;
        double until = d && d < end ? d : end;
        struct pollfd p = {.fd = tpar_listener_fd(l), .events = POLLIN};
        poll(&p, 1, (int)((until - now) * 1000) + 1);
    }
}

/* The worker's side of the handshake over a blocking socket: 1 when the
 * parent proved itself, else the failure. */
static int worker_auth(int fd, const uint8_t *key)
{
    tpar_auth w;
    uint8_t buf[128];
    int rc = 0;
    CHECK_EQ(tpar_auth_init(&w, TPAR_AUTH_WORKER, key), 0);
    while (rc == 0) {
        ssize_t n = read(fd, buf, tpar_auth_want(&w));
        if (n <= 0) {
            rc = -EPIPE;
            break;
        }
        rc = tpar_auth_feed(&w, buf, (size_t)n);
        if (w.out.len) {
            if (write(fd, w.out.data, w.out.len) != (ssize_t)w.out.len)
                rc = -EPIPE;
            tpar_buf_consume(&w.out, w.out.len);
        }
    }
    tpar_auth_clear(&w);
    return rc;
}

/* A worker process: dials, authenticates with key, writes "hi" on success. */
static pid_t worker_child(unsigned port, const uint8_t *key)
{
    pid_t pid = fork();
    if (pid == 0) {
        int fd = dial(port);
        int rc = worker_auth(fd, key);
        if (rc == 1 && write(fd, "hi", 2) != 2)
            rc = -EPIPE;
        _exit(rc == 1 ? 0 : 1);
    }
    return pid;
}

static int child_status(pid_t pid)
{
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static tpar_listener *open_listener(double timeout, int max_pending)
{
    tpar_listener *l = NULL;
    tpar_listen_opts o = {.max_pending = max_pending, .auth_timeout = timeout};
    CHECK_EQ(tpar_listener_open(&l, "127.0.0.1", 0, key_a, &o), 0);
    CHECK(l && tpar_listener_port(l) > 0);
    return l;
}

static void test_listener_accepts_a_worker(void)
{
    tpar_listener *l = open_listener(5, 4);
    tpar_listen_event ev;
    pid_t pid = worker_child(tpar_listener_port(l), key_a);
    CHECK_EQ(next_event(l, &ev, 5), 1);
    CHECK_EQ(ev.kind, TPAR_LISTEN_WORKER);
    CHECK(strncmp(ev.peer, "127.0.0.1:", 10) == 0);
    char buf[4] = {0};
    struct pollfd p = {.fd = ev.fd, .events = POLLIN};
    poll(&p, 1, 5000);
    CHECK_EQ(read(ev.fd, buf, sizeof buf), 2); /* after the handshake: the stream */
    CHECK(memcmp(buf, "hi", 2) == 0);
    CHECK_EQ(child_status(pid), 0);
    close(ev.fd);
    CHECK_EQ(tpar_listener_pending(l), 0);
    tpar_listener_free(l);
}

static void test_listener_refuses_and_goes_on(void)
{
    tpar_listener *l = open_listener(1.0, 8);
    unsigned port = tpar_listener_port(l);
    tpar_listen_event ev;

    pid_t bad = worker_child(port, key_b); /* wrong secret */
    CHECK_EQ(next_event(l, &ev, 5), 1);
    CHECK_EQ(ev.kind, TPAR_LISTEN_REFUSED);
    CHECK_EQ(ev.err, TPAR_EAUTH);
    CHECK(strstr(ev.reason, "secret") != NULL);
    CHECK_EQ(child_status(bad), 1); /* and the worker saw no proof */

    int silent = dial(port); /* says nothing */
    CHECK_EQ(next_event(l, &ev, 5), 1);
    CHECK_EQ(ev.kind, TPAR_LISTEN_REFUSED);
    CHECK_EQ(ev.err, -ETIMEDOUT);
    close(silent);

    int big = dial(port); /* a frame header announcing 1 GiB */
    uint8_t h[TPAR_FRAME_HEADER];
    tpar_frame_header(h, TPAR_FRAME_JOB_PICKLE, 0, 1u << 30);
    CHECK_EQ(write(big, h, sizeof h), (ssize_t)sizeof h);
    CHECK_EQ(next_event(l, &ev, 5), 1);
    CHECK_EQ(ev.kind, TPAR_LISTEN_REFUSED);
    CHECK_EQ(ev.err, TPAR_ETOOBIG);
    close(big);

    int junk = dial(port); /* garbage */
    CHECK_EQ(write(junk, "\x01\x00\x00\x00garbage!", 12), 12);
    CHECK_EQ(next_event(l, &ev, 5), 1);
    CHECK_EQ(ev.kind, TPAR_LISTEN_REFUSED);
    CHECK_EQ(ev.err, TPAR_EBADFRAME);
    close(junk);

    int quitter = dial(port); /* connects and hangs up */
    close(quitter);
    CHECK_EQ(next_event(l, &ev, 5), 1);
    CHECK_EQ(ev.kind, TPAR_LISTEN_REFUSED);

    pid_t good = worker_child(port, key_a); /* after all that, a worker */
    CHECK_EQ(next_event(l, &ev, 5), 1);
    CHECK_EQ(ev.kind, TPAR_LISTEN_WORKER);
    CHECK_EQ(child_status(good), 0);
    close(ev.fd);
    tpar_listener_free(l);
}

/* With max_pending 2, idle peers cannot hold a worker out for their 30 s
 * auth_timeout: once the oldest has waited 1 s, each newcomer drops it
 * (-EBUSY), and the worker behind them gets in. */
static void test_listener_bounds_pending(void)
{
    tpar_listener *l = open_listener(30, 2);
    unsigned port = tpar_listener_port(l);
    tpar_listen_event ev;
    int s[3];
    for (int i = 0; i < 3; i++)
        s[i] = dial(port);
    CHECK_EQ(next_event(l, &ev, 0.2), 0); /* within the grace: the third waits */
    CHECK_EQ(tpar_listener_pending(l), 2);
    CHECK_EQ(next_event(l, &ev, 5), 1); /* then it drops the first */
    CHECK_EQ(ev.kind, TPAR_LISTEN_REFUSED);
    CHECK_EQ(ev.err, -EBUSY);
    CHECK(strstr(ev.reason, "too many") != NULL);
    CHECK_EQ(tpar_listener_pending(l), 2);
    char buf[256]; /* the first was closed: its challenge, then end of file */
    ssize_t n;
    struct pollfd pf = {.fd = s[0], .events = POLLIN};
    do {
        CHECK_EQ(poll(&pf, 1, 5000), 1);
    } while ((n = recv(s[0], buf, sizeof buf, 0)) > 0);
    CHECK_EQ(n, 0);
    pid_t good = worker_child(port, key_a);
    int workers = 0, refused = 0;
    while (workers == 0 && next_event(l, &ev, 5)) {
        CHECK(tpar_listener_pending(l) <= 2);
        if (ev.kind == TPAR_LISTEN_WORKER) {
            workers++;
            close(ev.fd);
        } else {
            CHECK_EQ(ev.err, -EBUSY); /* never a timeout */
            refused++;
        }
    }
    CHECK_EQ(workers, 1);
    CHECK_EQ(refused, 1); /* the worker dropped the second */
    CHECK_EQ(child_status(good), 0);
    for (int i = 0; i < 3; i++)
        close(s[i]);
    tpar_listener_free(l);
}

/* A burst of genuine workers, many more than max_pending, all get in:
 * none is dropped to make room, since each authenticates within the grace. */
static void test_listener_takes_a_burst_of_workers(void)
{
    tpar_listener *l = open_listener(30, 2);
    unsigned port = tpar_listener_port(l);
    tpar_listen_event ev;
    pid_t pid[12];
    for (int i = 0; i < 12; i++)
        pid[i] = worker_child(port, key_a);
    int workers = 0;
    while (workers < 12 && next_event(l, &ev, 10)) {
        CHECK_EQ(ev.kind, TPAR_LISTEN_WORKER);
        workers++;
        close(ev.fd);
    }
    CHECK_EQ(workers, 12);
    for (int i = 0; i < 12; i++)
        CHECK_EQ(child_status(pid[i]), 0);
    tpar_listener_free(l);
}

static void test_listener_open_errors(void)
{
    tpar_listener *l = open_listener(1, 1), *l2 = (tpar_listener *)&l2;
    CHECK_EQ(tpar_listener_open(&l2, "127.0.0.1", tpar_listener_port(l), key_a, NULL),
             -EADDRINUSE);
    CHECK(l2 == (tpar_listener *)&l2); /* untouched */
    CHECK_EQ(tpar_listener_open(&l2, "no-such-host.invalid", 0, key_a, NULL), -ENOENT);
    tpar_listener_free(l);
    tpar_listener_free(NULL);
}

int main(void)
{
    char hex[TPAR_SECRET_HEX + 1];
    if (tpar_secret_new(key_a, hex) < 0 || tpar_secret_new(key_b, hex) < 0)
        return 1;
    RUN(test_handshake_in_any_split);
    RUN(test_wrong_secret_is_refused);
    RUN(test_forged_proof_is_refused);
    RUN(test_bad_frames_before_auth);
    RUN(test_secret_from_env);
    RUN(test_addr_split);
    RUN(test_listener_accepts_a_worker);
    RUN(test_listener_refuses_and_goes_on);
    RUN(test_listener_bounds_pending);
    RUN(test_listener_takes_a_burst_of_workers);
    RUN(test_listener_open_errors);
    return CHECK_DONE();
}
