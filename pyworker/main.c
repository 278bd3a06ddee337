/* tpar-worker: embeds CPython and runs the jobs its parent sends as frames
 * (docs/protocol.md), or, with --zygote, forks such workers on request.
 * The job loop itself is in loop.c. */
#include "loop.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "internal.h"

#define die tpar__worker_die
#define take_fds tpar__worker_take_fds
#define work tpar__worker_work

static void usage_error(const char *msg)
{
    fprintf(stderr, "tpar-worker: %s\n"
                    "tpar-worker is started by tpar; see docs/protocol.md\n", msg);
    exit(2);
}

static void parse_opts(int argc, char **argv, struct tpar_worker_opts *o)
{
    static const struct option longs[] = {
        {"path", required_argument, 0, 'I'},
        {"cwd-path", no_argument, 0, 'c'},
        {"sys-path", required_argument, 0, 's'},
        {"main-path", required_argument, 0, 'm'},
        {"python", required_argument, 0, 'p'},
        {"init", required_argument, 0, 'i'},
        {"max-tasks", required_argument, 0, 't'},
        {"pdeathsig", no_argument, 0, 'd'},
        {"spin-us", required_argument, 0, 'S'},
        {"idle-timeout", required_argument, 0, 'T'},
        {"zygote", no_argument, 0, 'z'},
        {"preload", required_argument, 0, 'P'},
        {0, 0, 0, 0}};
    memset(o, 0, sizeof(*o));
    o->spin_us = -1;
    o->paths = calloc((size_t)argc, sizeof(char *));
    if (!o->paths)
        die(EXIT_NOPYTHON, "out of memory");
    int c;
    while ((c = getopt_long(argc, argv, "I:", longs, NULL)) != -1) {
        switch (c) {
        case 'I': o->paths[o->npaths++] = optarg; break;
        case 'c': o->cwd_path = 1; break;
        case 's': o->sys_path = optarg; break;
        case 'm': o->main_path = optarg; break;
        case 'p': o->python = optarg; break;
        case 'i': o->init = optarg; break;
        case 't': o->max_tasks = strtol(optarg, NULL, 10); break;
        case 'd': o->pdeathsig = 1; break;
        case 'S': o->spin_us = strtol(optarg, NULL, 10); break;
        case 'T': o->idle_timeout = strtod(optarg, NULL); break;
        case 'z': o->zygote = 1; break;
        case 'P': o->preload = optarg; break;
        default: usage_error("bad option");
        }
    }
    if (optind != argc)
        usage_error("unexpected argument");
}

/* The protocol fds go out of the way of user code, and anything written
 * to stdout goes to stderr instead: a print() never corrupts a frame. */
static int lane_fd(int fd)
{ /* a memfd says F_GET_SEALS; anything else there is not a lane of ours */
    return fcntl(fd, F_GET_SEALS) >= 0 ? fd : -1;
}

static void setup_fds(int zygote)
{
    if (zygote)
        take_fds(TPAR_WORKER_FD_IN, -1, -1, -1);
    else
        take_fds(TPAR_WORKER_FD_IN, TPAR_WORKER_FD_OUT, lane_fd(TPAR_WORKER_FD_DOWN),
                 lane_fd(TPAR_WORKER_FD_UP));
    dup2(STDERR_FILENO, STDOUT_FILENO);
}

static void setup_signals(int pdeathsig)
{
    tpar__worker_ignore_sigint(); /* Ctrl-C is the parent's to handle */
    if (pdeathsig) {
        /* A parent that died before prctl leaves our input at EOF, and we
         * exit on that; pid 1 may be a legitimate parent in a container. */
        pid_t parent = getppid();
        tpar__worker_die_with_parent();
        if (getppid() != parent)
            _exit(EXIT_PROTOCOL);
    }
}

static void check_status(PyStatus st, PyConfig *cfg)
{
    if (!PyStatus_Exception(st))
        return;
    PyConfig_Clear(cfg);
    if (PyStatus_IsExit(st))
        _exit(st.exitcode);
    fprintf(stderr, "tpar-worker: cannot start Python: %s%s%s\n",
            st.func ? st.func : "", st.func ? ": " : "",
            st.err_msg ? st.err_msg : "?");
    _exit(EXIT_NOPYTHON);
}

/* The interpreter whose environment the worker takes: --python, else the
 * active virtualenv's, else the one tpar was built with (NULL). */
static const char *python_exe(const struct tpar_worker_opts *o, char *buf, size_t n)
{
    if (o->python)
        return o->python;
    const char *venv = getenv("VIRTUAL_ENV");
    if (venv && *venv) {
        snprintf(buf, n, "%s/bin/python3", venv);
        if (access(buf, F_OK) == 0)
            return buf;
    }
    return NULL;
}

static void start_python(const struct tpar_worker_opts *o, const char *argv0)
{
    PyConfig cfg;
    char exe_buf[4096];
    PyConfig_InitPythonConfig(&cfg);
    cfg.parse_argv = 0;
    cfg.install_signal_handlers = 1; /* SIGINT stays ours: set before */
    const char *exe = python_exe(o, exe_buf, sizeof(exe_buf));
    /* getpath finds a venv's pyvenv.cfg next to the executable. */
    if (exe)
        check_status(PyConfig_SetBytesString(&cfg, &cfg.executable, exe), &cfg);
    check_status(PyConfig_SetBytesString(&cfg, &cfg.program_name,
                                         exe ? exe : argv0), &cfg);
    char *argv[] = {(char *)argv0};
    check_status(PyConfig_SetBytesArgv(&cfg, 1, argv), &cfg);
    check_status(Py_InitializeFromConfig(&cfg), &cfg);
    PyConfig_Clear(&cfg);
}

/* Gives the free memory that start-up left in malloc's heap back to the
 * system (glibc keeps up to 128 kB at the top, and never returns free pages
 * below it on its own): an idle worker holds only what it uses. */
static void trim_heap(void)
{
#ifdef __GLIBC__
    malloc_trim(0);
#endif
}

/* ------------------------------------------------------------- forkserver */

static void preload(const char *list)
{
    char *copy = strdup(list), *save = NULL;
    for (char *m = strtok_r(copy, ",", &save); m; m = strtok_r(NULL, ",", &save)) {
        PyObject *mod = PyImport_ImportModule(m);
        if (!mod) {
            fprintf(stderr, "tpar-worker: --preload %s failed:\n", m);
            PyErr_Print();
        }
        Py_XDECREF(mod);
    }
    free(copy);
}

/* Before the first fork: collects start-up's cyclic garbage, so its holes
 * are not copied into every worker, and moves what is left to the
 * permanent generation (gc.freeze), so a worker's collections never write
 * to the zygote's objects' headers, which would unshare their pages (the
 * recipe of the gc module's documentation). */
static void settle_for_fork(void)
{
    PyObject *gc = PyImport_ImportModule("gc");
    PyObject *r = gc ? PyObject_CallMethod(gc, "collect", NULL) : NULL;
    Py_XDECREF(r);
    r = gc ? PyObject_CallMethod(gc, "freeze", NULL) : NULL;
    if (!r)
        PyErr_Print();
    Py_XDECREF(r);
    Py_XDECREF(gc);
    trim_heap();
}

static void zsend(int sock, int32_t kind, int32_t a, int32_t b, int32_t c)
{
    struct tpar__zmsg m = {kind, a, b, c};
    while (send(sock, &m, sizeof(m), MSG_NOSIGNAL) < 0)
        if (errno != EINTR)
            _exit(0); /* the parent is gone */
}

/* Receives a FORK request: its tag, the two job-pipe ends and the two
 * lanes (-1 when the parent sent none).  Returns 0, or -1 at EOF (the
 * parent is gone). */
static int zrecv(int sock, int32_t *tag, int fds[4])
{
    struct tpar__zmsg m;
    struct iovec iov = {.iov_base = &m, .iov_len = sizeof(m)};
    union {
        char buf[CMSG_SPACE(4 * sizeof(int))];
        struct cmsghdr align;
    } u;
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1,
                         .msg_control = u.buf, .msg_controllen = sizeof(u.buf)};
    ssize_t n;
    while ((n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC)) < 0 && errno == EINTR)
        ;
    if (n <= 0)
        return -1;
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    if (n != sizeof(m) || m.kind != TPAR__Z_FORK || !c || (m.b != 2 && m.b != 4) ||
        (msg.msg_flags & MSG_CTRUNC) || c->cmsg_type != SCM_RIGHTS ||
        c->cmsg_len != CMSG_LEN((size_t)m.b * sizeof(int)))
        die(EXIT_PROTOCOL, "bad forkserver request");
    fds[2] = fds[3] = -1;
    memcpy(fds, CMSG_DATA(c), (size_t)m.b * sizeof(int));
    *tag = m.a;
    return 0;
}

/* In a freshly forked child of the zygote: Python's after-fork work, our
 * own process group, death with the zygote. */
static void child_setup(pid_t zygote)
{
    sigset_t none;
    sigemptyset(&none);
    PyOS_AfterFork_Child();
    sigprocmask(SIG_SETMASK, &none, NULL);
    setpgid(0, 0); /* a timeout kills the job's own children too */
    tpar__worker_die_with_parent();
    if (getppid() != zygote)
        _exit(EXIT_PROTOCOL);
}

static _Noreturn void become_worker(const struct tpar_worker_opts *o, int fds[4])
{
    take_fds(fds[0], fds[1], fds[2], fds[3]);
    work(o);
}

/* ----------------------------------------------------------------- spare
 *
 * The zygote keeps one worker forked ahead of the next request: a spare,
 * already through child_setup (Python's after-fork work, its own process
 * group, PDEATHSIG), that waits on a socketpair of its own.  A request is
 * forwarded to it as it came (the same message, the same fds), so the
 * reply does not wait for a fork, and the next spare is forked after the
 * reply, while the worker runs its job.  A spare is never reported to the
 * parent unless it was handed out; if it is gone, the zygote forks the
 * worker itself, as before. */

static pid_t spare_pid = -1;
static int spare_sock = -1;

static _Noreturn void spare_main(const struct tpar_worker_opts *o, int s, pid_t zygote)
{
    int32_t tag;
    int fds[4];
    child_setup(zygote);
    if (zrecv(s, &tag, fds) < 0)
        _exit(0); /* the zygote is gone, or let us go */
    close(s);
    become_worker(o, fds);
}

static void make_spare(const struct tpar_worker_opts *o, int sock, int sfd)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
        return; /* no spare: requests fork */
    pid_t me = getpid();
    PyOS_BeforeFork();
    pid_t pid = fork();
    if (pid == 0) {
        close(sock);
        close(sfd);
        close(sv[0]);
        spare_main(o, sv[1], me);
    }
    PyOS_AfterFork_Parent();
    close(sv[1]);
    if (pid < 0) {
        close(sv[0]);
        return;
    }
    spare_pid = pid;
    spare_sock = sv[0];
}

static void spare_gone(void)
{
    if (spare_sock >= 0)
        close(spare_sock);
    spare_sock = -1;
    spare_pid = -1;
}

/* Hands a request to the spare: its pid, or -1 when there is none. */
static pid_t hand_to_spare(int32_t tag, int fds[4])
{
    if (spare_pid <= 0)
        return -1;
    pid_t pid = spare_pid;
    int n = tpar__zsend_fork(spare_sock, tag, fds);
    if (n < 0) { /* it died: collect it here, unreported */
        int st;
        kill(pid, SIGKILL);
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
            ;
        pid = -1;
    }
    spare_gone();
    return pid;
}

/* The workers handed out, by pid, with their request's tag: an exit is
 * reported with the tag, which the parent matches (a pid may be reused). */
static struct child { pid_t pid; int32_t tag; } *children;
static size_t nchildren, cap_children;

static void remember_child(pid_t pid, int32_t tag)
{
    if (nchildren == cap_children) {
        size_t cap = cap_children ? cap_children * 2 : 64;
        struct child *n = realloc(children, cap * sizeof(*n));
        if (!n)
            die(EXIT_PROTOCOL, "out of memory");
        children = n;
        cap_children = cap;
    }
    children[nchildren++] = (struct child){pid, tag};
}

static int32_t forget_child(pid_t pid)
{
    for (size_t i = 0; i < nchildren; i++) {
        if (children[i].pid == pid) {
            int32_t tag = children[i].tag;
            children[i] = children[--nchildren];
            return tag;
        }
    }
    return 0; /* not one we handed out */
}

static void report_exits(int sock, int sfd)
{
    struct signalfd_siginfo si;
    int st;
    pid_t pid;
    while (read(sfd, &si, sizeof(si)) > 0)
        ;
    while ((pid = waitpid(-1, &st, WNOHANG)) > 0) { /* all our children are workers */
        if (pid == spare_pid) /* never handed out: nobody asks about it */
            spare_gone();
        else
            zsend(sock, TPAR__Z_EXIT, pid, st, forget_child(pid));
    }
}

static void zygote(const struct tpar_worker_opts *o)
{
    int sock = tpar__worker_in_fd(), fds[4];
    int32_t tag;
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, NULL);
    int sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sfd < 0)
        die(EXIT_PROTOCOL, "signalfd failed");
    if (o->preload)
        preload(o->preload);
    tpar__worker_warm_for_fork();
    settle_for_fork();
    make_spare(o, sock, sfd);
    for (;;) {
        struct pollfd p[2] = {{.fd = sock, .events = POLLIN}, {.fd = sfd, .events = POLLIN}};
        /* Every second the children are checked anyway: a SIGCHLD a user
         * thread unblocked and dropped must not leave a worker unreported. */
        int r = poll(p, 2, 1000);
        if (r <= 0 || p[1].revents)
            report_exits(sock, sfd);
        if (r <= 0)
            continue;
        if (!p[0].revents)
            continue;
        if (zrecv(sock, &tag, fds) < 0)
            _exit(0); /* the parent is gone; our workers die with us */
        pid_t pid = hand_to_spare(tag, fds);
        int err = 0;
        if (pid < 0) {
            pid_t me = getpid();
            PyOS_BeforeFork();
            pid = fork();
            if (pid == 0) {
                close(sock);
                close(sfd);
                child_setup(me);
                become_worker(o, fds);
            }
            err = errno;
            PyOS_AfterFork_Parent();
        }
        for (int i = 0; i < 4; i++)
            if (fds[i] >= 0)
                close(fds[i]);
        if (pid > 0)
            remember_child(pid, tag);
        zsend(sock, TPAR__Z_PID, tag, pid > 0 ? pid : -err, 0);
        make_spare(o, sock, sfd);
    }
}

int main(int argc, char **argv)
{
    struct tpar_worker_opts o;
    parse_opts(argc, argv, &o);
    if (o.zygote) {
        /* The zygote reads SIGCHLD from a signalfd: blocked before Python
         * starts, so that no thread started by site, a preload or the
         * parent's script (each inherits the mask) takes the signal and
         * drops it, leaving dead workers unreported. */
        sigset_t chld;
        sigemptyset(&chld);
        sigaddset(&chld, SIGCHLD);
        sigprocmask(SIG_BLOCK, &chld, NULL);
    }
    setup_signals(o.pdeathsig);
    setup_fds(o.zygote);
    start_python(&o, argv[0]);
    tpar__worker_setup(&o);
    if (o.zygote)
        zygote(&o);
    trim_heap();
    work(&o);
}

