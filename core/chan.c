/* What proc.c, zygote.c and the worker's FORK path share: a new worker's
 * channels (two pipes, two lanes), how they are handed over once the
 * child has its ends, and the spawn attributes every child gets. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"
#include "tpar.h"

static void close_pair(int fds[2])
{
    if (fds[0] >= 0)
        close(fds[0]);
    if (fds[1] >= 0)
        close(fds[1]);
    fds[0] = fds[1] = -1;
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
