/* The parent's side of a worker channel (core/link.c): frames out through
 * the lane or inline, events in (fed a byte at a time too), the jobs in
 * flight, and the protocol errors it must refuse. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "tpar.h"

/* Decodes the link's pending bytes as the worker would. */
static int next_frame(tpar_link *l, tpar_decoder *d, tpar_frame *f)
{
    const uint8_t *data;
    size_t n = tpar_link_pending(l, &data);
    int got = 0;
    ptrdiff_t used = tpar_decoder_feed(d, data, n, f, &got);
    if (used < 0)
        return (int)used;
    tpar_link_written(l, (size_t)used);
    return got;
}

static void result_frame(tpar_buf *b, int status, double dur, const char *body)
{
    size_t n = strlen(body);
    uint8_t *p = malloc(8 + n);
    memcpy(p, &dur, 8); /* little-endian hosts */
    memcpy(p + 8, body, n);
    tpar_buf_frame(b, TPAR_FRAME_RESULT, (uint8_t)status, p, 8 + n);
    free(p);
}

/* Feeds all of b, one byte at a time when `bytewise`; collects events. */
static int feed_all(tpar_link *l, const tpar_buf *b, int bytewise, tpar_link_event *evs, int max)
{
    int nev = 0;
    for (size_t off = 0; off < b->len;) {
        tpar_link_event ev;
        size_t n = bytewise ? 1 : b->len - off;
        ptrdiff_t used = tpar_link_feed(l, b->data + off, n, &ev);
        if (used < 0)
            return (int)used;
        off += (size_t)used;
        if (ev.type != TPAR_LINK_NONE && nev < max)
            evs[nev++] = ev;
    }
    return nev;
}

static void test_small_job_goes_inline(void)
{
    tpar_link l;
    tpar_decoder d;
    tpar_frame f;
    int token;
    tpar_link_init(&l, NULL, NULL);
    tpar_decoder_init(&d, 0);
    CHECK_EQ(tpar_link_send(&l, TPAR_FRAME_JOB_JSON, TPAR_JOB_FLUSH_FIRST, "m:f\0[]\0{}", 10,
                            &token), 0);
    CHECK_EQ(tpar_link_inflight(&l), 1);
    CHECK(tpar_link_job(&l, 0) == &token);
    CHECK_EQ(l.sent, 1);
    CHECK_EQ(next_frame(&l, &d, &f), 1);
    CHECK_EQ(f.kind, TPAR_FRAME_JOB_JSON);
    CHECK_EQ(f.status, TPAR_JOB_FLUSH_FIRST);
    CHECK_EQ(f.flags, 0);
    CHECK_EQ(f.len, 10);
    CHECK(memcmp(f.payload, "m:f\0[]\0{}", 10) == 0);
    const uint8_t *data;
    CHECK_EQ(tpar_link_pending(&l, &data), 0);
    /* Not a job: nothing joins the jobs in flight. */
    CHECK_EQ(tpar_link_send(&l, TPAR_FRAME_SHUTDOWN, 0, NULL, 0, NULL), 0);
    CHECK_EQ(tpar_link_inflight(&l), 1);
    CHECK_EQ(next_frame(&l, &d, &f), 1);
    CHECK_EQ(f.kind, TPAR_FRAME_SHUTDOWN);
    tpar_decoder_free(&d);
    tpar_link_free(&l);
}

static void test_large_job_takes_the_free_lane(void)
{
    tpar_lane down, up, reader;
    tpar_link l;
    tpar_decoder d;
    tpar_frame f;
    const uint8_t *view;
    size_t n = TPAR_LANE_MIN + 5;
    uint8_t *big = malloc(n);
    for (size_t i = 0; i < n; i++)
        big[i] = (uint8_t)(i * 7);
    CHECK_EQ(tpar_lane_create(&down), 0);
    CHECK_EQ(tpar_lane_create(&up), 0);
    tpar_lane_adopt(&reader, fcntl(down.fd, F_DUPFD_CLOEXEC, 0));
    tpar_link_init(&l, &down, &up);
    tpar_decoder_init(&d, 0);
    CHECK_EQ(tpar_link_send(&l, TPAR_FRAME_JOB_PICKLE, 0, big, n, NULL), 0);
    CHECK_EQ(l.out.len, TPAR_FRAME_HEADER); /* the header only */
    CHECK_EQ(next_frame(&l, &d, &f), 1);
    CHECK_EQ(f.flags, TPAR_FRAME_IN_LANE);
    CHECK_EQ(f.len, n);
    CHECK_EQ(tpar_lane_view(&reader, n, &view), 0);
    CHECK(memcmp(view, big, n) == 0);
    /* The lane is held by the reader: the next one goes inline. */
    CHECK_EQ(tpar_link_send(&l, TPAR_FRAME_JOB_PICKLE, 0, big, n, NULL), 0);
    CHECK_EQ(l.out.len, TPAR_FRAME_HEADER + n);
    CHECK_EQ(next_frame(&l, &d, &f), 1);
    CHECK_EQ(f.flags, 0);
    CHECK(memcmp(f.payload, big, n) == 0);
    tpar_lane_done(&reader);
    CHECK_EQ(tpar_link_inflight(&l), 2);
    tpar_decoder_free(&d);
    tpar_link_free(&l);
    tpar_lane_close(&reader);
    tpar_lane_close(&down);
    tpar_lane_close(&up);
    free(big);
}

/* A lent payload is not copied: header and payload are pending as two
 * pieces, the second the caller's own bytes; keep copies only what was
 * not written, and the worker reads the frame whole. */
static void test_lent_payload_is_copied_only_where_unwritten(void)
{
    tpar_lane down, up, reader;
    tpar_link l;
    tpar_decoder d;
    tpar_frame f;
    const uint8_t *view;
    size_t n = TPAR_LANE_MIN + 5;
    uint8_t *big = malloc(n), *copy = malloc(n);
    for (size_t i = 0; i < n; i++)
        big[i] = (uint8_t)(i * 13);
    memcpy(copy, big, n);
    CHECK_EQ(tpar_lane_create(&down), 0);
    CHECK_EQ(tpar_lane_create(&up), 0);
    tpar_lane_adopt(&reader, fcntl(down.fd, F_DUPFD_CLOEXEC, 0));
    tpar_link_init(&l, &down, &up);
    tpar_decoder_init(&d, 0);
    /* The lane is free: the payload goes there, nothing is lent. */
    CHECK_EQ(tpar_link_send_lent(&l, TPAR_FRAME_JOB_PICKLE, 0, big, n, NULL), 0);
    CHECK_EQ(l.lent_len, 0);
    CHECK_EQ(next_frame(&l, &d, &f), 1);
    CHECK_EQ(f.flags, TPAR_FRAME_IN_LANE);
    CHECK_EQ(tpar_lane_view(&reader, n, &view), 0);
    /* Held by the reader: inline, lent. */
    CHECK_EQ(tpar_link_send_lent(&l, TPAR_FRAME_JOB_PICKLE, 0, big, n, NULL), 0);
    CHECK_EQ(l.out.len, TPAR_FRAME_HEADER);
    CHECK_EQ(tpar_link_pending_bytes(&l), TPAR_FRAME_HEADER + n);
    struct iovec iov[2];
    CHECK_EQ(tpar_link_pending_iov(&l, iov), 2);
    CHECK_EQ(iov[0].iov_len, TPAR_FRAME_HEADER);
    CHECK(iov[1].iov_base == big && iov[1].iov_len == n);
    /* The transport takes the header and 1000 bytes; the rest is kept. */
    tpar_buf got = {0};
    CHECK_EQ(tpar_buf_append(&got, iov[0].iov_base, iov[0].iov_len), 0);
    CHECK_EQ(tpar_buf_append(&got, big, 1000), 0);
    tpar_link_written(&l, TPAR_FRAME_HEADER + 1000);
    CHECK(l.lent == big + 1000 && l.lent_len == n - 1000);
    tpar_link_keep(&l);
    CHECK_EQ(l.lent_len, 0);
    CHECK_EQ(l.out.len, n - 1000);
    memset(big, 0, n); /* the caller's buffer may go now */
    const uint8_t *data;
    size_t len = tpar_link_pending(&l, &data);
    CHECK_EQ(len, n - 1000);
    CHECK_EQ(tpar_buf_append(&got, data, len), 0);
    tpar_link_written(&l, len);
    int have = 0;
    CHECK_EQ(tpar_decoder_feed(&d, got.data, got.len, &f, &have), (ptrdiff_t)got.len);
    CHECK_EQ(have, 1);
    CHECK_EQ(f.flags, 0);
    CHECK_EQ(f.len, n);
    CHECK(memcmp(f.payload, copy, n) == 0);
    /* Lent and not kept, then another send: the first goes first. */
    memcpy(big, copy, n);
    CHECK_EQ(tpar_link_send_lent(&l, TPAR_FRAME_JOB_PICKLE, 0, big, n, NULL), 0);
    CHECK_EQ(tpar_link_send(&l, TPAR_FRAME_SHUTDOWN, 0, NULL, 0, NULL), 0);
    CHECK_EQ(l.lent_len, 0);
    memset(big, 0, n);
    CHECK_EQ(next_frame(&l, &d, &f), 1);
    CHECK_EQ(f.len, n);
    CHECK(memcmp(f.payload, copy, n) == 0);
    CHECK_EQ(next_frame(&l, &d, &f), 1);
    CHECK_EQ(f.kind, TPAR_FRAME_SHUTDOWN);
    /* Written whole from the lent bytes: nothing is ever copied. */
    memcpy(big, copy, n);
    CHECK_EQ(tpar_link_send_lent(&l, TPAR_FRAME_JOB_PICKLE, 0, big, n, NULL), 0);
    CHECK_EQ(tpar_link_pending_iov(&l, iov), 2);
    tpar_link_written(&l, TPAR_FRAME_HEADER + n);
    CHECK_EQ(tpar_link_pending_bytes(&l), 0);
    tpar_link_keep(&l);
    CHECK_EQ(l.out.len, 0);
    CHECK_EQ(tpar_link_pending_iov(&l, iov), 0);
    tpar_lane_done(&reader);
    tpar_buf_free(&got);
    tpar_decoder_free(&d);
    tpar_link_free(&l);
    tpar_lane_close(&reader);
    tpar_lane_close(&down);
    tpar_lane_close(&up);
    free(big);
    free(copy);
}

static void test_no_lanes_means_inline(void)
{
    tpar_link l;
    tpar_lane none = TPAR_LANE_NONE;
    size_t n = TPAR_LANE_MIN * 2;
    uint8_t *big = calloc(1, n);
    tpar_link_init(&l, &none, &none); /* a lane with no fd is none */
    CHECK(l.down == NULL && l.up == NULL);
    CHECK_EQ(tpar_link_send(&l, TPAR_FRAME_JOB_PICKLE, 0, big, n, NULL), 0);
    CHECK_EQ(l.out.len, TPAR_FRAME_HEADER + n);
    CHECK_EQ(tpar_link_send_in_lane(&l, TPAR_FRAME_JOB_PICKLE, 0, n, NULL), -EINVAL);
    CHECK_EQ(tpar_link_inflight(&l), 1);
    tpar_link_free(&l);
    free(big);
}

static void test_events_in_order_bytewise(void)
{
    for (int bytewise = 0; bytewise < 2; bytewise++) {
        tpar_link l;
        tpar_buf b = {0};
        tpar_link_event ev[4];
        int a, c;
        tpar_link_init(&l, NULL, NULL);
        CHECK_EQ(tpar_link_send(&l, TPAR_FRAME_JOB_JSON, 0, "x", 1, &a), 0);
        CHECK_EQ(tpar_link_send(&l, TPAR_FRAME_JOB_JSON, 0, "y", 1, &c), 0);
        uint8_t pid[4] = {1, 0, 0, 0};
        tpar_buf_frame(&b, TPAR_FRAME_READY, TPAR_READY_FLUSH_FIRST, pid, 4);
        result_frame(&b, TPAR_RESULT_OK, 0.25, "42");
        result_frame(&b, TPAR_RESULT_ERROR | TPAR_RESULT_RETIRING, 1.5, "{}");
        CHECK_EQ(feed_all(&l, &b, bytewise, ev, 4), 3);
        CHECK_EQ(ev[0].type, TPAR_LINK_READY);
        CHECK_EQ(ev[0].status, TPAR_READY_FLUSH_FIRST);
        CHECK(l.ready && l.ready_flags == TPAR_READY_FLUSH_FIRST);
        CHECK_EQ(ev[1].type, TPAR_LINK_RESULT);
        CHECK(ev[1].job == &a);
        CHECK_EQ(ev[1].status, TPAR_RESULT_OK);
        CHECK_EQ(ev[1].retiring, 0);
        CHECK(ev[1].duration == 0.25);
        CHECK_EQ(ev[1].len, 2);
        CHECK(ev[2].job == &c);
        CHECK_EQ(ev[2].status, TPAR_RESULT_ERROR); /* the flag masked off */
        CHECK_EQ(ev[2].retiring, 1);
        CHECK(l.retiring);
        CHECK_EQ(tpar_link_inflight(&l), 0);
        CHECK(!tpar_link_partial(&l));
        tpar_buf_free(&b);
        tpar_link_free(&l);
    }
}

static int feed_one(tpar_link *l, tpar_buf *b)
{
    tpar_link_event ev;
    ptrdiff_t used = tpar_link_feed(l, b->data, b->len, &ev);
    CHECK(used < 0 || ev.type != TPAR_LINK_NONE);
    b->len = 0;
    return used < 0 ? (int)used : ev.type;
}

static void test_protocol_errors(void)
{
    tpar_link l;
    tpar_buf b = {0};
    tpar_link_init(&l, NULL, NULL);
    result_frame(&b, TPAR_RESULT_OK, 0, "1");
    CHECK_EQ(feed_one(&l, &b), TPAR_EPROTO);
    CHECK(l.error && strstr(l.error, "without a job"));

    tpar_link_free(&l);
    tpar_link_init(&l, NULL, NULL);
    tpar_link_send(&l, TPAR_FRAME_JOB_JSON, 0, "x", 1, NULL);
    tpar_buf_frame(&b, TPAR_FRAME_RESULT, 0, "abc", 3);
    CHECK_EQ(feed_one(&l, &b), TPAR_EPROTO);
    CHECK(strstr(l.error, "short"));

    tpar_link_free(&l);
    tpar_link_init(&l, NULL, NULL);
    tpar_buf_frame(&b, TPAR_FRAME_JOB_JSON, 0, "x", 1); /* a parent's frame */
    CHECK_EQ(feed_one(&l, &b), TPAR_EPROTO);
    CHECK(strstr(l.error, "unexpected"));

    /* A lane result on a link without lanes. */
    tpar_link_free(&l);
    tpar_link_init(&l, NULL, NULL);
    tpar_link_send(&l, TPAR_FRAME_JOB_JSON, 0, "x", 1, NULL);
    tpar_buf_reserve(&b, TPAR_FRAME_HEADER);
    tpar_frame_header_flags(b.data, TPAR_FRAME_RESULT, 0, TPAR_FRAME_IN_LANE, 20);
    b.len = TPAR_FRAME_HEADER;
    CHECK_EQ(feed_one(&l, &b), TPAR_EPROTO);
    CHECK(strstr(l.error, "lane"));
    tpar_buf_free(&b);
    tpar_link_free(&l);
}

static void test_result_in_the_up_lane(void)
{
    tpar_lane down, up, writer;
    tpar_link l;
    tpar_buf b = {0};
    tpar_link_event ev;
    uint8_t payload[8 + 5];
    double dur = 2.0;
    memcpy(payload, &dur, 8);
    memcpy(payload + 8, "hello", 5);
    CHECK_EQ(tpar_lane_create(&down), 0);
    CHECK_EQ(tpar_lane_create(&up), 0);
    tpar_lane_adopt(&writer, fcntl(up.fd, F_DUPFD_CLOEXEC, 0));
    tpar_link_init(&l, &down, &up);
    tpar_link_send(&l, TPAR_FRAME_JOB_JSON, 0, "x", 1, NULL);
    tpar_link_send(&l, TPAR_FRAME_JOB_JSON, 0, "y", 1, NULL);
    CHECK_EQ(tpar_lane_put(&writer, payload, sizeof payload), 1);
    tpar_buf_reserve(&b, TPAR_FRAME_HEADER);
    tpar_frame_header_flags(b.data, TPAR_FRAME_RESULT, 0, TPAR_FRAME_IN_LANE, sizeof payload);
    b.len = TPAR_FRAME_HEADER;
    CHECK_EQ(tpar_link_feed(&l, b.data, b.len, &ev), TPAR_FRAME_HEADER);
    CHECK_EQ(ev.type, TPAR_LINK_RESULT);
    CHECK_EQ(ev.in_lane, 1);
    CHECK(ev.duration == 2.0);
    CHECK_EQ(ev.len, 5);
    CHECK(memcmp(ev.body, "hello", 5) == 0);
    /* Held: the writer cannot fill it, and a second lane result is wrong. */
    CHECK_EQ(tpar_lane_claim(&writer), 0);
    CHECK_EQ(tpar_link_feed(&l, b.data, b.len, &ev), TPAR_EPROTO);
    tpar_link_free(&l); /* the failed link is unusable */
    tpar_link_init(&l, &down, &up);
    tpar_link_send(&l, TPAR_FRAME_JOB_JSON, 0, "x", 1, NULL);
    l.lane_held = 1;
    tpar_link_lane_done(&l);
    CHECK_EQ(l.lane_held, 0);
    CHECK_EQ(tpar_lane_claim(&writer), 1); /* handed back */
    tpar_lane_abort(&writer);
    tpar_buf_free(&b);
    tpar_link_free(&l);
    tpar_lane_close(&writer);
    tpar_lane_close(&down);
    tpar_lane_close(&up);
}

static void test_depth_and_taking_back(void)
{
    tpar_link l;
    static int tokens[TPAR_LINK_DEPTH];
    tpar_link_init(&l, NULL, NULL);
    for (int i = 0; i < TPAR_LINK_DEPTH; i++)
        CHECK_EQ(tpar_link_send(&l, TPAR_FRAME_JOB_JSON, 0, "x", 1, &tokens[i]), 0);
    size_t before = l.out.len;
    CHECK_EQ(tpar_link_send(&l, TPAR_FRAME_JOB_JSON, 0, "x", 1, NULL), -ENOSPC);
    CHECK_EQ(l.out.len, before); /* nothing queued */
    CHECK(tpar_link_take_oldest(&l) == &tokens[0]);
    CHECK(tpar_link_take_newest(&l) == &tokens[TPAR_LINK_DEPTH - 1]);
    CHECK(tpar_link_job(&l, 0) == &tokens[1]);
    CHECK_EQ(tpar_link_inflight(&l), TPAR_LINK_DEPTH - 2);
    /* The ring wraps. */
    CHECK_EQ(tpar_link_send(&l, TPAR_FRAME_JOB_JSON, 0, "x", 1, &tokens[0]), 0);
    CHECK(tpar_link_job(&l, TPAR_LINK_DEPTH - 2) == &tokens[0]);
    unsigned n = 0;
    while (tpar_link_take_oldest(&l))
        n++;
    CHECK_EQ(n, TPAR_LINK_DEPTH - 1);
    CHECK(tpar_link_take_newest(&l) == NULL);
    CHECK(tpar_link_job(&l, 0) == NULL);
    tpar_link_free(&l);
}

static void test_take_back_and_giveback(void)
{
    tpar_lane down, up, bell;
    tpar_link l;
    tpar_buf b = {0};
    tpar_link_event ev;
    tpar_decoder d;
    tpar_frame f;
    int tok[4];
    uint64_t n, seen = 0;
    CHECK_EQ(tpar_lane_create(&down), 0);
    CHECK_EQ(tpar_lane_create(&up), 0);
    tpar_lane_adopt(&bell, fcntl(down.fd, F_DUPFD_CLOEXEC, 0));
    tpar_link_init(&l, &down, &up);
    tpar_decoder_init(&d, 0);
    CHECK_EQ(tpar_lane_rang(&bell, &seen), 0);
    for (int i = 0; i < 3; i++)
        CHECK_EQ(tpar_link_send(&l, TPAR_FRAME_JOB_JSON, 0, "x", 1, &tok[i]), 0);
    CHECK_EQ(tpar_link_take_back(&l), 0); /* no READY saying it answers */
    uint8_t pid[4] = {0};
    tpar_buf_frame(&b, TPAR_FRAME_READY, TPAR_READY_TAKEBACK, pid, 4);
    CHECK_EQ(tpar_link_feed(&l, b.data, b.len, &ev), (ptrdiff_t)b.len);
    b.len = 0;
    for (int i = 0; i < 3; i++) /* the jobs, as the worker reads them */
        CHECK_EQ(next_frame(&l, &d, &f), 1);
    CHECK_EQ(tpar_link_take_back(&l), 1);
    CHECK_EQ(tpar_link_take_back(&l), 0); /* one at a time */
    CHECK_EQ(tpar_lane_rang(&bell, &seen), 0); /* not before it is written */
    CHECK_EQ(next_frame(&l, &d, &f), 1);
    CHECK_EQ(f.kind, TPAR_FRAME_TAKEBACK);
    CHECK_EQ(tpar_takeback_parse(&f, &n), 0);
    CHECK_EQ(n, 3);
    CHECK_EQ(tpar_lane_rang(&bell, &seen), 1); /* rung once it is in the pipe */
    /* Jobs 1 and 2 never started; job 0's RESULT comes after. */
    tpar_buf_giveback(&b, 1, 3);
    CHECK_EQ(tpar_link_feed(&l, b.data, b.len, &ev), (ptrdiff_t)b.len);
    b.len = 0;
    CHECK_EQ(ev.type, TPAR_LINK_GIVEBACK);
    CHECK_EQ(ev.count, 2);
    CHECK(tpar_link_take_newest(&l) == &tok[2]);
    CHECK(tpar_link_take_newest(&l) == &tok[1]);
    CHECK_EQ(tpar_link_inflight(&l), 1);
    CHECK_EQ(tpar_link_job_number(&l, 0), 0);
    /* A job sent now is number 3: the numbering goes on. */
    CHECK_EQ(tpar_link_send(&l, TPAR_FRAME_JOB_JSON, 0, "x", 1, &tok[3]), 0);
    CHECK_EQ(tpar_link_job_number(&l, 1), 3);
    /* A GIVEBACK nobody asked for is a protocol error. */
    tpar_buf_giveback(&b, 4, 4);
    CHECK_EQ(tpar_link_feed(&l, b.data, b.len, &ev), TPAR_EPROTO);
    CHECK(strstr(l.error, "GIVEBACK"));
    tpar_buf_free(&b);
    tpar_decoder_free(&d);
    tpar_link_free(&l);
    tpar_lane_close(&bell);
    tpar_lane_close(&down);
    tpar_lane_close(&up);
}

int main(void)
{
    RUN(test_small_job_goes_inline);
    RUN(test_large_job_takes_the_free_lane);
    RUN(test_lent_payload_is_copied_only_where_unwritten);
    RUN(test_no_lanes_means_inline);
    RUN(test_events_in_order_bytewise);
    RUN(test_protocol_errors);
    RUN(test_result_in_the_up_lane);
    RUN(test_depth_and_taking_back);
    RUN(test_take_back_and_giveback);
    return CHECK_DONE();
}
