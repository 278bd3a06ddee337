/* The parent's side of the channel to one worker (tpar.h, "links"):
 * frames out, events in, the jobs in flight.  Never touches an fd. */
#include "tpar.h"

#include <errno.h>
#include <string.h>

void tpar_link_init(tpar_link *l, tpar_lane *down, tpar_lane *up)
{
    memset(l, 0, sizeof(*l));
    tpar_decoder_init(&l->dec, 0);
    l->down = down && down->fd >= 0 ? down : NULL;
    l->up = up && up->fd >= 0 ? up : NULL;
}

void tpar_link_free(tpar_link *l)
{
    tpar_decoder_free(&l->dec);
    tpar_buf_free(&l->out);
    l->lent = NULL;
    l->lent_len = 0;
    l->njobs = 0;
    l->lane_held = 0;
}

static int is_job(uint8_t kind)
{
    return kind == TPAR_FRAME_JOB_JSON || kind == TPAR_FRAME_JOB_PICKLE;
}

static void push_job(tpar_link *l, void *job)
{
    unsigned at = (l->head + l->njobs) % TPAR_LINK_DEPTH;
    l->jobs[at] = job;
    l->nums[at] = l->sent++;
    l->njobs++;
}

/* Queues a header (and inline payload bytes); room is reserved first. */
static void put_frame(tpar_link *l, uint8_t kind, uint8_t status, uint8_t flags,
                      const void *p, size_t inline_len, size_t n)
{
    tpar_frame_header_flags(l->out.data + l->out.len, kind, status, flags, (uint32_t)n);
    if (inline_len)
        memcpy(l->out.data + l->out.len + TPAR_FRAME_HEADER, p, inline_len);
    l->out.len += TPAR_FRAME_HEADER + inline_len;
}

static int check_send(const tpar_link *l, uint8_t kind, size_t n)
{
    if (n > l->dec.max_len || n > UINT32_MAX)
        return TPAR_ETOOBIG;
    if (is_job(kind) && l->njobs == TPAR_LINK_DEPTH)
        return -ENOSPC;
    return 0;
}

void tpar_link_keep(tpar_link *l)
{
    if (!l->lent_len)
        return;
    /* The room was reserved when it was lent, and only consumed since. */
    (void)tpar_buf_append(&l->out, l->lent, l->lent_len);
    l->lent = NULL;
    l->lent_len = 0;
}

/* Queues a frame whole or not at all; an inline payload is copied, or
 * lent (`lend`: the link points at it until tpar_link_keep). */
static int send(tpar_link *l, uint8_t kind, uint8_t status, const void *p, size_t n, void *job,
                int lend)
{
    int rc = check_send(l, kind, n);
    if (rc < 0)
        return rc;
    tpar_link_keep(l); /* a lent payload's rest goes first */
    /* The header's room first: then a payload put in the lane is always
     * announced, never left published for nobody. */
    if (tpar_buf_reserve(&l->out, TPAR_FRAME_HEADER) < 0)
        return -ENOMEM;
    if (l->down && n >= TPAR_LANE_MIN && tpar_lane_put(l->down, p, n)) {
        put_frame(l, kind, status, TPAR_FRAME_IN_LANE, NULL, 0, n);
    } else {
        /* Lent, the room is for tpar_link_keep: reserved now, it cannot
         * fail then, when part of the frame may be in the pipe. */
        if (tpar_buf_reserve(&l->out, TPAR_FRAME_HEADER + n) < 0)
            return -ENOMEM;
        put_frame(l, kind, status, 0, p, lend ? 0 : n, n);
        if (lend && n) {
            l->lent = p;
            l->lent_len = n;
        }
    }
    if (is_job(kind))
        push_job(l, job);
    return 0;
}

int tpar_link_send(tpar_link *l, uint8_t kind, uint8_t status, const void *p, size_t n,
                   void *job)
{
    return send(l, kind, status, p, n, job, 0);
}

int tpar_link_send_lent(tpar_link *l, uint8_t kind, uint8_t status, const void *p, size_t n,
                        void *job)
{
    return send(l, kind, status, p, n, job, 1);
}

int tpar_link_send_in_lane(tpar_link *l, uint8_t kind, uint8_t status, size_t n, void *job)
{
    int rc = l->down ? check_send(l, kind, n) : -EINVAL;
    tpar_link_keep(l);
    if (rc == 0 && tpar_buf_reserve(&l->out, TPAR_FRAME_HEADER) < 0)
        rc = -ENOMEM;
    if (rc < 0) {
        if (l->down) /* left FULL, it would stay so, its pages never trimmed */
            tpar_lane_abort(l->down);
        return rc;
    }
    put_frame(l, kind, status, TPAR_FRAME_IN_LANE, NULL, 0, n);
    if (is_job(kind))
        push_job(l, job);
    return 0;
}

int tpar_link_take_back(tpar_link *l)
{
    if (!(l->ready_flags & TPAR_READY_TAKEBACK) || l->takeback_pending || !l->njobs)
        return 0;
    tpar_link_keep(l);
    if (tpar_buf_takeback(&l->out, l->sent) < 0)
        return -ENOMEM;
    l->takeback_pending = 1;
    l->bell_due = 1;
    return 1;
}

int tpar_link_progress(tpar_link *l, uint64_t *started, uint64_t *finished)
{
    if (!l->up || !(l->ready_flags & TPAR_READY_PROGRESS))
        return -ENOENT;
    return tpar_lane_progress_get(l->up, started, finished);
}

size_t tpar_link_pending(const tpar_link *l, const uint8_t **data)
{
    if (!l->out.len && l->lent_len) {
        *data = l->lent;
        return l->lent_len;
    }
    *data = l->out.data;
    return l->out.len;
}

int tpar_link_pending_iov(const tpar_link *l, struct iovec iov[2])
{
    int n = 0;
    if (l->out.len)
        iov[n++] = (struct iovec){l->out.data, l->out.len};
    if (l->lent_len)
        iov[n++] = (struct iovec){(void *)l->lent, l->lent_len};
    return n;
}

size_t tpar_link_pending_bytes(const tpar_link *l)
{
    return l->out.len + l->lent_len;
}

void tpar_link_written(tpar_link *l, size_t n)
{
    size_t from_out = n < l->out.len ? n : l->out.len;
    tpar_buf_consume(&l->out, from_out);
    n -= from_out;
    if (n) { /* the lent payload's first bytes went */
        l->lent += n;
        l->lent_len -= n;
        if (!l->lent_len)
            l->lent = NULL;
    }
    if (!l->out.len && !l->lent_len && l->bell_due) { /* the TAKEBACK is in the pipe */
        if (l->down)
            (void)tpar_lane_ring(l->down); /* without: it reads it in time */
        l->bell_due = 0;
    }
}

/* ------------------------------------------------------------- receiving */

static int fail(tpar_link *l, const char *why)
{
    l->error = why;
    return TPAR_EPROTO;
}

static int on_result(tpar_link *l, const tpar_frame *f, tpar_link_event *ev)
{
    const uint8_t *p = f->payload;
    /* A RETIRED notice may come with no job in flight (the package's
     * retire() said so after the last result): it answers no job then. */
    int notice = (f->status & TPAR_RESULT_STATUS_MASK) == TPAR_RESULT_RETIRED;
    if (!l->njobs && !notice)
        return fail(l, "a result without a job");
    if (f->len < 8)
        return fail(l, "a short result");
    if (f->flags & TPAR_FRAME_IN_LANE) {
        /* The body stays where the worker wrote it: a view, until
         * tpar_link_lane_done. */
        if (!l->up || l->lane_held || tpar_lane_view(l->up, f->len, &p) < 0)
            return fail(l, "a lane frame with no payload in the lane");
        l->lane_held = 1;
        ev->in_lane = 1;
    }
    ev->type = TPAR_LINK_RESULT;
    ev->status = f->status & TPAR_RESULT_STATUS_MASK;
    ev->retiring = (f->status & TPAR_RESULT_RETIRING) != 0;
    ev->duration = tpar_get_f64le(p);
    ev->body = p + 8;
    ev->len = f->len - 8;
    ev->job = tpar_link_take_oldest(l); /* NULL: a notice that answers no job */
    if (ev->retiring)
        l->retiring = 1;
    return 0;
}

static int on_giveback(tpar_link *l, const tpar_frame *f, tpar_link_event *ev)
{
    uint64_t from, to;
    if (tpar_giveback_parse(f, &from, &to) < 0 || !l->takeback_pending || to != l->sent)
        return fail(l, "an unexpected GIVEBACK");
    l->takeback_pending = 0;
    /* The jobs given back are the newest: nothing was sent since. */
    unsigned n = 0;
    while (n < l->njobs && tpar_link_job_number(l, l->njobs - 1 - n) >= from)
        n++;
    ev->type = TPAR_LINK_GIVEBACK;
    ev->count = n;
    return 0;
}

static int on_frame(tpar_link *l, const tpar_frame *f, tpar_link_event *ev)
{
    switch (f->kind) {
    case TPAR_FRAME_READY:
        if (l->ready) /* a second one is harmless: the first counts */
            return 0;
        l->ready = 1;
        l->ready_flags = f->status;
        ev->type = TPAR_LINK_READY;
        ev->status = f->status;
        if (f->len >= 4 && f->payload)
            ev->pid = (uint32_t)f->payload[0] | (uint32_t)f->payload[1] << 8 |
                      (uint32_t)f->payload[2] << 16 | (uint32_t)f->payload[3] << 24;
        return 0;
    case TPAR_FRAME_RESULT:
        return on_result(l, f, ev);
    case TPAR_FRAME_GIVEBACK:
        return on_giveback(l, f, ev);
    case TPAR_FRAME_EXTRA: /* for the job whose result comes next */
        if (l->njobs && !(f->flags & TPAR_FRAME_IN_LANE)) {
            ev->type = TPAR_LINK_EXTRA;
            ev->status = f->status;
            ev->body = f->payload;
            ev->len = f->len;
            ev->job = tpar_link_job(l, 0);
        }
        return 0;
    default:
        return fail(l, "an unexpected frame kind");
    }
}

ptrdiff_t tpar_link_feed(tpar_link *l, const uint8_t *data, size_t n, tpar_link_event *ev)
{
    memset(ev, 0, sizeof(*ev));
    tpar_frame f;
    int got = 0;
    ptrdiff_t used = tpar_decoder_feed(&l->dec, data, n, &f, &got);
    if (used < 0)
        return used;
    if (got) {
        int rc = on_frame(l, &f, ev);
        if (rc < 0) {
            memset(ev, 0, sizeof(*ev));
            return rc;
        }
    }
    return used;
}

size_t tpar_link_room(tpar_link *l, uint8_t **dst)
{
    return tpar_decoder_room(&l->dec, dst);
}

int tpar_link_commit(tpar_link *l, size_t n, tpar_link_event *ev)
{
    memset(ev, 0, sizeof(*ev));
    tpar_frame f;
    if (!tpar_decoder_commit(&l->dec, n, &f))
        return 0;
    int rc = on_frame(l, &f, ev);
    if (rc < 0)
        memset(ev, 0, sizeof(*ev));
    return rc;
}

void tpar_link_lane_done(tpar_link *l)
{
    if (l->lane_held)
        tpar_lane_done(l->up);
    l->lane_held = 0;
}

int tpar_link_partial(const tpar_link *l)
{
    return tpar_decoder_partial(&l->dec);
}

/* ----------------------------------------------------------- jobs in flight */

unsigned tpar_link_inflight(const tpar_link *l)
{
    return l->njobs;
}

void *tpar_link_job(const tpar_link *l, unsigned i)
{
    return i < l->njobs ? l->jobs[(l->head + i) % TPAR_LINK_DEPTH] : NULL;
}

uint64_t tpar_link_job_number(const tpar_link *l, unsigned i)
{
    return i < l->njobs ? l->nums[(l->head + i) % TPAR_LINK_DEPTH] : 0;
}

void *tpar_link_take_oldest(tpar_link *l)
{
    if (!l->njobs)
        return NULL;
    void *j = l->jobs[l->head];
    l->head = (l->head + 1) % TPAR_LINK_DEPTH;
    l->njobs--;
    return j;
}

void *tpar_link_take_newest(tpar_link *l)
{
    if (!l->njobs)
        return NULL;
    l->njobs--;
    return l->jobs[(l->head + l->njobs) % TPAR_LINK_DEPTH];
}
