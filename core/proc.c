/* Starting, signalling and reaping worker processes.  posix_spawn (glibc
 * uses clone(CLONE_VM|CLONE_VFORK)) keeps a large parent, such as a Python
 * process using the Trio package, from paying for a fork of its memory. */
#include "internal.h"
#include "tpar.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

/* Moves fd above the fds the child's file actions dup onto (3 to 6), so a
 * dup2 onto itself, which would keep O_CLOEXEC, cannot happen. */
static int lift(int *fd)
{
    if (*fd < 0 || *fd > TPAR_WORKER_FD_UP)
        return 0;
    int nfd = fcntl(*fd, F_DUPFD_CLOEXEC, TPAR_WORKER_FD_UP + 1);
    if (nfd < 0)
        return -errno;
    close(*fd);
    *fd = nfd;
    return 0;
}

static int spawn_actions(posix_spawn_file_actions_t *fa, const struct tpar__chan *c)
{
    int rc = posix_spawn_file_actions_init(fa);
    if (rc)
        return -rc;
    /* stdin is /dev/null, as multiprocessing does: a job that reads it
     * must not steal the parent's input (tpar's job stream, a terminal). */
    if ((rc = posix_spawn_file_actions_addopen(fa, STDIN_FILENO, "/dev/null",
                                               O_RDONLY, 0)) ||
        (rc = posix_spawn_file_actions_adddup2(fa, c->in[0], TPAR_WORKER_FD_IN)) ||
        (rc = posix_spawn_file_actions_adddup2(fa, c->out[1], TPAR_WORKER_FD_OUT)) ||
        (c->down.fd >= 0 &&
         (rc = posix_spawn_file_actions_adddup2(fa, c->down.fd, TPAR_WORKER_FD_DOWN))) ||
        (c->up.fd >= 0 &&
         (rc = posix_spawn_file_actions_adddup2(fa, c->up.fd, TPAR_WORKER_FD_UP))) ||
        (rc = posix_spawn_file_actions_addclosefrom_np(
             fa, c->down.fd >= 0 ? TPAR_WORKER_FD_UP + 1 : TPAR_WORKER_FD_OUT + 1))) {
        posix_spawn_file_actions_destroy(fa);
        return -rc;
    }
    return 0;
}

int tpar_proc_spawn(tpar_proc *p, char *const argv[], char *const envp[])
{
    struct tpar__chan c;
    posix_spawnattr_t attr;
    posix_spawn_file_actions_t fa;
    pid_t pid;
    int rc;

    if ((rc = tpar__chan_open(&c)) < 0)
        return rc;
    if ((rc = lift(&c.in[0])) < 0 || (rc = lift(&c.out[1])) < 0 ||
        (rc = lift(&c.down.fd)) < 0 || (rc = lift(&c.up.fd)) < 0)
        goto fail;
    if ((rc = tpar__spawn_attrs(&attr)) < 0)
        goto fail;
    if ((rc = spawn_actions(&fa, &c)) < 0) {
        posix_spawnattr_destroy(&attr);
        goto fail;
    }
    rc = posix_spawn(&pid, argv[0], &fa, &attr, argv, envp ? envp : environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    if (rc) {
        rc = -rc;
        goto fail;
    }
    tpar__chan_hand_over(&c, p, pid);
    return 0;
fail:
    tpar__chan_close(&c);
    return rc;
}

void tpar_proc_kill(tpar_proc *p, int sig)
{
    if (p->zygote)
        (void)tpar_proc_reap(p, 0); /* learn of an exit the zygote reported */
    if (p->reaped || p->pid <= 0)
        return;
    if (p->zygote) {
        /* The zygote reaps its workers, so by now the pid may be a new
         * process's: the zygote signals it, if it is still its worker. */
        tpar__zygote_kill(p, sig);
        return;
    }
    /* The group first: a job's own children die with it.  The pid is still
     * ours (unreaped), so neither call can hit a recycled process. */
    (void)kill(-p->pid, sig);
    (void)kill(p->pid, sig);
}

int tpar_proc_reap(tpar_proc *p, int block)
{
    if (p->reaped)
        return 0;
    if (p->zygote)
        return tpar__zygote_reap(p, block);
    for (;;) {
        /* Look before reaping: while the worker is a zombie its pid, and
         * so its process group's id, cannot be reused; kill the group then,
         * so what its job started dies with it, however the worker ended. */
        siginfo_t info;
        memset(&info, 0, sizeof info);
        if (waitid(P_PID, (id_t)p->pid, &info,
                   WEXITED | WNOWAIT | (block ? 0 : WNOHANG)) < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (info.si_pid != p->pid)
            return -EAGAIN;
        (void)kill(-p->pid, SIGKILL);
        int st;
        pid_t r = waitpid(p->pid, &st, WNOHANG);
        if (r == p->pid) {
            p->reaped = 1;
            p->status = st;
            return 0;
        }
        if (r == 0)
            return -EAGAIN;
        if (errno != EINTR)
            return -errno;
    }
}

void tpar_proc_close(tpar_proc *p)
{
    if (p->to_fd >= 0)
        close(p->to_fd);
    if (p->from_fd >= 0)
        close(p->from_fd);
    p->to_fd = p->from_fd = -1;
    tpar_lane_close(&p->down);
    tpar_lane_close(&p->up);
}

void tpar_describe_status(int status, char *buf, size_t n)
{
    if (WIFSIGNALED(status)) {
        int sig = WTERMSIG(status);
        const char *abbrev = sigabbrev_np(sig);
        snprintf(buf, n, "killed by signal %d (SIG%s)", sig,
                 abbrev ? abbrev : "?");
    } else if (WIFEXITED(status)) {
        snprintf(buf, n, "exited with code %d", WEXITSTATUS(status));
    } else {
        snprintf(buf, n, "ended with wait status %#x", (unsigned)status);
    }
}
