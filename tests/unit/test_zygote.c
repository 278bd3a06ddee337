/* The forkserver: forked workers run jobs, their deaths are explained by
 * the zygote's reports, and a dead zygote is restarted.  Uses the real
 * tpar-worker, whose path is argv[1]. */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
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

static pid_t idle_child(void)
{
    pid_t pid = fork();
    if (pid == 0) {
        for (;;)
            pause();
    }
    return pid;
}

/* A forkserver worker's pid is the zygote's to signal: the zygote reaps
 * it, so the parent cannot know that the pid is not a new process's by
 * now.  Here the "worker" pid is a bystander's, as after pid reuse, and
 * the zygote a stand-in at the end of a socketpair: tpar_proc_kill must
 * leave the bystander alone and ask the zygote. */
static void test_kill_goes_through_the_zygote(void)
{
    int sv[2];
    CHECK_EQ(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
    pid_t fake_zygote = idle_child(), bystander = idle_child();
    tpar_zygote z = {.pid = fake_zygote, .fd = sv[0], .gen = 1};
    tpar_proc p = {.pid = bystander, .to_fd = -1, .from_fd = -1, .zygote = &z,
                   .zygote_gen = 1, .zygote_tag = 42, .down = TPAR_LANE_NONE,
                   .up = TPAR_LANE_NONE};
    tpar_proc_kill(&p, SIGKILL);
    int st;
    usleep(20000);
    CHECK_EQ(waitpid(bystander, &st, WNOHANG), 0); /* still alive */
    int32_t m[4] = {0};
    struct pollfd pfd = {.fd = sv[1], .events = POLLIN};
    CHECK_EQ(poll(&pfd, 1, 1000), 1);
    CHECK_EQ(recv(sv[1], m, sizeof m, MSG_DONTWAIT), (ssize_t)sizeof m);
    CHECK_EQ(m[0], 'K');
    CHECK_EQ(m[1], 42);
    CHECK_EQ(m[2], SIGKILL);
    kill(bystander, SIGKILL);
    kill(fake_zygote, SIGKILL);
    waitpid(bystander, &st, 0);
    waitpid(fake_zygote, &st, 0);
    close(sv[0]);
    close(sv[1]);
}

static int pid_gone(pid_t pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *rp = strrchr(buf, ')');
    return rp && rp[1] == ' ' && rp[2] == 'Z'; /* a zombie of init's */
}

/* What a job started dies with its worker, even when the worker exits
 * normally: the zygote kills the worker's process group before it reaps
 * it. */
static void test_job_children_die_with_the_worker(void)
{
    tpar_zygote z = {0};
    tpar_proc p;
    char out[256], path[] = "/tmp/tpar-test-zygote-XXXXXX", args[256];
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    close(fd);
    start(&z);
    CHECK_EQ(tpar_zygote_fork(&z, &p), 0);
    CHECK(recv_kind(&p, TPAR_FRAME_READY, out, sizeof out) > 0);
    snprintf(args, sizeof args, "[\"sleep 300 >/dev/null 2>&1 & echo $! > %s\"]", path);
    CHECK_EQ(send_job(&p, "os:system", args), 0);
    CHECK(recv_kind(&p, TPAR_FRAME_RESULT, out, sizeof out) > 0);
    FILE *f = fopen(path, "r");
    int child = 0;
    CHECK(f && fscanf(f, "%d", &child) == 1 && child > 0);
    if (f)
        fclose(f);
    unlink(path);
    close(p.to_fd); /* EOF: the worker exits 0 */
    p.to_fd = -1;
    CHECK_EQ(tpar_proc_reap(&p, 1), 0);
    CHECK(WIFEXITED(p.status) && WEXITSTATUS(p.status) == 0);
    int gone = 0;
    for (int i = 0; i < 200 && !(gone = pid_gone(child)); i++)
        usleep(10000);
    CHECK(gone);
    if (!gone && child > 0)
        kill(child, SIGKILL);
    tpar_proc_close(&p);
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
    RUN(test_kill_goes_through_the_zygote);
    RUN(test_job_children_die_with_the_worker);
    return CHECK_DONE();
}
