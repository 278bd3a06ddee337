/* Take-back on the real tpar-worker (argv[1]): jobs queued behind a running
 * one are given back at once, exactly those, and never run; the numbering
 * goes on across a take-back; a wrong count is a protocol error; and the
 * progress words in the up lane tell, after a death, which job was
 * running. */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "tpar.h"

static char *worker;

typedef struct {
    tpar_decoder d;
    uint8_t b[4096];
    size_t off, n;
} reader;

/* The next frame (5 s limit); its payload is copied into out (NUL-ended).
 * Returns its kind, or -errno. */
static int next_frame(tpar_proc *p, reader *r, char *out, size_t cap, size_t *len)
{
    tpar_frame f;
    for (;;) {
        while (r->off < r->n) {
            int got;
            ptrdiff_t used = tpar_decoder_feed(&r->d, r->b + r->off, r->n - r->off, &f, &got);
            if (used < 0)
                return (int)used;
            r->off += (size_t)used;
            if (got) {
                size_t k = f.len < cap - 1 ? f.len : cap - 1;
                memcpy(out, f.payload, k);
                out[k] = 0;
                *len = f.len;
                return f.kind;
            }
        }
        struct pollfd pfd = {.fd = p->from_fd, .events = POLLIN};
        if (poll(&pfd, 1, 5000) != 1)
            return -ETIMEDOUT;
        ssize_t n = read(p->from_fd, r->b, sizeof r->b);
        if (n <= 0)
            return n == 0 ? -EPIPE : -errno;
        r->off = 0;
        r->n = (size_t)n;
    }
}

static void add_job(tpar_buf *b, const char *fn, const char *args)
{
    tpar_buf job = {0};
    tpar_buf_append(&job, fn, strlen(fn) + 1);
    tpar_buf_append(&job, args, strlen(args) + 1);
    CHECK_EQ(tpar_buf_frame(b, TPAR_FRAME_JOB_JSON, 0, job.data, job.len), 0);
    tpar_buf_free(&job);
}

static void send_buf(tpar_proc *p, tpar_buf *b)
{
    CHECK_EQ(write(p->to_fd, b->data, b->len), (ssize_t)b->len);
    b->len = 0;
}

static int start(tpar_proc *p, reader *r)
{
    char *argv[] = {worker, "--spin-us", "0", NULL};
    char buf[64];
    size_t len;
    memset(r, 0, sizeof *r);
    tpar_decoder_init(&r->d, 1 << 20);
    if (tpar_proc_spawn(p, argv, NULL) < 0)
        return -1;
    tpar_frame ready;
    int kind = next_frame(p, r, buf, sizeof buf, &len);
    CHECK_EQ(kind, TPAR_FRAME_READY);
    (void)ready;
    return 0;
}

/* Expects a RESULT whose body (after the duration) is want. */
static void expect_result(tpar_proc *p, reader *r, const char *want)
{
    char out[256];
    size_t len;
    CHECK_EQ(next_frame(p, r, out, sizeof out, &len), TPAR_FRAME_RESULT);
    CHECK(len >= 8 && strcmp(out + 8, want) == 0);
    if (len < 8 || strcmp(out + 8, want) != 0)
        fprintf(stderr, "  result %s, wanted %s\n", len >= 8 ? out + 8 : "(short)", want);
}

static void expect_giveback(tpar_proc *p, reader *r, uint64_t from, uint64_t to)
{
    char out[64];
    size_t len;
    CHECK_EQ(next_frame(p, r, out, sizeof out, &len), TPAR_FRAME_GIVEBACK);
    tpar_frame f = {.kind = TPAR_FRAME_GIVEBACK, .len = (uint32_t)len,
                    .payload = (const uint8_t *)out};
    uint64_t a = 99, z = 99;
    CHECK_EQ(tpar_giveback_parse(&f, &a, &z), 0);
    CHECK_EQ(a, from);
    CHECK_EQ(z, to);
}

static void finish(tpar_proc *p, reader *r, int want_code)
{
    close(p->to_fd);
    p->to_fd = -1;
    CHECK_EQ(tpar_proc_reap(p, 1), 0);
    CHECK(WIFEXITED(p->status) && WEXITSTATUS(p->status) == want_code);
    tpar_proc_close(p);
    tpar_decoder_free(&r->d);
}

/* Waits (up to 20 s) until the worker's progress says it started n jobs:
 * a fixed sleep is too short under load. */
static void wait_started(tpar_proc *p, uint64_t n)
{
    uint64_t s = 0, f = 0;
    for (int i = 0; i < 2000; i++) {
        if (tpar_lane_progress_get(&p->up, &s, &f) == 0 && s >= n)
            return;
        usleep(10 * 1000);
    }
    CHECK_EQ(s, n);
}

/* Five jobs behind one that sleeps: the take-back is answered while it
 * sleeps (before its result), gives back exactly jobs 1..5, and none of
 * them runs; a job sent after is number 6 and runs. */
static void test_behind_a_running_job(void)
{
    tpar_proc p;
    reader r;
    tpar_buf b = {0};
    if (start(&p, &r) < 0) {
        CHECK(0);
        return;
    }
    add_job(&b, "time:sleep", "[1.5]");
    for (int i = 1; i <= 5; i++)
        add_job(&b, "operator:add", "[1, 1]");
    send_buf(&p, &b);
    wait_started(&p, 1); /* job 0 sleeps */
    uint64_t s = 0, f = 9;
    CHECK_EQ(tpar_lane_progress_get(&p.up, &s, &f), 0);
    CHECK_EQ(s, 1);
    CHECK_EQ(f, 0);
    CHECK_EQ(tpar_buf_takeback(&b, 6), 0);
    send_buf(&p, &b);
    /* Before the sleep's result: answered while it runs (after it, the
     * result would come first). */
    expect_giveback(&p, &r, 1, 6);
    expect_result(&p, &r, "null");
    add_job(&b, "operator:add", "[20, 1]");
    send_buf(&p, &b);
    expect_result(&p, &r, "21"); /* and no result for jobs 1..5 before it */
    CHECK_EQ(tpar_lane_progress_get(&p.up, &s, &f), 0);
    CHECK_EQ(s, 7);
    CHECK_EQ(f, 7);
    /* Nothing queued: an empty give-back. */
    CHECK_EQ(tpar_buf_takeback(&b, 7), 0);
    send_buf(&p, &b);
    expect_giveback(&p, &r, 7, 7);
    finish(&p, &r, 0);
    tpar_buf_free(&b);
}

/* Two take-backs behind one running job: the second gives back only the
 * jobs sent since the first (from = the first one's to), never a job twice;
 * the jobs given back never run, the one sent after both does. */
static void test_two_in_a_row(void)
{
    tpar_proc p;
    reader r;
    tpar_buf b = {0};
    if (start(&p, &r) < 0) {
        CHECK(0);
        return;
    }
    add_job(&b, "time:sleep", "[1.5]");
    for (int i = 1; i <= 3; i++)
        add_job(&b, "os:_exit", "[9]");
    send_buf(&p, &b);
    wait_started(&p, 1);
    CHECK_EQ(tpar_buf_takeback(&b, 4), 0);
    send_buf(&p, &b);
    expect_giveback(&p, &r, 1, 4);
    add_job(&b, "os:_exit", "[9]");
    add_job(&b, "os:_exit", "[9]");
    CHECK_EQ(tpar_buf_takeback(&b, 6), 0);
    send_buf(&p, &b);
    expect_giveback(&p, &r, 4, 6);
    expect_result(&p, &r, "null");
    add_job(&b, "operator:add", "[5, 1]");
    send_buf(&p, &b);
    expect_result(&p, &r, "6");
    finish(&p, &r, 0); /* no job given back ran (they would exit 9) */
    tpar_buf_free(&b);
}

/* Jobs and the take-back in one write: the worker reads them together and
 * gives every job back before starting any. */
static void test_before_any_started(void)
{
    tpar_proc p;
    reader r;
    tpar_buf b = {0};
    if (start(&p, &r) < 0) {
        CHECK(0);
        return;
    }
    for (int i = 0; i < 4; i++)
        add_job(&b, "os:_exit", "[9]");
    CHECK_EQ(tpar_buf_takeback(&b, 4), 0);
    add_job(&b, "operator:add", "[2, 1]");
    send_buf(&p, &b);
    expect_giveback(&p, &r, 0, 4);
    expect_result(&p, &r, "3");
    finish(&p, &r, 0); /* no job killed it */
    tpar_buf_free(&b);
}

/* Short jobs the worker has already read in one batch: without the
 * doorbell it would run them all before it reads the TAKEBACK.  With it,
 * the TAKEBACK overtakes the batch; exactly the jobs before `from` get a
 * result. */
static void test_doorbell_overtakes_a_batch(void)
{
    tpar_proc p;
    reader r;
    tpar_buf b = {0};
    if (start(&p, &r) < 0) {
        CHECK(0);
        return;
    }
    enum { N = 20000 };
    for (int i = 0; i < N; i++) /* a few µs each: the flusher never wakes */
        add_job(&b, "time:sleep", "[0]");
    send_buf(&p, &b);
    usleep(5 * 1000);
    CHECK_EQ(tpar_buf_takeback(&b, N), 0);
    send_buf(&p, &b);
    CHECK_EQ(tpar_lane_ring(&p.down), 0);
    char out[64];
    size_t len;
    int k, results = 0, gave = 0;
    uint64_t from = 0, to = 0;
    while ((k = next_frame(&p, &r, out, sizeof out, &len)) > 0) {
        if (k == TPAR_FRAME_RESULT) {
            results++;
        } else if (k == TPAR_FRAME_GIVEBACK) {
            tpar_frame f = {.kind = (uint8_t)k, .len = (uint32_t)len,
                            .payload = (const uint8_t *)out};
            CHECK_EQ(tpar_giveback_parse(&f, &from, &to), 0);
            gave = 1;
            add_job(&b, "operator:add", "[1, 1]"); /* a marker: number N */
            send_buf(&p, &b);
        }
        if (k == TPAR_FRAME_RESULT && gave && strcmp(out + 8, "2") == 0)
            break;
    }
    CHECK(gave);
    CHECK_EQ(to, N);
    CHECK(from < N / 2); /* overtook most of the batch */
    if (getenv("SHOW") || from >= N / 2)
        fprintf(stderr, "  given back from %llu\n", (unsigned long long)from);
    CHECK_EQ(results, (int)from + 1); /* the jobs before it, and the marker */
    finish(&p, &r, 0);
    tpar_buf_free(&b);
}

/* A count the worker does not share is a protocol error (exit 71). */
static void test_wrong_count(void)
{
    tpar_proc p;
    reader r;
    tpar_buf b = {0};
    if (start(&p, &r) < 0) {
        CHECK(0);
        return;
    }
    add_job(&b, "operator:add", "[2, 1]");
    CHECK_EQ(tpar_buf_takeback(&b, 2), 0);
    send_buf(&p, &b);
    char out[64];
    size_t len;
    int k;
    while ((k = next_frame(&p, &r, out, sizeof out, &len)) > 0)
        CHECK(k != TPAR_FRAME_GIVEBACK);
    finish(&p, &r, 71);
    tpar_buf_free(&b);
}

/* A death: the progress words say job 1 was running, job 0 had finished
 * (its result may be lost) and job 2 never started. */
static void test_progress_after_death(void)
{
    tpar_proc p;
    reader r;
    tpar_buf b = {0};
    if (start(&p, &r) < 0) {
        CHECK(0);
        return;
    }
    add_job(&b, "operator:add", "[2, 1]");
    add_job(&b, "os:_exit", "[5]");
    add_job(&b, "operator:add", "[3, 1]");
    send_buf(&p, &b);
    char out[64];
    size_t len;
    while (next_frame(&p, &r, out, sizeof out, &len) > 0)
        ;
    uint64_t s = 0, f = 0;
    CHECK_EQ(tpar_lane_progress_get(&p.up, &s, &f), 0);
    CHECK_EQ(s, 2);
    CHECK_EQ(f, 1);
    finish(&p, &r, 5);
    tpar_buf_free(&b);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: test_takeback TPAR_WORKER\n");
        return 2;
    }
    worker = argv[1];
    signal(SIGPIPE, SIG_IGN);
    RUN(test_behind_a_running_job);
    RUN(test_two_in_a_row);
    RUN(test_before_any_started);
    RUN(test_doorbell_overtakes_a_batch);
    RUN(test_wrong_count);
    RUN(test_progress_after_death);
    return CHECK_DONE();
}
