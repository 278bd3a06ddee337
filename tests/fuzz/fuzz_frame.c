/* libFuzzer target: the frame decoder (core/frame.c).
 *
 * The input is [chunking seed][max_len selector] then a byte stream.  The
 * decoder is fed the stream in pseudo-random pieces, now and then through
 * tpar_decoder_room/commit as the worker reads large payloads; a one-shot
 * reference parser written from docs/protocol.md reads the whole stream.
 * They must agree frame by frame (kind, status, flags, length, payload
 * bytes), fail at the same frame with the same error, and agree on
 * whether a partial frame is left.  Each frame is re-encoded with
 * tpar_buf_frame / tpar_frame_header_flags and must give back its bytes. */
#include <assert.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tpar.h"

struct rframe {
    uint8_t kind, status, flags;
    uint32_t len;
    size_t off; /* payload offset in the stream */
};

/* The reference: returns frames found; *err the error after them (0: none),
 * *rest the bytes of a partial frame at the end. */
static size_t ref_parse(const uint8_t *s, size_t n, size_t max_len, struct rframe *out,
                        size_t cap, int *err, size_t *rest)
{
    size_t i = 0, k = 0;
    *err = 0;
    while (k < cap) {
        if (n - i < 8) {
            *rest = n - i;
            return k;
        }
        const uint8_t *h = s + i;
        uint32_t len = (uint32_t)h[0] | (uint32_t)h[1] << 8 | (uint32_t)h[2] << 16 |
                       (uint32_t)h[3] << 24;
        if (h[4] == 0 || (h[6] & ~1) || h[7]) {
            *err = TPAR_EBADFRAME;
            return k;
        }
        if (len > max_len) {
            *err = TPAR_ETOOBIG;
            return k;
        }
        size_t body = h[6] & 1 ? 0 : len;
        if (n - i - 8 < body) {
            *rest = n - i;
            return k;
        }
        out[k++] = (struct rframe){h[4], h[5], h[6], len, i + 8};
        i += 8 + body;
    }
    *rest = 0;
    return k;
}

static uint32_t rng(uint32_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 17;
    *x ^= *x << 5;
    return *x;
}

#define MAXF 4096

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    uint32_t seed = data[0] * 2654435761u + 1;
    /* small limits: a 1 GiB default would make each run allocate it */
    static const size_t maxes[] = {1, 7, 8, 64, 300, 4096, 70000, 1 << 20};
    size_t max_len = maxes[data[1] % 8];
    const uint8_t *s = data + 2;
    size_t n = size - 2;

    static struct rframe want[MAXF];
    int rerr;
    size_t rest = 0;
    size_t nwant = ref_parse(s, n, max_len, want, MAXF,
                             &rerr, &rest);

    tpar_decoder d;
    tpar_decoder_init(&d, max_len);
    size_t off = 0, got_n = 0;
    int derr = 0;
    tpar_buf re = {0};
    while (off < n && got_n < MAXF) {
        uint8_t *dst;
        size_t room = tpar_decoder_room(&d, &dst);
        tpar_frame f;
        int got = 0;
        if (room && rng(&seed) % 2) { /* read straight into the decoder */
            size_t k = rng(&seed) % (room + 1);
            if (k > n - off)
                k = n - off;
            memcpy(dst, s + off, k);
            off += k;
            got = tpar_decoder_commit(&d, k, &f);
        } else {
            size_t k = 1 + rng(&seed) % 97;
            if (k > n - off)
                k = n - off;
            /* the piece alone in a buffer of its size: over-reads crash */
            uint8_t *piece = malloc(k);
            memcpy(piece, s + off, k);
            size_t used_all = 0;
            while (used_all < k && !derr && got_n < MAXF) {
                ptrdiff_t used = tpar_decoder_feed(&d, piece + used_all, k - used_all, &f, &got);
                if (used < 0) {
                    derr = (int)used;
                    break;
                }
                assert((size_t)used <= k - used_all);
                used_all += (size_t)used;
                if (got) {
                    const struct rframe *w = &want[got_n];
                    assert(got_n < nwant);
                    assert(f.kind == w->kind && f.status == w->status && f.flags == w->flags &&
                           f.len == w->len);
                    if (!(f.flags & TPAR_FRAME_IN_LANE))
                        assert(f.len == 0 || memcmp(f.payload, s + w->off, f.len) == 0);
                    got_n++;
                    got = 0;
                } else {
                    assert(used_all == k); /* no frame: it took everything */
                }
            }
            free(piece);
            off += k;
            if (derr)
                break;
            continue;
        }
        if (got) {
            const struct rframe *w = &want[got_n];
            assert(got_n < nwant);
            assert(f.kind == w->kind && f.len == w->len &&
                   memcmp(f.payload, s + w->off, f.len) == 0);
            got_n++;
        }
    }
    if (derr) {
        assert(got_n == nwant && derr == rerr);
    } else if (got_n < MAXF) {
        assert(got_n == nwant && rerr == 0);
        assert(tpar_decoder_partial(&d) == (rest > 0));
    }
    /* Re-encoding gives back the stream's bytes. */
    for (size_t i = 0; i < got_n; i++) {
        const struct rframe *w = &want[i];
        if (w->flags) {
            uint8_t h[TPAR_FRAME_HEADER];
            tpar_frame_header_flags(h, w->kind, w->status, w->flags, w->len);
            assert(memcmp(h, s + w->off - 8, 8) == 0);
            continue;
        }
        assert(tpar_buf_frame(&re, w->kind, w->status, s + w->off, w->len) == 0);
        assert(memcmp(re.data, s + w->off - 8, 8 + w->len) == 0);
        tpar_buf_consume(&re, re.len / 2 + 1);
        tpar_buf_consume(&re, re.len);
    }
    tpar_buf_free(&re);
    tpar_decoder_free(&d);
    return 0;
}
