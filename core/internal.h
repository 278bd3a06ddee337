/* Helpers shared between libtpar's files; not part of the API. */
#ifndef TPAR_INTERNAL_H
#define TPAR_INTERNAL_H

#include <spawn.h>

#include "tpar.h"

int tpar__set_nonblock(int fd);
/* pipe2(O_CLOEXEC), with a 1 MiB capacity where the system allows it:
 * large payloads then move in fewer, larger steps. */
int tpar__pipe(int fds[2]);
/* Default dispositions for every signal, an empty mask, a new group. */
int tpar__spawn_attrs(posix_spawnattr_t *attr);
/* A new worker's channels: two pipes and two lanes.  The child's ends are
 * in[0] (its fd 3), out[1] (its fd 4) and the lanes' fds (5 and 6). */
struct tpar__chan {
    int in[2];               /* parent -> worker */
    int out[2];              /* worker -> parent */
    tpar_lane down, up;      /* TPAR_LANE_NONE where memfds cannot be had */
};
/* Opens them; -errno with nothing left open. */
int tpar__chan_open(struct tpar__chan *c);
/* Closes the child's ends of the pipes (once the child has its copies). */
void tpar__chan_close_child_ends(struct tpar__chan *c);
/* The child `pid` has its ends: closes them here, fills *p with the
 * parent's ends (non-blocking) and the lanes. */
void tpar__chan_hand_over(struct tpar__chan *c, tpar_proc *p, pid_t pid);
/* Closes whatever is still open (after a failure). */
void tpar__chan_close(struct tpar__chan *c);
/* tpar_proc_reap for a worker forked by a zygote. */
int tpar__zygote_reap(tpar_proc *p, int block);
/* Asks p's zygote to send sig to p's process group and to p, if p is
 * still its unreaped child (ZMSG KILL); a dead zygote's workers are dead. */
void tpar__zygote_kill(tpar_proc *p, int sig);

#endif
