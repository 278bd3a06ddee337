/* Encoding and decoding the zygote's control messages (zmsg.h). */
#include <errno.h>
#include <string.h>
#include <sys/socket.h>

#include "zmsg.h"

int tpar__zsend(int sock, int32_t kind, int32_t a, int32_t b, int32_t c)
{
    struct tpar__zmsg m = {kind, a, b, c};
    while (send(sock, &m, sizeof(m), MSG_NOSIGNAL) < 0)
        if (errno != EINTR)
            return -errno;
    return 0;
}

int tpar__zsend_fork(int sock, int32_t tag, const int fds[4])
{
    int nfds = fds[2] >= 0 ? 4 : 2; /* the pipes, and the lanes if any */
    struct tpar__zmsg m = {TPAR__Z_FORK, tag, nfds, 0};
    struct iovec iov = {.iov_base = &m, .iov_len = sizeof(m)};
    union {
        char buf[CMSG_SPACE(4 * sizeof(int))];
        struct cmsghdr align;
    } u;
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
                         .msg_controllen = CMSG_SPACE((size_t)nfds * sizeof(int))};
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    memset(u.buf, 0, sizeof(u.buf));
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN((size_t)nfds * sizeof(int));
    memcpy(CMSG_DATA(c), fds, (size_t)nfds * sizeof(int));
    while (sendmsg(sock, &msg, MSG_NOSIGNAL) < 0)
        if (errno != EINTR)
            return -errno;
    return 0;
}

int tpar__zrecv_fork(int sock, int32_t *tag, int fds[4])
{
    struct tpar__zmsg m;
    int rc = tpar__zrecv(sock, &m, fds);
    if (rc == 0 && m.kind != TPAR__Z_FORK)
        return -EPROTO;
    *tag = m.a;
    return rc;
}

int tpar__zrecv(int sock, struct tpar__zmsg *out, int fds[4])
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
        return -EPIPE;
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    *out = m;
    if (n == sizeof(m) && m.kind == TPAR__Z_KILL && !c)
        return 0;
    if (n != sizeof(m) || m.kind != TPAR__Z_FORK || !c || (m.b != 2 && m.b != 4) ||
        (msg.msg_flags & MSG_CTRUNC) || c->cmsg_type != SCM_RIGHTS ||
        c->cmsg_len != CMSG_LEN((size_t)m.b * sizeof(int)))
        return -EPROTO;
    fds[2] = fds[3] = -1;
    memcpy(fds, CMSG_DATA(c), (size_t)m.b * sizeof(int));
    return 0;
}
