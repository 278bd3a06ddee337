/* The forkserver's parent side: starting the zygote, asking it for
 * workers, and collecting the exit statuses it reports. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "internal.h"
#include "tpar.h"
#include "zmsg.h"

extern char **environ;

int tpar_zygote_start(tpar_zygote *z, char *const argv[], char *const envp[])
{
    int sv[2];
    posix_spawnattr_t attr;
    posix_spawn_file_actions_t fa;
    pid_t pid;
    int rc;

    tpar_zygote_stop(z);
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
        return -errno;
    if ((rc = tpar__spawn_attrs(&attr)) < 0)
        goto fail;
    if ((rc = -posix_spawn_file_actions_init(&fa)) < 0) {
        posix_spawnattr_destroy(&attr);
        goto fail;
    }
    /* sv[1] > 3 (0-2 are open and sv[0] < sv[1]), so dup2 clears CLOEXEC. */
    if (sv[1] <= TPAR_WORKER_FD_IN ||
        (rc = -posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null",
                                                O_RDONLY, 0)) < 0 ||
        (rc = -posix_spawn_file_actions_adddup2(&fa, sv[1], TPAR_WORKER_FD_IN)) < 0 ||
        (rc = -posix_spawn_file_actions_addclosefrom_np(&fa, TPAR_WORKER_FD_IN + 1)) < 0) {
        rc = rc ? rc : -EBADF;
        posix_spawn_file_actions_destroy(&fa);
        posix_spawnattr_destroy(&attr);
        goto fail;
    }
    rc = -posix_spawn(&pid, argv[0], &fa, &attr, argv, envp ? envp : environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    if (rc < 0)
        goto fail;
    close(sv[1]);
    z->pid = pid;
    z->fd = sv[0];
    z->gen++;
    z->reaped = 0;
    return 0;
fail:
    close(sv[0]);
    close(sv[1]);
    return rc;
}

static void zygote_gone(tpar_zygote *z)
{
    if (z->fd >= 0)
        close(z->fd);
    z->fd = -1;
    if (z->pid > 0) {
        kill(z->pid, SIGKILL);
        int st = SIGKILL; /* what it died of, when waitpid cannot say */
        pid_t r;
        while ((r = waitpid(z->pid, &st, 0)) < 0 && errno == EINTR)
            ;
        z->status = r == z->pid ? st : SIGKILL;
        z->reaped = 1;
    }
    z->pid = 0;
    z->nexits = 0;
    z->nlive = 0;
}

void tpar_zygote_stop(tpar_zygote *z)
{
    if (z->pid > 0)
        zygote_gone(z);
    free(z->exits);
    z->exits = NULL;
    z->nexits = z->cap_exits = z->nlive = 0;
}

/* Room for n reports.  Made before each fork, so that a report, which
 * comes when it comes, never needs memory to be kept. */
static int reserve_exits(tpar_zygote *z, size_t n)
{
    if (n <= z->cap_exits)
        return 0;
    size_t cap = z->cap_exits ? z->cap_exits * 2 : 16;
    while (cap < n)
        cap *= 2;
    struct tpar__exit *ne = realloc(z->exits, cap * sizeof(*ne));
    if (!ne)
        return -ENOMEM;
    z->exits = ne;
    z->cap_exits = cap;
    return 0;
}

static int note_exit(tpar_zygote *z, int32_t tag, int status)
{
    /* Room was made at the fork; a report of no worker of ours (cannot
     * happen) may find none. */
    if (z->nexits == z->cap_exits && reserve_exits(z, z->nexits + 1) < 0)
        return -ENOMEM;
    z->exits[z->nexits].tag = tag;
    z->exits[z->nexits].status = status;
    z->nexits++;
    return 0;
}

/* Reads one message; block waits up to timeout_ms (-1: forever).  EXIT
 * reports are filed; a PID reply is returned in *m.  Returns 1 for a
 * PID reply, 0 for nothing (or a filed report), -EPIPE when the zygote is
 * gone (it is then reaped). */
static int recv_one(tpar_zygote *z, struct tpar__zmsg *m, int timeout_ms)
{
    if (z->pid <= 0)
        return -EPIPE;
    if (timeout_ms != 0) {
        struct pollfd pfd = {.fd = z->fd, .events = POLLIN};
        int r = poll(&pfd, 1, timeout_ms);
        if (r == 0)
            return 0;
        if (r < 0)
            return errno == EINTR ? 0 : -errno;
    }
    ssize_t n = recv(z->fd, m, sizeof(*m), MSG_DONTWAIT);
    if (n < 0)
        return errno == EAGAIN || errno == EINTR ? 0 : (zygote_gone(z), -EPIPE);
    if (n != (ssize_t)sizeof(*m)) { /* EOF, or nonsense: either way, gone */
        zygote_gone(z);
        return -EPIPE;
    }
    if (m->kind == TPAR__Z_EXIT)
        return note_exit(z, m->c, m->b);
    return m->kind == TPAR__Z_PID ? 1 : 0;
}

int tpar_zygote_fork(tpar_zygote *z, tpar_proc *p)
{
    struct tpar__chan c;
    struct tpar__zmsg m;
    int rc;

    if (z->pid <= 0)
        return -EPIPE;
    if (reserve_exits(z, z->nlive + 1) < 0)
        return -ENOMEM;
    if ((rc = tpar__chan_open(&c)) < 0)
        return rc;
    int32_t tag = ++z->next_tag;
    int fds[4] = {c.in[0], c.out[1], c.down.fd, c.up.fd};
    if (tpar__zsend_fork(z->fd, tag, fds) < 0) {
        zygote_gone(z);
        rc = -EPIPE;
        goto out;
    }
    tpar__chan_close_child_ends(&c); /* the zygote has its copies */
    for (;;) { /* the zygote answers requests in order */
        rc = recv_one(z, &m, 10000);
        if (rc < 0)
            goto out;
        if (rc == 1 && m.a == tag)
            break;
    }
    if (m.b <= 0) {
        rc = m.b < 0 ? m.b : -EPROTO;
        goto out;
    }
    tpar__chan_hand_over(&c, p, m.b);
    z->nlive++;
    p->zygote = z;
    p->zygote_gen = z->gen;
    p->zygote_tag = tag;
    return 0;
out:
    tpar__chan_close(&c);
    return rc;
}

int tpar_zygote_spawn(tpar_zygote *z, char *const argv[], char *const envp[], tpar_proc *p)
{
    for (int tries = 0; tries < 2; tries++) {
        int rc, fresh = z->pid <= 0;
        if (fresh && (rc = tpar_zygote_start(z, argv, envp)) < 0)
            return rc;
        rc = tpar_zygote_fork(z, p);
        if (rc != -EPIPE)
            return rc;
        tpar_zygote_stop(z);
        if (fresh) /* it died at its start (a --preload failed): so would the next */
            break;
    }
    return -EPIPE;
}

static int claim(tpar_zygote *z, tpar_proc *p)
{
    for (size_t i = 0; i < z->nexits; i++) {
        if (z->exits[i].tag == p->zygote_tag) {
            p->status = z->exits[i].status;
            p->reaped = 1;
            z->exits[i] = z->exits[--z->nexits];
            if (z->nlive)
                z->nlive--;
            return 1;
        }
    }
    return 0;
}

void tpar__zygote_kill(tpar_proc *p, int sig)
{
    tpar_zygote *z = p->zygote;
    if (p->zygote_gen != z->gen || z->pid <= 0)
        return; /* its zygote died, and it with it */
    if (tpar__zsend(z->fd, TPAR__Z_KILL, p->zygote_tag, sig, 0) < 0)
        zygote_gone(z);
}

int tpar__zygote_reap(tpar_proc *p, int block)
{
    tpar_zygote *z = p->zygote;
    struct tpar__zmsg m;
    for (;;) {
        if (p->zygote_gen != z->gen || z->pid <= 0) {
            /* Its zygote died, and it with it (PR_SET_PDEATHSIG). */
            p->status = SIGKILL;
            p->reaped = 1;
            return 0;
        }
        if (claim(z, p))
            return 0;
        int rc = recv_one(z, &m, block ? -1 : 0);
        if (rc == 0 && !block && !claim(z, p)) {
            /* drain whatever else is queued before giving up */
            struct pollfd pfd = {.fd = z->fd, .events = POLLIN};
            if (poll(&pfd, 1, 0) != 1)
                return -EAGAIN;
        }
    }
}
