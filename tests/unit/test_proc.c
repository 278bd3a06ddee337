/* Worker processes: spawn, fds, process groups, kill, reap.  The test binary
 * doubles as the fake worker it spawns (`test_proc fake MODE`). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "tpar.h"

static char self[4096];

/* ------------------------------------------------------------ fake worker */

static void fake_send(const char *text)
{
    uint8_t hdr[TPAR_FRAME_HEADER];
    tpar_frame_header(hdr, TPAR_FRAME_RESULT, 0, (uint32_t)strlen(text));
    if (write(4, hdr, sizeof(hdr)) < 0 || write(4, text, strlen(text)) < 0)
        _exit(99);
}

static int fake(const char *mode)
{
    char msg[512] = "";
    if (strcmp(mode, "echo") == 0) { /* copies fd 3 to fd 4 until EOF */
        char b[4096];
        ssize_t n;
        while ((n = read(3, b, sizeof(b))) > 0)
            if (write(4, b, (size_t)n) != n)
                return 98;
        return 0;
    }
    if (strcmp(mode, "fds") == 0) { /* lists its open fds */
        DIR *d = opendir("/proc/self/fd");
        struct dirent *e;
        int dfd = dirfd(d);
        while ((e = readdir(d)))
            if (e->d_name[0] != '.' && atoi(e->d_name) != dfd)
                snprintf(msg + strlen(msg), sizeof(msg) - strlen(msg), "%s%s ", e->d_name,
                         fcntl(atoi(e->d_name), F_GET_SEALS) >= 0 ? "m" : ""); /* memfd */
        closedir(d);
        fake_send(msg);
        return 0;
    }
    if (strcmp(mode, "stdin") == 0) { /* what fd 0 is */
        char path[256] = "";
        ssize_t n = readlink("/proc/self/fd/0", path, sizeof(path) - 1);
        path[n > 0 ? n : 0] = 0;
        fake_send(path);
        return 0;
    }
    if (strcmp(mode, "state") == 0) { /* pgid, SIGINT disposition, mask */
        struct sigaction sa;
        sigset_t mask;
        sigaction(SIGINT, NULL, &sa);
        sigprocmask(SIG_SETMASK, NULL, &mask);
        snprintf(msg, sizeof(msg), "%d %d %d", (int)(getpgid(0) == getpid()),
                 (int)(sa.sa_handler == SIG_DFL), sigismember(&mask, SIGTERM));
        fake_send(msg);
        return 0;
    }
    if (strcmp(mode, "family") == 0) { /* a grandchild in our group, then wait */
        pid_t g = fork();
        if (g == 0) {
            pause();
            _exit(0);
        }
        snprintf(msg, sizeof(msg), "%d", (int)g);
        fake_send(msg);
        pause();
        return 0;
    }
    if (strcmp(mode, "exit3") == 0)
        return 3;
    return 97;
}

/* ---------------------------------------------------------------- helpers */

static int spawn(tpar_proc *p, const char *mode)
{
    char *argv[] = {self, "fake", (char *)mode, NULL};
    return tpar_proc_spawn(p, argv, NULL);
}

/* Reads one frame from a (non-blocking) worker fd, waiting up to 5 s. */
static int recv_frame(int fd, char *out, size_t cap)
{
    tpar_decoder d;
    tpar_frame f;
    uint8_t b[512];
    int got = 0;
    tpar_decoder_init(&d, cap);
    while (!got) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        if (poll(&pfd, 1, 5000) != 1)
            return -ETIMEDOUT;
        ssize_t n = read(fd, b, sizeof(b));
        if (n <= 0)
            return n == 0 ? -EPIPE : -errno;
        ptrdiff_t r = tpar_decoder_feed(&d, b, (size_t)n, &f, &got);
        if (r < 0)
            return (int)r;
        if (got) {
            memcpy(out, f.payload, f.len);
            out[f.len] = 0;
        }
    }
    tpar_decoder_free(&d);
    return 0;
}

static int count_fds(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    while (readdir(d))
        n++;
    closedir(d);
    return n;
}

static char proc_state(pid_t pid) /* 0 when gone */
{
    char path[64], buf[256];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "re");
    if (!f)
        return 0;
    char *s = fgets(buf, sizeof(buf), f);
    fclose(f);
    char *close_paren = s ? strrchr(buf, ')') : NULL;
    return close_paren ? close_paren[2] : 0;
}

/* ------------------------------------------------------------------ tests */

static void test_round_trip_and_clean_exit(void)
{
    tpar_proc p;
    char out[64];
    CHECK_EQ(spawn(&p, "echo"), 0);
    CHECK(fcntl(p.to_fd, F_GETFD) & FD_CLOEXEC);
    CHECK(fcntl(p.from_fd, F_GETFL) & O_NONBLOCK);
    tpar_buf b = {0};
    tpar_buf_frame(&b, TPAR_FRAME_RESULT, 0, "ping", 4);
    CHECK_EQ(write(p.to_fd, b.data, b.len), (ssize_t)b.len);
    tpar_buf_free(&b);
    CHECK_EQ(recv_frame(p.from_fd, out, sizeof(out) - 1), 0);
    CHECK(strcmp(out, "ping") == 0);
    tpar_proc_close(&p);
    CHECK_EQ(tpar_proc_reap(&p, 1), 0);
    tpar_describe_status(p.status, out, sizeof(out));
    CHECK(strcmp(out, "exited with code 0") == 0);
}

static void test_only_protocol_fds_inherited(void)
{
    tpar_proc p;
    char out[512];
    int stray = open("/dev/null", O_RDONLY); /* not O_CLOEXEC on purpose */
    CHECK_EQ(spawn(&p, "fds"), 0);
    CHECK_EQ(recv_frame(p.from_fd, out, sizeof(out) - 1), 0);
    /* the job pipes, then the down and up lanes (memfds) */
    CHECK(strcmp(out, "0 1 2 3 4 5m 6m ") == 0);
    if (strcmp(out, "0 1 2 3 4 5m 6m ") != 0)
        fprintf(stderr, "child fds: %s\n", out);
    close(stray);
    tpar_proc_close(&p);
    CHECK_EQ(tpar_proc_reap(&p, 1), 0);
}

static void test_stdin_is_dev_null(void)
{
    tpar_proc p;
    char out[256];
    CHECK_EQ(spawn(&p, "stdin"), 0);
    CHECK_EQ(recv_frame(p.from_fd, out, sizeof(out) - 1), 0);
    CHECK(strcmp(out, "/dev/null") == 0);
    tpar_proc_close(&p);
    CHECK_EQ(tpar_proc_reap(&p, 1), 0);
}

static void test_group_leader_default_signals(void)
{
    tpar_proc p;
    char out[64];
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigprocmask(SIG_BLOCK, &block, &old);
    signal(SIGINT, SIG_IGN); /* the child must not inherit these */
    CHECK_EQ(spawn(&p, "state"), 0);
    sigprocmask(SIG_SETMASK, &old, NULL);
    signal(SIGINT, SIG_DFL);
    CHECK_EQ(recv_frame(p.from_fd, out, sizeof(out) - 1), 0);
    CHECK(strcmp(out, "1 1 0") == 0);
    tpar_proc_close(&p);
    CHECK_EQ(tpar_proc_reap(&p, 1), 0);
}

static void test_kill_takes_the_group(void)
{
    tpar_proc p;
    char out[64];
    CHECK_EQ(spawn(&p, "family"), 0);
    CHECK_EQ(recv_frame(p.from_fd, out, sizeof(out) - 1), 0);
    pid_t grandchild = atoi(out);
    CHECK(grandchild > 0);
    CHECK_EQ(tpar_proc_reap(&p, 0), -EAGAIN);
    tpar_proc_kill(&p, SIGKILL);
    CHECK_EQ(tpar_proc_reap(&p, 1), 0);
    tpar_describe_status(p.status, out, sizeof(out));
    CHECK(strcmp(out, "killed by signal 9 (SIGKILL)") == 0);
    for (int i = 0; i < 500; i++) { /* init reaps the orphan grandchild */
        char st = proc_state(grandchild);
        if (st == 0 || st == 'Z')
            break;
        usleep(10000);
    }
    char st = proc_state(grandchild);
    CHECK(st == 0 || st == 'Z');
    tpar_proc_kill(&p, SIGKILL); /* after reaping: a no-op */
    tpar_proc_close(&p);
}

static void test_exit_code(void)
{
    tpar_proc p;
    char out[64];
    CHECK_EQ(spawn(&p, "exit3"), 0);
    CHECK_EQ(tpar_proc_reap(&p, 1), 0);
    tpar_describe_status(p.status, out, sizeof(out));
    CHECK(strcmp(out, "exited with code 3") == 0);
    tpar_proc_close(&p);
}

static void test_bad_exe_leaves_nothing(void)
{
    tpar_proc p = {.pid = 12345, .to_fd = -7, .from_fd = -7};
    char *argv[] = {"/nonexistent/tpar-worker", NULL};
    int before = count_fds();
    CHECK_EQ(tpar_proc_spawn(&p, argv, NULL), -ENOENT);
    CHECK_EQ(count_fds(), before);
    CHECK_EQ(p.pid, 12345); /* untouched on failure */
    CHECK_EQ(waitpid(-1, NULL, WNOHANG), -1); /* no child left */
    CHECK_EQ(errno, ECHILD);
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "fake") == 0)
        return fake(argv[2]);
    if (!realpath("/proc/self/exe", self))
        return 2;
    RUN(test_round_trip_and_clean_exit);
    RUN(test_only_protocol_fds_inherited);
    RUN(test_stdin_is_dev_null);
    RUN(test_group_leader_default_signals);
    RUN(test_kill_takes_the_group);
    RUN(test_exit_code);
    RUN(test_bad_exe_leaves_nothing);
    return CHECK_DONE();
}
