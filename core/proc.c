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

static void close_pair(int fds[2])
{
    if (fds[0] >= 0)
        close(fds[0]);
    if (fds[1] >= 0)
        close(fds[1]);
    fds[0] = fds[1] = -1;
}

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

int tpar__pipe(int fds[2])
{
    if (pipe2(fds, O_CLOEXEC) < 0)
        return -errno;
    (void)fcntl(fds[1], F_SETPIPE_SZ, 1 << 20); /* a hint: EPERM past the user's quota */
    return 0;
}

int tpar__set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
        return -errno;
    return 0;
}

int tpar__spawn_attrs(posix_spawnattr_t *attr)
{
    sigset_t all, none;
    sigfillset(&all);
    sigemptyset(&none);
    int rc = posix_spawnattr_init(attr);
    if (rc)
        return -rc;
    if ((rc = posix_spawnattr_setsigdefault(attr, &all)) ||
        (rc = posix_spawnattr_setsigmask(attr, &none)) ||
        (rc = posix_spawnattr_setpgroup(attr, 0)) ||
        (rc = posix_spawnattr_setflags(
             attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK |
                       POSIX_SPAWN_SETPGROUP))) {
        posix_spawnattr_destroy(attr);
        return -rc;
    }
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

int tpar__chan_open(struct tpar__chan *c)
{
    c->in[0] = c->in[1] = c->out[0] = c->out[1] = -1;
    c->down = c->up = (tpar_lane)TPAR_LANE_NONE;
    /* Without lanes (no memfd here) every payload goes inline. */
    if (tpar_lane_create(&c->down) == 0 && tpar_lane_create(&c->up) < 0)
        tpar_lane_close(&c->down);
    int rc;
    if ((rc = tpar__pipe(c->in)) < 0 || (rc = tpar__pipe(c->out)) < 0) {
        tpar__chan_close(c);
        return rc;
    }
    return 0;
}

void tpar__chan_close_child_ends(struct tpar__chan *c)
{
    if (c->in[0] >= 0)
        close(c->in[0]);
    if (c->out[1] >= 0)
        close(c->out[1]);
    c->in[0] = c->out[1] = -1;
}

void tpar__chan_hand_over(struct tpar__chan *c, tpar_proc *p, pid_t pid)
{
    tpar__chan_close_child_ends(c);
    /* Errors here are impossible for fresh pipes; the fds stay usable. */
    (void)tpar__set_nonblock(c->in[1]);
    (void)tpar__set_nonblock(c->out[0]);
    memset(p, 0, sizeof(*p));
    p->pid = pid;
    p->to_fd = c->in[1];
    p->from_fd = c->out[0];
    p->down = c->down;
    p->up = c->up;
}

void tpar__chan_close(struct tpar__chan *c)
{
    close_pair(c->in);
    close_pair(c->out);
    tpar_lane_close(&c->down);
    tpar_lane_close(&c->up);
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
        int st;
        pid_t r = waitpid(p->pid, &st, block ? 0 : WNOHANG);
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
