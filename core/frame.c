/* The frame codec: an incremental decoder and the helpers that build
 * frames into a growable buffer.  Never touches an fd. */
#include "tpar.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static uint32_t get_u32le(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
           (uint32_t)p[3] << 24;
}

double tpar_get_f64le(const uint8_t *p)
{
    uint64_t u = 0;
    for (int i = 7; i >= 0; i--)
        u = u << 8 | p[i];
    double d;
    memcpy(&d, &u, sizeof d);
    return d;
}

void tpar_frame_header_flags(uint8_t out[TPAR_FRAME_HEADER], uint8_t kind,
                             uint8_t status, uint8_t flags, uint32_t len)
{
    out[0] = (uint8_t)len;
    out[1] = (uint8_t)(len >> 8);
    out[2] = (uint8_t)(len >> 16);
    out[3] = (uint8_t)(len >> 24);
    out[4] = kind;
    out[5] = status;
    out[6] = flags;
    out[7] = 0;
}

void tpar_frame_header(uint8_t out[TPAR_FRAME_HEADER], uint8_t kind,
                       uint8_t status, uint32_t len)
{
    tpar_frame_header_flags(out, kind, status, 0, len);
}

void tpar_decoder_init(tpar_decoder *d, size_t max_len)
{
    memset(d, 0, sizeof(*d));
    d->max_len = max_len ? max_len : TPAR_FRAME_MAX_DEFAULT;
}

void tpar_decoder_free(tpar_decoder *d)
{
    size_t max_len = d->max_len;
    free(d->buf);
    tpar_decoder_init(d, max_len);
}

void tpar_decoder_shrink(tpar_decoder *d)
{
    if (d->in_payload)
        return;
    free(d->buf);
    d->buf = NULL;
    d->buf_cap = 0;
}

int tpar_decoder_partial(const tpar_decoder *d)
{
    return d->hdr_have > 0 || d->in_payload;
}

/* Validates a complete header and moves the decoder into its payload. */
static int header_done(tpar_decoder *d)
{
    uint32_t len = get_u32le(d->hdr);
    if ((d->hdr[6] & ~TPAR_FRAME_IN_LANE) || d->hdr[7] != 0 || d->hdr[4] == 0)
        return TPAR_EBADFRAME;
    if (len > d->max_len)
        return TPAR_ETOOBIG; /* checked before anything is allocated */
    d->want = len;
    d->have = 0;
    d->in_payload = 1;
    return 0;
}

static void emit(tpar_decoder *d, tpar_frame *f, const uint8_t *payload)
{
    f->len = d->want;
    f->kind = d->hdr[4];
    f->status = d->hdr[5];
    f->flags = d->hdr[6];
    f->payload = payload;
    d->hdr_have = 0;
    d->in_payload = 0;
    d->have = 0;
}

ptrdiff_t tpar_decoder_feed(tpar_decoder *d, const uint8_t *data, size_t len,
                            tpar_frame *frame, int *got)
{
    size_t used = 0;
    int rc;

    *got = 0;
    if (d->buf_cap > TPAR_LANE_MIN) /* the caller is done with that frame */
        tpar_decoder_shrink(d);
    if (!d->in_payload) {
        if (d->hdr_have == 0 && len >= TPAR_FRAME_HEADER) {
            memcpy(d->hdr, data, TPAR_FRAME_HEADER); /* the common, fast path */
            used = TPAR_FRAME_HEADER;
        } else {
            size_t n = TPAR_FRAME_HEADER - d->hdr_have;
            if (n > len)
                n = len;
            memcpy(d->hdr + d->hdr_have, data, n);
            d->hdr_have += n;
            used = n;
            if (d->hdr_have < TPAR_FRAME_HEADER)
                return (ptrdiff_t)used;
        }
        d->hdr_have = TPAR_FRAME_HEADER;
        if ((rc = header_done(d)) < 0)
            return rc;
        if (d->hdr[6] & TPAR_FRAME_IN_LANE) { /* no payload on the pipe */
            emit(d, frame, NULL);
            *got = 1;
            return (ptrdiff_t)used;
        }
        if (len - used >= d->want) { /* whole payload in data: no copy */
            emit(d, frame, data + used);
            *got = 1;
            return (ptrdiff_t)(used + frame->len);
        }
    }
    if (d->buf_cap < d->want) {
        uint8_t *nb = realloc(d->buf, d->want);
        if (!nb)
            return -ENOMEM;
        d->buf = nb;
        d->buf_cap = d->want;
    }
    size_t n = d->want - d->have;
    if (n > len - used)
        n = len - used;
    if (n)
        memcpy(d->buf + d->have, data + used, n);
    d->have += n;
    used += n;
    if (d->have == d->want) {
        emit(d, frame, d->buf);
        *got = 1;
    }
    return (ptrdiff_t)used;
}

size_t tpar_decoder_room(tpar_decoder *d, uint8_t **dst)
{
    if (!d->in_payload || d->buf_cap < d->want)
        return 0;
    *dst = d->buf + d->have;
    return d->want - d->have;
}

int tpar_decoder_commit(tpar_decoder *d, size_t n, tpar_frame *frame)
{
    d->have += n;
    if (d->have < d->want)
        return 0;
    emit(d, frame, d->buf);
    return 1;
}

int tpar_buf_reserve(tpar_buf *b, size_t extra)
{
    if (b->cap - b->len >= extra)
        return 0;
    size_t front = (size_t)(b->data - b->base);
    /* Move the bytes back only when that copies no more than was consumed
     * since: each byte is then moved at most once per byte consumed. */
    if (front >= b->len && b->cap + front - b->len >= extra) {
        memmove(b->base, b->data, b->len);
        b->data = b->base;
        b->cap += front;
        return 0;
    }
    if (extra > SIZE_MAX / 2 - b->len)
        return -ENOMEM;
    size_t cap = b->cap + front ? b->cap + front : 256;
    while (cap < b->len + extra)
        cap *= 2;
    if (!front) {
        uint8_t *nd = realloc(b->base, cap);
        if (!nd)
            return -ENOMEM;
        b->base = b->data = nd;
    } else { /* a fresh allocation: copy only the live bytes */
        uint8_t *nd = malloc(cap);
        if (!nd)
            return -ENOMEM;
        memcpy(nd, b->data, b->len);
        free(b->base);
        b->base = b->data = nd;
    }
    b->cap = cap;
    return 0;
}

int tpar_buf_append(tpar_buf *b, const void *p, size_t n)
{
    int rc = tpar_buf_reserve(b, n);
    if (rc < 0)
        return rc;
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

int tpar_buf_frame(tpar_buf *b, uint8_t kind, uint8_t status, const void *p,
                   size_t n)
{
    if (n > UINT32_MAX)
        return TPAR_ETOOBIG;
    int rc = tpar_buf_reserve(b, TPAR_FRAME_HEADER + n);
    if (rc < 0)
        return rc;
    tpar_frame_header(b->data + b->len, kind, status, (uint32_t)n);
    b->len += TPAR_FRAME_HEADER;
    return tpar_buf_append(b, p, n);
}

void tpar_buf_consume(tpar_buf *b, size_t n)
{
    if (n >= b->len) { /* empty: the whole allocation is room again */
        b->cap += (size_t)(b->data - b->base);
        b->data = b->base;
        b->len = 0;
        return;
    }
    b->data += n;
    b->len -= n;
    b->cap -= n;
}

void tpar_buf_free(tpar_buf *b)
{
    free(b->base);
    b->data = b->base = NULL;
    b->len = b->cap = 0;
}

uint64_t tpar_get_u64le(const uint8_t *p)
{
    uint64_t u = 0;
    for (int i = 7; i >= 0; i--)
        u = u << 8 | p[i];
    return u;
}

void tpar_put_u64le(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++, v >>= 8)
        p[i] = (uint8_t)v;
}

int tpar_buf_takeback(tpar_buf *b, uint64_t n)
{
    uint8_t p[8];
    tpar_put_u64le(p, n);
    return tpar_buf_frame(b, TPAR_FRAME_TAKEBACK, 0, p, sizeof p);
}

int tpar_buf_giveback(tpar_buf *b, uint64_t from, uint64_t to)
{
    uint8_t p[16];
    if (from > to)
        return TPAR_EBADFRAME;
    tpar_put_u64le(p, from);
    tpar_put_u64le(p + 8, to);
    return tpar_buf_frame(b, TPAR_FRAME_GIVEBACK, 0, p, sizeof p);
}

int tpar_takeback_parse(const tpar_frame *f, uint64_t *n)
{
    if (f->kind != TPAR_FRAME_TAKEBACK || f->len != 8 || !f->payload)
        return TPAR_EBADFRAME;
    *n = tpar_get_u64le(f->payload);
    return 0;
}

int tpar_giveback_parse(const tpar_frame *f, uint64_t *from, uint64_t *to)
{
    if (f->kind != TPAR_FRAME_GIVEBACK || f->len != 16 || !f->payload)
        return TPAR_EBADFRAME;
    uint64_t a = tpar_get_u64le(f->payload), z = tpar_get_u64le(f->payload + 8);
    if (a > z)
        return TPAR_EBADFRAME;
    *from = a;
    *to = z;
    return 0;
}
