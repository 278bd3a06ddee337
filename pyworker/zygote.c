/* The zygote (tpar-worker --zygote): a Python process that has started,
 * imported --preload and settled its heap, and then forks workers on its
 * parent's request (core/zmsg.h says what they say to each other), keeps a
 * spare forked ahead, and reports each worker's exit. */
#include "zygote.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "zmsg.h"


/* Imports the --preload modules.  One that fails is reported; with
 * --preload-strict (the CLI's) the zygote then exits EXIT_INIT, as a
 * worker whose --init failed does; the package's zygote goes on, and the
 * worker's own import raises the error to the caller. */
static void preload(const char *list, int strict)
{
    char *copy = strdup(list), *save = NULL;
    for (char *m = strtok_r(copy, ",", &save); m; m = strtok_r(NULL, ",", &save)) {
        PyObject *mod = PyImport_ImportModule(m);
        if (!mod) {
            fprintf(stderr, "tpar-worker: --preload %s failed:\n", m);
            PyErr_Print();
            if (strict) {
                fflush(stderr);
                _exit(EXIT_INIT);
            }
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
    tpar__worker_trim_heap();
}

static void zsend(int sock, int32_t kind, int32_t a, int32_t b, int32_t c)
{
    if (tpar__zsend(sock, kind, a, b, c) < 0)
        _exit(0); /* the parent is gone */
}

/* Receives a FORK request: its tag, the two job-pipe ends and the two
 * lanes (-1 when the parent sent none).  Returns 0, or -1 at EOF (the
 * parent is gone). */
static int zrecv(int sock, int32_t *tag, int fds[4])
{
    int rc = tpar__zrecv_fork(sock, tag, fds);
    if (rc == -EPROTO)
        tpar__worker_die(EXIT_PROTOCOL, "bad forkserver request");
    return rc < 0 ? -1 : 0;
}

static _Noreturn void become_worker(const struct tpar_worker_opts *o, int fds[4])
{
    tpar__worker_take_fds(fds[0], fds[1], fds[2], fds[3]);
    tpar__worker_work(o);
}

/* ----------------------------------------------------------------- spare
 *
 * The zygote keeps one worker forked ahead of the next request: a spare,
 * already through tpar__worker_after_fork (Python's after-fork work, its own process
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
    tpar__worker_after_fork(zygote, 1);
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
            tpar__worker_die(EXIT_PROTOCOL, "out of memory");
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

/* KILL from the parent: signals the worker of that request, group first,
 * if it is still ours (not reaped: its pid cannot have been reused). */
static void kill_child(int32_t tag, int sig)
{
    for (size_t i = 0; i < nchildren; i++) {
        if (children[i].tag == tag) {
            kill(-children[i].pid, sig);
            kill(children[i].pid, sig);
            return;
        }
    }
}

static void report_exits(int sock, int sfd)
{
    struct signalfd_siginfo si;
    siginfo_t info;
    int st;
    pid_t pid;
    while (read(sfd, &si, sizeof(si)) > 0)
        ;
    for (;;) { /* all our children are workers */
        /* Look before reaping: while the worker is a zombie its pid (and
         * so its process group's id) is still its own, so killing the
         * group cannot hit another; what its job started dies with it. */
        memset(&info, 0, sizeof info);
        if (waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT) < 0 || info.si_pid == 0)
            break;
        pid = info.si_pid;
        kill(-pid, SIGKILL);
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
            ;
        if (pid == spare_pid) /* never handed out: nobody asks about it */
            spare_gone();
        else
            zsend(sock, TPAR__Z_EXIT, pid, st, forget_child(pid));
    }
}

_Noreturn void tpar__zygote_serve(const struct tpar_worker_opts *o)
{
    int sock = tpar__worker_in_fd(), fds[4];
    int32_t tag;
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, NULL);
    int sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sfd < 0)
        tpar__worker_die(EXIT_PROTOCOL, "signalfd failed");
    if (o->preload)
        preload(o->preload, o->preload_strict);
    /* Our workers' jobs come from our parent, not from us. */
    tpar__worker_set_feeder(getppid());
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
        struct tpar__zmsg m;
        int rc = tpar__zrecv(sock, &m, fds);
        if (rc == -EPROTO)
            tpar__worker_die(EXIT_PROTOCOL, "bad forkserver request");
        if (rc < 0)
            _exit(0); /* the parent is gone; our workers die with us */
        if (m.kind == TPAR__Z_KILL) {
            kill_child(m.a, m.b);
            continue;
        }
        tag = m.a;
        pid_t pid = hand_to_spare(tag, fds);
        int err = 0;
        if (pid < 0) {
            pid_t me = getpid();
            PyOS_BeforeFork();
            pid = fork();
            if (pid == 0) {
                close(sock);
                close(sfd);
                tpar__worker_after_fork(me, 1);
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
