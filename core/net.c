/* TCP for remote workers: addresses, socket options, and the parent's
 * listener, which authenticates each connection (core/auth.c) before it
 * hands it out as a worker (core/tpar.h, "remote workers"). */
#include "tpar.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "internal.h"

#define DEFAULT_MAX_PENDING 64
#define PENDING_GRACE 1.0 /* seconds; see room_at */
#define DEFAULT_AUTH_TIMEOUT 10.0
#define ACCEPT_RETRY 0.1 /* seconds without accepting after EMFILE and co. */

int tpar_addr_split(const char *addr, char *host, size_t hostn, unsigned *port)
{
    const char *colon, *h = addr;
    size_t hl;
    if (addr[0] == '[') {
        const char *close = strchr(addr, ']');
        if (!close || close[1] != ':')
            return -EINVAL;
        h = addr + 1;
        hl = (size_t)(close - h);
        colon = close + 1;
    } else {
        colon = strrchr(addr, ':');
        if (!colon)
            return -EINVAL;
        hl = (size_t)(colon - addr);
        if (memchr(addr, ':', hl)) /* an IPv6 address wants brackets */
            return -EINVAL;
    }
    const char *p = colon + 1;
    char *end;
    if (*p < '0' || *p > '9')
        return -EINVAL;
    unsigned long v = strtoul(p, &end, 10);
    if (*end || v > 65535 || hl + 1 > hostn)
        return -EINVAL;
    memcpy(host, h, hl);
    host[hl] = '\0';
    *port = (unsigned)v;
    return 0;
}

void tpar_tcp_tune(int fd)
{
    int one = 1, idle = 30, intvl = 10, cnt = 6;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt);
}

/* "10.0.0.7:41822" / "[::1]:41822" */
static void describe_peer(const struct sockaddr_storage *ss, char *out, size_t n)
{
    char host[INET6_ADDRSTRLEN] = "?";
    unsigned port = 0;
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *s = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &s->sin_addr, host, sizeof host);
        port = ntohs(s->sin_port);
        snprintf(out, n, "%s:%u", host, port);
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)ss;
        port = ntohs(s->sin6_port);
        if (IN6_IS_ADDR_V4MAPPED(&s->sin6_addr)) { /* an IPv4 peer on "::" */
            inet_ntop(AF_INET, &s->sin6_addr.s6_addr[12], host, sizeof host);
            snprintf(out, n, "%s:%u", host, port);
        } else {
            inet_ntop(AF_INET6, &s->sin6_addr, host, sizeof host);
            snprintf(out, n, "[%s]:%u", host, port);
        }
    } else {
        snprintf(out, n, "?");
    }
}

/* ---------------------------------------------------------------- listener */

struct pending {
    int fd;
    double since;    /* accepted then (tpar_now) */
    double deadline; /* since + auth_timeout */
    tpar_auth auth;
    char peer[TPAR_PEER_MAX];
};

struct tpar_listener {
    int lfd;          /* the listening socket */
    int epfd;         /* lfd (while accepting) and the pending connections */
    int accepting;    /* lfd is in epfd */
    double retry_at;  /* accept again from then (after EMFILE), or 0 */
    unsigned port;
    uint8_t key[TPAR_SECRET_LEN];
    int max_pending;
    double auth_timeout;
    struct pending *p; /* max_pending + 1 slots (one for the newcomer that
                          drops the oldest); fd < 0: free */
    int nslots;
    int npending;
};

static int listen_on(const struct addrinfo *ai)
{
    int one = 1;
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK,
                    ai->ai_protocol);
    if (fd < 0)
        return -errno;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, SOMAXCONN) < 0) {
        int err = -errno;
        close(fd);
        return err;
    }
    return fd;
}

/* The first address of host:port that binds (IPv6 wildcard first when the
 * host is "", so that IPv4 peers come too, as v4-mapped addresses). */
static int bind_any(const char *host, unsigned port)
{
    struct addrinfo hints = {.ai_flags = AI_PASSIVE | AI_NUMERICSERV,
                             .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res, *ai;
    char serv[8];
    snprintf(serv, sizeof serv, "%u", port);
    int rc = getaddrinfo(*host ? host : NULL, serv, &hints, &res);
    if (rc != 0)
        return rc == EAI_SYSTEM ? -errno : rc == EAI_MEMORY ? -ENOMEM : -ENOENT;
    int fd = -EADDRNOTAVAIL;
    for (int pass = 0; pass < 2 && fd < 0; pass++) {
        for (ai = res; ai && fd < 0; ai = ai->ai_next)
            if ((ai->ai_family == AF_INET6) == (pass == 0))
                fd = listen_on(ai);
    }
    freeaddrinfo(res);
    return fd;
}

static int watch(tpar_listener *l, int fd, int op, uint32_t events)
{
    struct epoll_event ev = {.events = events, .data.fd = fd};
    return epoll_ctl(l->epfd, op, fd, &ev) < 0 ? -errno : 0;
}

static void set_accepting(tpar_listener *l, int on)
{
    if (on == l->accepting)
        return;
    if (watch(l, l->lfd, on ? EPOLL_CTL_ADD : EPOLL_CTL_DEL, EPOLLIN) == 0)
        l->accepting = on;
}

int tpar_listener_open(tpar_listener **out, const char *host, unsigned port,
                       const uint8_t key[TPAR_SECRET_LEN],
                       const tpar_listen_opts *opts)
{
    tpar_listener *l = calloc(1, sizeof *l);
    if (!l)
        return -ENOMEM;
    l->lfd = l->epfd = -1;
    l->max_pending = opts && opts->max_pending > 0 ? opts->max_pending : DEFAULT_MAX_PENDING;
    l->auth_timeout = opts && opts->auth_timeout > 0 ? opts->auth_timeout
                                                     : DEFAULT_AUTH_TIMEOUT;
    memcpy(l->key, key, TPAR_SECRET_LEN);
    int rc;
    l->nslots = l->max_pending + 1;
    l->p = calloc((size_t)l->nslots, sizeof *l->p);
    if (!l->p) {
        rc = -ENOMEM;
        goto fail;
    }
    for (int i = 0; i < l->nslots; i++)
        l->p[i].fd = -1;
    if ((rc = l->lfd = bind_any(host, port)) < 0)
        goto fail;
    if ((l->epfd = epoll_create1(EPOLL_CLOEXEC)) < 0) {
        rc = -errno;
        goto fail;
    }
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (getsockname(l->lfd, (struct sockaddr *)&ss, &sl) < 0) {
        rc = -errno;
        goto fail;
    }
    l->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                             : ((struct sockaddr_in *)&ss)->sin_port);
    set_accepting(l, 1);
    if (!l->accepting) {
        rc = -errno;
        goto fail;
    }
    *out = l;
    return 0;
fail:
    tpar_listener_free(l);
    return rc;
}

int tpar_listener_fd(const tpar_listener *l)
{
    return l->epfd;
}

unsigned tpar_listener_port(const tpar_listener *l)
{
    return l->port;
}

int tpar_listener_pending(const tpar_listener *l)
{
    return l->npending;
}

/* Forgets pending slot p; closes its fd unless it was handed out. */
static void drop(tpar_listener *l, struct pending *p, int close_fd)
{
    epoll_ctl(l->epfd, EPOLL_CTL_DEL, p->fd, NULL);
    if (close_fd)
        close(p->fd);
    tpar_auth_clear(&p->auth);
    p->fd = -1;
    l->npending--;
    if (!l->retry_at && l->npending < l->max_pending)
        set_accepting(l, 1);
}

static int refuse(tpar_listener *l, struct pending *p, int err, const char *why,
                  tpar_listen_event *ev)
{
    ev->kind = TPAR_LISTEN_REFUSED;
    ev->fd = -1;
    ev->err = err;
    ev->reason = why;
    memcpy(ev->peer, p->peer, sizeof ev->peer);
    drop(l, p, 1);
    return 1;
}

/* Writes what the handshake has to say; a fresh connection's socket buffer
 * takes 40 or 72 bytes whole, so a short write means a peer that is gone
 * or does not read. */
static int flush_auth(struct pending *p)
{
    while (p->auth.out.len) {
        ssize_t w = send(p->fd, p->auth.out.data, p->auth.out.len, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return w < 0 && errno != EAGAIN ? -errno : -EAGAIN;
        tpar_buf_consume(&p->auth.out, (size_t)w);
    }
    return 0;
}

/* The pending connection that has waited longest, other than except. */
static struct pending *oldest(const tpar_listener *l, const struct pending *except)
{
    struct pending *old = NULL;
    for (int i = 0; i < l->nslots; i++)
        if (l->p[i].fd >= 0 && &l->p[i] != except && (!old || l->p[i].since < old->since))
            old = &l->p[i];
    return old;
}

/* With max_pending connections waiting, a newcomer is still accepted once
 * the oldest of them has waited PENDING_GRACE, and that one is dropped for
 * it.  Idle peers therefore hold workers out for PENDING_GRACE, not for
 * auth_timeout; a worker's handshake takes a round trip, so a burst of
 * genuine workers (thousands at start-up) is never dropped this way. */
static double room_at(const tpar_listener *l)
{
    if (l->npending < l->max_pending)
        return 0;
    double grace = l->auth_timeout < PENDING_GRACE ? l->auth_timeout : PENDING_GRACE;
    return oldest(l, NULL)->since + grace;
}

static void update_accepting(tpar_listener *l, double now)
{
    set_accepting(l, !l->retry_at && room_at(l) <= now);
}

double tpar_listener_deadline(const tpar_listener *l)
{
    double d = l->retry_at;
    if (!d && !l->accepting)
        d = room_at(l); /* from then a newcomer drops the oldest */
    for (int i = 0; i < l->nslots; i++)
        if (l->p[i].fd >= 0 && (d == 0 || l->p[i].deadline < d))
            d = l->p[i].deadline;
    return d;
}

static int accept_one(tpar_listener *l, tpar_listen_event *ev)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    int fd = accept4(l->lfd, (struct sockaddr *)&ss, &sl, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) {
        if (errno == EAGAIN || errno == EINTR || errno == ECONNABORTED)
            return 0;
        ev->kind = TPAR_LISTEN_ERROR;
        ev->fd = -1;
        ev->err = -errno;
        ev->reason = "cannot accept a worker's connection";
        ev->peer[0] = '\0';
        set_accepting(l, 0);
        l->retry_at = tpar_now() + ACCEPT_RETRY;
        return 1;
    }
    struct pending *p = l->p;
    while (p->fd >= 0)
        p++; /* a slot is free: npending <= max_pending < nslots here */
    p->fd = fd;
    p->since = tpar_now();
    p->deadline = p->since + l->auth_timeout;
    describe_peer(&ss, p->peer, sizeof p->peer);
    l->npending++;
    tpar_tcp_tune(fd);
    int rc = tpar_auth_init(&p->auth, TPAR_AUTH_PARENT, l->key);
    if (rc < 0)
        return refuse(l, p, rc, "cannot start the handshake", ev);
    if (watch(l, fd, EPOLL_CTL_ADD, EPOLLIN) < 0 || flush_auth(p) < 0)
        return refuse(l, p, -EPIPE, "connection lost before authentication", ev);
    if (l->npending > l->max_pending)
        return refuse(l, oldest(l, p), -EBUSY,
                      "dropped: too many connections waiting to authenticate", ev);
    return 0;
}

/* Reads what pending connection p sent; 1 with *ev when it is done (a
 * worker or a refusal), 0 when it waits for more. */
static int serve_pending(tpar_listener *l, struct pending *p, tpar_listen_event *ev)
{
    uint8_t buf[TPAR_FRAME_HEADER + TPAR_AUTH_FRAME_MAX];
    for (;;) {
        size_t want = tpar_auth_want(&p->auth);
        ssize_t n = recv(p->fd, buf, want, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return 0;
        if (n <= 0)
            return refuse(l, p, n < 0 ? -errno : -EPIPE,
                          "connection closed before authentication", ev);
        int rc = tpar_auth_feed(&p->auth, buf, (size_t)n);
        if (rc == TPAR_EAUTH)
            return refuse(l, p, rc, "wrong secret", ev);
        if (rc == TPAR_ETOOBIG)
            return refuse(l, p, rc, "oversized frame before authentication", ev);
        if (rc < 0)
            return refuse(l, p, rc, "not a tpar worker's handshake", ev);
        if (rc == 1) {
            if (flush_auth(p) < 0)
                return refuse(l, p, -EPIPE, "connection lost during authentication", ev);
            ev->kind = TPAR_LISTEN_WORKER;
            ev->fd = p->fd;
            ev->err = 0;
            ev->reason = NULL;
            memcpy(ev->peer, p->peer, sizeof ev->peer);
            drop(l, p, 0);
            return 1;
        }
    }
}

static struct pending *find(tpar_listener *l, int fd)
{
    for (int i = 0; i < l->nslots; i++)
        if (l->p[i].fd == fd)
            return &l->p[i];
    return NULL;
}

int tpar_listener_next(tpar_listener *l, tpar_listen_event *ev)
{
    double now = tpar_now();
    for (int i = 0; i < l->nslots; i++) {
        struct pending *p = &l->p[i];
        if (p->fd >= 0 && p->deadline <= now)
            return refuse(l, p, -ETIMEDOUT,
                          p->auth.step == TPAR_AUTH_RESPONSE && p->auth.have == 0
                              ? "said nothing in time"
                              : "did not authenticate in time", ev);
    }
    if (l->retry_at && now >= l->retry_at)
        l->retry_at = 0;
    update_accepting(l, now);
    struct epoll_event evs[16];
    int n;
    while ((n = epoll_wait(l->epfd, evs, 16, 0)) < 0 && errno == EINTR)
        ;
    if (n < 0)
        return -errno;
    /* Level-triggered: what this call leaves unread is reported again. */
    for (int i = 0; i < n; i++) {
        int fd = evs[i].data.fd;
        if (fd == l->lfd) {
            while (l->accepting) {
                int before = l->npending;
                int rc = accept_one(l, ev);
                if (rc)
                    return rc;
                if (l->npending == before)
                    break; /* nothing more to accept */
                update_accepting(l, tpar_now());
            }
            continue;
        }
        struct pending *p = find(l, fd);
        if (p && serve_pending(l, p, ev))
            return 1;
    }
    return 0;
}

void tpar_listener_free(tpar_listener *l)
{
    if (!l)
        return;
    for (int i = 0; l->p && i < l->nslots; i++) {
        if (l->p[i].fd >= 0) {
            close(l->p[i].fd);
            tpar_auth_clear(&l->p[i].auth);
        }
    }
    free(l->p);
    if (l->lfd >= 0)
        close(l->lfd);
    if (l->epfd >= 0)
        close(l->epfd);
    explicit_bzero(l->key, sizeof l->key);
    free(l);
}
