/* The forkserver: forked workers run jobs, their deaths are explained by
 * the zygote's reports, and a dead zygote is restarted.  Uses the real
 * tpar-worker, whose path is argv[1]. */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "tpar.h"

static char *worker;

/* Reads frames until one of the given kind arrives (5 s limit). */
static int recv_kind(tpar_proc *p, int kind, char *out, size_t cap)
{
    tpar_decoder d;
    tpar_frame f;
    uint8_t b[4096];
    tpar_decoder_init(&d, cap);
    for (;;) {
        struct pollfd pfd = {.fd = p->from_fd, .events = POLLIN};
        if (poll(&pfd, 1, 5000) != 1)
            return -ETIMEDOUT;
        ssize_t n = read(p->from_fd, b, sizeof(b));
        if (n <= 0)
            return n == 0 ? -EPIPE : -errno;
        size_t off = 0;
        while (off < (size_t)n) {
            int got;
            ptrdiff_t r = tpar_decoder_feed(&d, b + off, (size_t)n - off, &f, &got);
            if (r < 0)
                return (int)r;
            off += (size_t)r;
            if (got && f.kind == kind) {
                memcpy(out, f.payload, f.len);
                out[f.len] = 0;
                tpar_decoder_free(&d);
                return (int)f.len;
            }
        }
    }
}

static int send_job(tpar_proc *p, const char *fn, const char *args)
{
    tpar_buf b = {0}, job = {0};
    tpar_buf_append(&job, fn, strlen(fn) + 1);
    tpar_buf_append(&job, args, strlen(args) + 1);
    tpar_buf_frame(&b, TPAR_FRAME_JOB_JSON, 0, job.data, job.len); /* kwargs: "" */
    int ok = write(p->to_fd, b.data, b.len) == (ssize_t)b.len;
    tpar_buf_free(&b);
    tpar_buf_free(&job);
    return ok ? 0 : -1;
}

static void start(tpar_zygote *z)
{
    char *argv[] = {worker, "--zygote", "--preload", "json,operator", NULL};
    CHECK_EQ(tpar_zygote_start(z, argv, NULL), 0);
}

static void test_forked_workers_run_jobs(void)
{
    tpar_zygote z = {0};
    tpar_proc p[3];
    char out[256], desc[64];
    start(&z);
    for (int i = 0; i < 3; i++) {
        CHECK_EQ(tpar_zygote_fork(&z, &p[i]), 0);
        CHECK(p[i].pid > 0 && p[i].pid != z.pid);
    }
    for (int i = 0; i < 3; i++) {
        CHECK_EQ(recv_kind(&p[i], TPAR_FRAME_READY, out, sizeof(out)), 4);
        uint32_t pid;
        memcpy(&pid, out, 4);
        CHECK_EQ(pid, p[i].pid);
        CHECK_EQ(send_job(&p[i], "operator:add", "[40,2]"), 0);
        CHECK_EQ(recv_kind(&p[i], TPAR_FRAME_RESULT, out, sizeof(out)), 8 + 2);
        CHECK(memcmp(out + 8, "42", 2) == 0);
        CHECK_EQ(getpgid(p[i].pid), p[i].pid);
    }
    for (int i = 0; i < 3; i++) {
        tpar_proc_close(&p[i]); /* EOF: the worker exits 0 */
        CHECK_EQ(tpar_proc_reap(&p[i], 1), 0);
        tpar_describe_status(p[i].status, desc, sizeof(desc));
        CHECK(strcmp(desc, "exited with code 0") == 0);
    }
    tpar_zygote_stop(&z);
    CHECK_EQ(z.pid, 0);
}

static void test_segfault_is_named(void)
{
    tpar_zygote z = {0};
    tpar_proc p;
    char out[256], desc[64];
    start(&z);
    CHECK_EQ(tpar_zygote_fork(&z, &p), 0);
    CHECK_EQ(send_job(&p, "ctypes:string_at", "[0]"), 0);
    CHECK_EQ(recv_kind(&p, TPAR_FRAME_RESULT, out, sizeof(out)), -EPIPE);
    CHECK_EQ(tpar_proc_reap(&p, 1), 0);
    tpar_describe_status(p.status, desc, sizeof(desc));
    CHECK(strcmp(desc, "killed by signal 11 (SIGSEGV)") == 0);
    tpar_proc_close(&p);
    /* kill() of a worker whose exit is already reported is a no-op */
    tpar_proc_kill(&p, SIGKILL);
    tpar_zygote_stop(&z);
}

static void test_dead_zygote_restarts(void)
{
    tpar_zygote z = {0};
    tpar_proc p, q;
    char out[256];
    start(&z);
    CHECK_EQ(tpar_zygote_fork(&z, &p), 0);
    CHECK_EQ(recv_kind(&p, TPAR_FRAME_READY, out, sizeof(out)), 4);
    kill(z.pid, SIGKILL);
    /* its worker dies with it (PR_SET_PDEATHSIG) */
    CHECK_EQ(recv_kind(&p, TPAR_FRAME_RESULT, out, sizeof(out)), -EPIPE);
    CHECK_EQ(tpar_zygote_fork(&z, &q), -EPIPE);
    CHECK_EQ(tpar_proc_reap(&p, 1), 0);
    CHECK(p.reaped);
    tpar_proc_close(&p);
    start(&z);
    CHECK_EQ(tpar_zygote_fork(&z, &q), 0);
    CHECK_EQ(send_job(&q, "operator:mul", "[6,7]"), 0);
    CHECK_EQ(recv_kind(&q, TPAR_FRAME_RESULT, out, sizeof(out)), 8 + 2);
    CHECK(memcmp(out + 8, "42", 2) == 0);
    tpar_proc_close(&q);
    CHECK_EQ(tpar_proc_reap(&q, 1), 0);
    tpar_zygote_stop(&z);
}

int main(int argc, char **argv)
{
    if (argc != 2)
        return 2;
    worker = argv[1];
    signal(SIGPIPE, SIG_IGN);
    RUN(test_forked_workers_run_jobs);
    RUN(test_segfault_is_named);
    RUN(test_dead_zygote_restarts);
    return CHECK_DONE();
}
