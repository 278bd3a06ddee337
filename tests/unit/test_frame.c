/* The frame codec: any split of the stream, limits checked before any
 * allocation, truncation, and no read past the end of the input (the
 * input sits against a PROT_NONE guard page, so an over-read crashes). */
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "check.h"
#include "tpar.h"

static tpar_buf sample;     /* three frames back to back */
static const char *payloads[] = {"", "hello", "a longer payload, with more bytes in it"};
static const uint8_t kinds[] = {TPAR_FRAME_READY, TPAR_FRAME_JOB_JSON, TPAR_FRAME_RESULT};

static void build_sample(void)
{
    for (int i = 0; i < 3; i++)
        CHECK_EQ(tpar_buf_frame(&sample, kinds[i], (uint8_t)i, payloads[i],
                                strlen(payloads[i])), 0);
}

/* Copies data to the end of a page followed by an inaccessible page. */
static uint8_t *guarded(const uint8_t *data, size_t n, void **map, size_t *maplen)
{
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    size_t pages = (n + pg - 1) / pg + 1;
    *maplen = (pages + 1) * pg;
    uint8_t *m = mmap(NULL, *maplen, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
        abort();
    mprotect(m + pages * pg, pg, PROT_NONE);
    uint8_t *p = m + pages * pg - n;
    memcpy(p, data, n);
    *map = m;
    return p;
}

/* Feeds data in pieces of the given sizes (cycled); checks the 3 frames. */
static void feed_in_pieces(const uint8_t *data, size_t n, size_t a, size_t b)
{
    tpar_decoder d;
    tpar_frame f;
    int seen = 0;
    size_t off = 0, turn = 0;
    tpar_decoder_init(&d, 1024);
    while (off < n) {
        size_t piece = (turn++ & 1) ? b : a;
        if (piece > n - off)
            piece = n - off;
        void *map;
        size_t maplen;
        uint8_t *chunk = guarded(data + off, piece, &map, &maplen);
        size_t used = 0;
        while (used < piece) {
            int got;
            ptrdiff_t r = tpar_decoder_feed(&d, chunk + used, piece - used, &f, &got);
            CHECK(r >= 0);
            if (r < 0)
                break;
            used += (size_t)r;
            if (got) {
                CHECK(seen < 3);
                CHECK_EQ(f.kind, kinds[seen]);
                CHECK_EQ(f.status, seen);
                CHECK_EQ(f.len, strlen(payloads[seen]));
                CHECK(memcmp(f.payload, payloads[seen], f.len) == 0);
                seen++;
            }
        }
        munmap(map, maplen);
        off += piece;
    }
    CHECK_EQ(seen, 3);
    CHECK(!tpar_decoder_partial(&d));
    tpar_decoder_free(&d);
}

static void test_one_byte_at_a_time(void)
{
    feed_in_pieces(sample.data, sample.len, 1, 1);
}

static void test_every_split(void)
{
    for (size_t a = 1; a <= sample.len; a++)
        for (size_t b = 1; b <= sample.len; b += 3)
            feed_in_pieces(sample.data, sample.len, a, b);
}

static void test_whole_frame_is_zero_copy(void)
{
    tpar_decoder d;
    tpar_frame f;
    int got;
    tpar_decoder_init(&d, 1024);
    ptrdiff_t r = tpar_decoder_feed(&d, sample.data, sample.len, &f, &got);
    CHECK_EQ(r, TPAR_FRAME_HEADER);
    CHECK_EQ(got, 1);
    size_t second = TPAR_FRAME_HEADER;
    r = tpar_decoder_feed(&d, sample.data + second, sample.len - second, &f, &got);
    CHECK_EQ(r, TPAR_FRAME_HEADER + 5);
    CHECK(f.payload == sample.data + second + TPAR_FRAME_HEADER);
    CHECK(d.buf == NULL); /* nothing was copied or allocated */
    tpar_decoder_free(&d);
}

static void test_oversized_rejected_before_allocation(void)
{
    tpar_decoder d;
    tpar_frame f;
    int got;
    uint8_t hdr[TPAR_FRAME_HEADER];
    tpar_frame_header(hdr, TPAR_FRAME_JOB_JSON, 0, 0xFFFFFFF0u);
    tpar_decoder_init(&d, 1 << 20);
    CHECK_EQ(tpar_decoder_feed(&d, hdr, 5, &f, &got), 5);
    CHECK_EQ(tpar_decoder_feed(&d, hdr + 5, 3, &f, &got), TPAR_ETOOBIG);
    CHECK(d.buf == NULL);
    tpar_decoder_free(&d);
    /* exactly at the limit is fine */
    tpar_frame_header(hdr, TPAR_FRAME_JOB_JSON, 0, 16);
    tpar_decoder_init(&d, 16);
    CHECK_EQ(tpar_decoder_feed(&d, hdr, 8, &f, &got), 8);
    CHECK_EQ(got, 0);
    CHECK(tpar_decoder_partial(&d));
    tpar_decoder_free(&d);
}

static void test_bad_header(void)
{
    tpar_decoder d;
    tpar_frame f;
    int got;
    uint8_t hdr[TPAR_FRAME_HEADER];
    tpar_frame_header(hdr, 0, 0, 1); /* kind 0 does not exist */
    tpar_decoder_init(&d, 1024);
    CHECK_EQ(tpar_decoder_feed(&d, hdr, 8, &f, &got), TPAR_EBADFRAME);
    tpar_decoder_free(&d);
    tpar_frame_header(hdr, TPAR_FRAME_RESULT, 0, 1);
    hdr[7] = 1; /* reserved bytes must be zero */
    tpar_decoder_init(&d, 1024);
    CHECK_EQ(tpar_decoder_feed(&d, hdr, 8, &f, &got), TPAR_EBADFRAME);
    tpar_decoder_free(&d);
}

/* An IN_LANE frame is its header alone: the payload is in a lane. */
static void test_lane_frame_is_header_only(void)
{
    tpar_decoder d;
    tpar_frame f;
    int got;
    uint8_t two[2 * TPAR_FRAME_HEADER + 3];
    tpar_frame_header_flags(two, TPAR_FRAME_RESULT, 1, TPAR_FRAME_IN_LANE, 1 << 20);
    tpar_frame_header(two + TPAR_FRAME_HEADER, TPAR_FRAME_RESULT, 0, 3);
    memcpy(two + 2 * TPAR_FRAME_HEADER, "abc", 3);
    tpar_decoder_init(&d, 1024); /* the limit still applies to lane payloads */
    CHECK_EQ(tpar_decoder_feed(&d, two, sizeof two, &f, &got), TPAR_ETOOBIG);
    tpar_decoder_free(&d);
    tpar_decoder_init(&d, 0);
    CHECK_EQ(tpar_decoder_feed(&d, two, sizeof two, &f, &got), TPAR_FRAME_HEADER);
    CHECK_EQ(got, 1);
    CHECK_EQ(f.flags, TPAR_FRAME_IN_LANE);
    CHECK_EQ(f.len, 1 << 20);
    CHECK_EQ(f.status, 1);
    CHECK(f.payload == NULL);
    CHECK(!tpar_decoder_partial(&d));
    CHECK_EQ(tpar_decoder_feed(&d, two + TPAR_FRAME_HEADER, TPAR_FRAME_HEADER + 3, &f, &got),
             TPAR_FRAME_HEADER + 3);
    CHECK_EQ(got, 1);
    CHECK_EQ(f.flags, 0);
    CHECK(f.len == 3 && memcmp(f.payload, "abc", 3) == 0);
    tpar_decoder_free(&d);
    two[6] = 0x02; /* an unknown flag */
    tpar_decoder_init(&d, 0);
    CHECK_EQ(tpar_decoder_feed(&d, two, sizeof two, &f, &got), TPAR_EBADFRAME);
    tpar_decoder_free(&d);
}

/* After a large frame the decoder does not keep its buffer. */
static void test_large_buffer_not_kept(void)
{
    size_t n = TPAR_LANE_MIN * 2;
    uint8_t *fr = malloc(TPAR_FRAME_HEADER + n);
    tpar_frame_header(fr, TPAR_FRAME_RESULT, 0, (uint32_t)n);
    memset(fr + TPAR_FRAME_HEADER, 'z', n);
    tpar_decoder d;
    tpar_frame f;
    int got;
    tpar_decoder_init(&d, 0);
    CHECK_EQ(tpar_decoder_feed(&d, fr, 100, &f, &got), 100); /* split: buffered */
    CHECK(d.buf_cap >= n);
    CHECK_EQ(tpar_decoder_feed(&d, fr + 100, TPAR_FRAME_HEADER + n - 100, &f, &got),
             (ptrdiff_t)(TPAR_FRAME_HEADER + n - 100));
    CHECK_EQ(got, 1);
    CHECK(f.payload[n - 1] == 'z');
    tpar_frame_header(fr, TPAR_FRAME_RESULT, 0, 1);
    CHECK_EQ(tpar_decoder_feed(&d, fr, TPAR_FRAME_HEADER + 1, &f, &got), TPAR_FRAME_HEADER + 1);
    CHECK_EQ(d.buf_cap, 0);
    tpar_decoder_free(&d);
    free(fr);
}

static void test_truncated(void)
{
    /* Every proper prefix of a frame leaves the decoder partial: EOF there
     * is a truncated frame, never a frame. */
    size_t first = TPAR_FRAME_HEADER; /* the empty READY frame */
    size_t end = first + TPAR_FRAME_HEADER + 5;
    for (size_t cut = first + 1; cut < end; cut++) {
        tpar_decoder d;
        tpar_frame f;
        int got, frames = 0;
        size_t off = 0;
        tpar_decoder_init(&d, 1024);
        while (off < cut) {
            ptrdiff_t r = tpar_decoder_feed(&d, sample.data + off, cut - off, &f, &got);
            CHECK(r >= 0);
            if (r < 0)
                break;
            off += (size_t)r;
            frames += got;
        }
        CHECK_EQ(frames, 1);
        CHECK(tpar_decoder_partial(&d));
        tpar_decoder_free(&d);
    }
}

static void test_direct_read_into_decoder(void)
{
    /* A large payload: the first feed gives the header and a little; the
     * rest is read straight into the decoder's buffer in pieces. */
    enum { N = 100000 };
    tpar_buf b = {0};
    uint8_t *payload = malloc(N), *dst;
    for (size_t i = 0; i < N; i++)
        payload[i] = (uint8_t)(i * 7);
    tpar_buf_frame(&b, TPAR_FRAME_JOB_PICKLE, 0, payload, N);
    tpar_decoder d;
    tpar_frame f;
    int got;
    tpar_decoder_init(&d, 0);
    CHECK_EQ(tpar_decoder_room(&d, &dst), 0); /* not inside a payload */
    CHECK_EQ(tpar_decoder_feed(&d, b.data, 1000, &f, &got), 1000);
    CHECK_EQ(got, 0);
    size_t off = 1000, room;
    int done = 0;
    while ((room = tpar_decoder_room(&d, &dst)) > 0) {
        CHECK_EQ(room, b.len - off);
        size_t n = room < 30000 ? room : 30000;
        memcpy(dst, b.data + off, n);
        off += n;
        done = tpar_decoder_commit(&d, n, &f);
        if (done)
            break;
    }
    CHECK_EQ(done, 1);
    CHECK_EQ(off, b.len);
    CHECK_EQ(f.len, N);
    CHECK_EQ(f.kind, TPAR_FRAME_JOB_PICKLE);
    CHECK(memcmp(f.payload, payload, N) == 0);
    CHECK(!tpar_decoder_partial(&d));
    CHECK_EQ(tpar_decoder_room(&d, &dst), 0);
    tpar_decoder_free(&d);
    tpar_buf_free(&b);
    free(payload);
}

static void test_buf(void)
{
    tpar_buf b = {0};
    for (int i = 0; i < 1000; i++)
        CHECK_EQ(tpar_buf_append(&b, "0123456789", 10), 0);
    CHECK_EQ(b.len, 10000);
    tpar_buf_consume(&b, 9995);
    CHECK_EQ(b.len, 5);
    CHECK(memcmp(b.data, "56789", 5) == 0);
    tpar_buf_consume(&b, 100);
    CHECK_EQ(b.len, 0);
    tpar_buf_free(&b);
    CHECK(b.data == NULL);
}

static void test_buf_consume_is_cheap(void)
{
    /* Writing a big frame out in pipe-sized steps: consuming moves the
     * front, it does not move the rest; appends reuse the room. */
    enum { BIG = 1 << 20, STEP = 4096 };
    tpar_buf b = {0};
    uint8_t *big = malloc(BIG);
    for (size_t i = 0; i < BIG; i++)
        big[i] = (uint8_t)(i * 31);
    CHECK_EQ(tpar_buf_append(&b, big, BIG), 0);
    uint8_t *base = b.base;
    for (size_t off = 0; off + STEP < BIG; off += STEP) {
        CHECK(memcmp(b.data, big + off, STEP) == 0);
        tpar_buf_consume(&b, STEP);
        CHECK(b.data == base + off + STEP); /* nothing was moved */
        if (b.data != base + off + STEP)
            break;
    }
    size_t left = b.len, cap_before = b.cap + (size_t)(b.data - b.base);
    CHECK_EQ(tpar_buf_append(&b, "tail", 4), 0); /* compacts: front >= len */
    CHECK(b.data == b.base);
    CHECK_EQ(b.len, left + 4);
    CHECK(memcmp(b.data, big + BIG - left, left) == 0);
    CHECK(memcmp(b.data + left, "tail", 4) == 0);
    CHECK_EQ(b.cap, cap_before);
    /* growth keeps the live bytes only */
    tpar_buf_consume(&b, 10);
    CHECK_EQ(tpar_buf_append(&b, big, BIG), 0);
    CHECK_EQ(b.len, left + 4 - 10 + BIG);
    CHECK(memcmp(b.data + left - 6, big, BIG) == 0);
    tpar_buf_consume(&b, b.len);
    CHECK_EQ(b.len, 0);
    CHECK(b.data == b.base);
    tpar_buf_free(&b);
    free(big);
}

static void test_strerror(void)
{
    CHECK(strcmp(tpar_strerror(TPAR_ETOOBIG), "frame longer than the limit") == 0);
    CHECK(strcmp(tpar_strerror(-2), "No such file or directory") == 0);
}

/* TAKEBACK and GIVEBACK: round trips through the decoder, values that
 * need all 64 bits, and every malformed form refused. */
static void test_takeback_giveback(void)
{
    tpar_buf b = {0};
    tpar_decoder d;
    tpar_frame f;
    int got;
    uint64_t n = 0, from = 0, to = 0;
    CHECK_EQ(tpar_buf_takeback(&b, 0x0102030405060708ull), 0);
    CHECK_EQ(tpar_buf_giveback(&b, 3, 0xfedcba9876543210ull), 0);
    CHECK_EQ(tpar_buf_giveback(&b, 7, 7), 0); /* nothing given back */
    CHECK_EQ(tpar_buf_giveback(&b, 8, 7), TPAR_EBADFRAME);
    CHECK_EQ(b.len, 3 * TPAR_FRAME_HEADER + 8 + 16 + 16);
    tpar_decoder_init(&d, 1024);
    size_t off = 0;
    ptrdiff_t r = tpar_decoder_feed(&d, b.data, b.len, &f, &got);
    CHECK(r > 0 && got);
    off += (size_t)r;
    CHECK_EQ(f.kind, TPAR_FRAME_TAKEBACK);
    CHECK_EQ(tpar_takeback_parse(&f, &n), 0);
    CHECK(n == 0x0102030405060708ull);
    CHECK_EQ(tpar_giveback_parse(&f, &from, &to), TPAR_EBADFRAME); /* wrong kind */
    r = tpar_decoder_feed(&d, b.data + off, b.len - off, &f, &got);
    CHECK(r > 0 && got);
    off += (size_t)r;
    CHECK_EQ(tpar_giveback_parse(&f, &from, &to), 0);
    CHECK_EQ(from, 3);
    CHECK(to == 0xfedcba9876543210ull);
    CHECK_EQ(tpar_takeback_parse(&f, &n), TPAR_EBADFRAME);
    r = tpar_decoder_feed(&d, b.data + off, b.len - off, &f, &got);
    CHECK(r > 0 && got);
    CHECK_EQ(tpar_giveback_parse(&f, &from, &to), 0);
    CHECK_EQ(from, 7);
    CHECK_EQ(to, 7);
    tpar_decoder_free(&d);

    /* Wrong lengths, from > to, a lane frame (no payload on the pipe). */
    uint8_t p[17] = {0};
    tpar_frame bad = {.kind = TPAR_FRAME_GIVEBACK, .len = 15, .payload = p};
    CHECK_EQ(tpar_giveback_parse(&bad, &from, &to), TPAR_EBADFRAME);
    bad.len = 17;
    CHECK_EQ(tpar_giveback_parse(&bad, &from, &to), TPAR_EBADFRAME);
    bad.len = 16;
    tpar_put_u64le(p, 9);
    tpar_put_u64le(p + 8, 8);
    CHECK_EQ(tpar_giveback_parse(&bad, &from, &to), TPAR_EBADFRAME);
    bad.payload = NULL;
    CHECK_EQ(tpar_giveback_parse(&bad, &from, &to), TPAR_EBADFRAME);
    tpar_frame tb = {.kind = TPAR_FRAME_TAKEBACK, .len = 7, .payload = p};
    CHECK_EQ(tpar_takeback_parse(&tb, &n), TPAR_EBADFRAME);
    tb.len = 8;
    CHECK_EQ(tpar_takeback_parse(&tb, &n), 0);
    CHECK_EQ(n, 9);
    tpar_buf_free(&b);
}

static void test_u64le(void)
{
    uint8_t p[8];
    tpar_put_u64le(p, 0x8877665544332211ull);
    for (int i = 0; i < 8; i++)
        CHECK_EQ(p[i], 0x11 * (i + 1));
    CHECK(tpar_get_u64le(p) == 0x8877665544332211ull);
}

int main(void)
{
    build_sample();
    RUN(test_takeback_giveback);
    RUN(test_u64le);
    RUN(test_one_byte_at_a_time);
    RUN(test_every_split);
    RUN(test_whole_frame_is_zero_copy);
    RUN(test_oversized_rejected_before_allocation);
    RUN(test_bad_header);
    RUN(test_truncated);
    RUN(test_lane_frame_is_header_only);
    RUN(test_large_buffer_not_kept);
    RUN(test_direct_read_into_decoder);
    RUN(test_buf);
    RUN(test_buf_consume_is_cheap);
    RUN(test_strerror);
    tpar_buf_free(&sample);
    return CHECK_DONE();
}
