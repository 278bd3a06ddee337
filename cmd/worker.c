/* The worker pool of the stream engine: spawning, pipelined dispatch,
 * reading results, timeouts, idle exit, death and reaping.
 *
 * Each worker answers its jobs strictly in order, so the parent keeps
 * several in flight per worker (a pipeline) and writes them in batches:
 * that is what lets a single parent feed hundreds of thousands of tiny jobs
 * per second.  The depth adapts to the measured job cost so that about
 * TARGET_QUEUE seconds of work wait in each worker; slow jobs get depth 1. */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "engine.h"

#define TARGET_QUEUE 0.0015   /* seconds of queued work per worker */
#define JOB_OVERHEAD 2e-6     /* per-job cost in a worker beyond the call */
#define READ_CHUNK (256 * 1024)
#define SHORT_TIMEOUT 0.01    /* seconds: shorter timeouts run alone */
#define ALONE_GAP 0.0002      /* seconds: see head_was_alone */
#define STEAL_MIN 0.002       /* seconds: see steal */

struct pool P;

enum { T_NONE, T_TIMEOUT, T_IDLE, T_REAP };

static void on_readable(uv_poll_t *h, int status, int events);
static void on_writable(uv_poll_t *h, int status, int events);
static void on_timer(uv_timer_t *t);
static void worker_eof(struct worker *w);

static struct job *head(struct worker *w)
{
    return tpar_link_job(&w->link, 0);
}

/* The invariants of a worker's state machine (engine.h): checked at each
 * transition, in every build that keeps asserts (meson's default). */
static void worker_check(const struct worker *w)
{
    unsigned n = w->link.njobs;
    assert(w->state >= W_STARTING && w->state <= W_DEAD);
    assert(w->state != W_STARTING || n == 0);
    assert(n == 0 || w->link.ready);
    assert(!w->isolated || n <= 1);
    assert(w->timer_mode != T_TIMEOUT || n > 0);
    assert(w->timer_mode != T_IDLE || n == 0);
    assert((w->timer_mode == T_REAP) <= (w->state == W_DEAD));
    assert(w->state != W_DEAD || w->timer_mode == T_REAP || w->timer_mode == T_NONE);
    assert(w->proc.to_fd >= 0 || w->state >= W_CLOSING);
    assert(w->state != W_DEAD || (w->proc.from_fd < 0 && w->proc.to_fd < 0 && w->wpoll_closed));
    assert(!w->writing || !w->wpoll_closed);
    assert(!w->killed_for || w->state >= W_CLOSING);
    (void)n;
}

static int honours_flush(const struct worker *w)
{
    return (w->link.ready_flags & TPAR_READY_FLUSH_FIRST) != 0;
}

static int depth(void)
{
    if (P.cost <= 0)
        return 1;
    double d = TARGET_QUEUE / (P.cost + JOB_OVERHEAD);
    return d < 1 ? 1 : d > MAX_DEPTH ? MAX_DEPTH : (int)d;
}

/* ------------------------------------------------------------- timers */

static void timer_set(struct worker *w, int mode, double secs)
{
    w->timer_mode = mode;
    uint64_t ms = secs <= 0 ? 0 : (uint64_t)(secs * 1000) + 1;
    uv_timer_start(&w->timer, on_timer, ms, 0);
}

static void timer_clear(struct worker *w)
{
    if (w->timer_mode != T_NONE) {
        uv_timer_stop(&w->timer);
        w->timer_mode = T_NONE;
    }
}

/* The head job just started: (re)arm its timeout; lazily, so a stream of
 * fast jobs does not touch the timer heap for each one.  A timer already
 * armed for an earlier job is kept when it fires no later than this job's
 * deadline (on_timeout_check then moves it on); one that would fire later
 * is re-armed, or a short job timeout behind a long one would go unseen. */
static void head_started(struct worker *w, double now)
{
    struct job *j = head(w);
    if (!j)
        return;
    j->start = now;
    if (j->timeout > 0 && (w->timer_mode != T_TIMEOUT ||
                           uv_timer_get_due_in(&w->timer) > (uint64_t)(j->timeout * 1000) + 1))
        timer_set(w, T_TIMEOUT, j->timeout);
    else if (j->timeout <= 0 && w->timer_mode == T_IDLE)
        timer_clear(w);
}

static void became_idle(struct worker *w)
{
    w->stamp = ++P.stamp;
    /* A remote worker is a slot of the allocation: it stays while the run
     * lasts (once shut down, its supervisor would not start another). */
    if (RUN.stop == STOP_NONE && w->state == W_READY && !w->remote)
        timer_set(w, T_IDLE, P.o->idle_timeout);
    else
        timer_clear(w);
    worker_check(w);
}

static void kill_worker(struct worker *w, int why)
{
    if (w->state == W_DEAD)
        return;
    if (!w->killed_for)
        w->killed_for = why;
    w->state = W_CLOSING;
    if (w->remote) {
        /* We cannot signal it: dropping the connection makes its
         * supervisor SIGKILL it (and what its job started), and we read
         * the end of the connection at once. */
        if (w->proc.from_fd >= 0)
            shutdown(w->proc.from_fd, SHUT_RDWR);
        return;
    }
    tpar_proc_kill(&w->proc, SIGKILL);
    worker_check(w);
}

static void on_timeout_check(struct worker *w)
{
    struct job *j = head(w);
    w->timer_mode = T_NONE;
    if (!j || j->timeout <= 0)
        return;
    double left = j->start + j->timeout - tpar_now();
    if (left > 0) {
        timer_set(w, T_TIMEOUT, left);
        return;
    }
    kill_worker(w, ST_TIMEOUT);
}

/* Closing our end of its pipe tells a worker to finish and exit 0. */
static void close_wpoll(struct worker *w);

static void close_input(struct worker *w)
{
    if (w->remote) {
        /* A SHUTDOWN frame, not a close: its supervisor reads a close while
         * the worker lives as "kill it" (pyworker/connect.h). */
        if (!w->shutdown_sent && w->state != W_DEAD) {
            int rc = tpar_link_send(&w->link, TPAR_FRAME_SHUTDOWN, 0, NULL, 0, NULL);
            if (rc == -ENOMEM)
                cli_oom();
            w->shutdown_sent = rc == 0;
        }
        w->exit_expected = 1;
        if (w->state != W_DEAD)
            w->state = W_CLOSING;
        return;
    }
    if (w->proc.to_fd < 0)
        return;
    close_wpoll(w);
    close(w->proc.to_fd);
    w->proc.to_fd = -1;
    w->exit_expected = 1;
    if (w->state != W_DEAD)
        w->state = W_CLOSING;
    worker_check(w);
}

static void finalize(struct worker *w);

static void try_reap(struct worker *w)
{
    int rc = tpar_proc_reap(&w->proc, 0);
    if (rc == 0 || rc != -EAGAIN) {
        if (rc < 0) /* not ours any more: cannot happen, but never spin */
            w->proc.reaped = 1;
        finalize(w);
        return;
    }
    double waited = tpar_now() - w->reap_start;
    if (waited > 2.0) /* closed its pipes but lingers: end it */
        tpar_proc_kill(&w->proc, SIGKILL);
    timer_set(w, T_REAP, waited < 0.01 ? 0.001 : 0.01);
}

static void on_timer(uv_timer_t *t)
{
    struct worker *w = t->data;
    worker_check(w);
    int mode = w->timer_mode;
    w->timer_mode = T_NONE;
    if (mode == T_TIMEOUT)
        on_timeout_check(w);
    else if (mode == T_IDLE && w->link.njobs == 0 && w->state == W_READY)
        close_input(w);
    else if (mode == T_REAP)
        try_reap(w);
}

/* --------------------------------------------------------------- spawn */

static void handle_close_cb(uv_handle_t *h)
{
    struct worker *w = h->data;
    if (--w->open_handles == 0) {
        for (int i = 0; i < w->nproven; i++)
            free(w->proven[i]);
        tpar_link_free(&w->link);
        free(w);
    }
}

/* A worker killed by a signal before READY (the OOM killer, an operator,
 * its forkserver dying under it) is a broken start, not the user's fault:
 * another is started in its place.  Only MAX_FAILED_STARTS in a row, over
 * FAILED_STARTS_SECS at least, with no worker reaching READY between
 * them, end the run (on a loaded machine a start takes long, and a killer
 * that strikes often may get many in a row).  A failed --init (exit 70)
 * or a Python that cannot start (exit 72) ends it at once. */
#define MAX_FAILED_STARTS 64
#define FAILED_STARTS_SECS 10.0
#define START_RETRY_MS 10

static void on_start_retry(uv_timer_t *t)
{
} /* the loop's prepare callback dispatches, and so starts a worker */

/* Counts a broken start; 0 while under the bound (a retry is due). */
static int failed_start(const char *what)
{
    static uv_timer_t retry;
    if (P.failed_starts++ == 0)
        P.first_failed_start = tpar_now();
    if (P.failed_starts >= MAX_FAILED_STARTS &&
        tpar_now() - P.first_failed_start >= FAILED_STARTS_SECS) {
        run_fatal("workers keep dying before they start: %d in a row, the last %s",
                  P.failed_starts, what);
        return -1;
    }
    if (!retry.loop)
        uv_timer_init(P.loop, &retry);
    uv_timer_start(&retry, on_start_retry, START_RETRY_MS, 0);
    return 0;
}

/* A new worker process: spawned, or forked by the forkserver (started on
 * first use, and again if it died). */
static int start_proc(tpar_proc *p)
{
    if (!P.zargv)
        return tpar_proc_spawn(p, P.wargv, NULL);
    return tpar_zygote_spawn(&P.zygote, P.zargv, NULL, p);
}

/* Puts a worker whose fds are open into the pool. */
static void attach(struct worker *w)
{
    tpar_link_init(&w->link, &w->proc.down, &w->proc.up);
    uv_poll_init(P.loop, &w->rpoll, w->proc.from_fd);
    uv_poll_init(P.loop, &w->wpoll, w->proc.to_fd);
    uv_timer_init(P.loop, &w->timer);
    w->rpoll.data = w->wpoll.data = w->timer.data = w;
    w->open_handles = 3;
    uv_poll_start(&w->rpoll, UV_READABLE, on_readable);
    P.workers = xrealloc(P.workers, (size_t)(P.nworkers + 1) * sizeof *P.workers);
    P.workers[P.nworkers++] = w;
    P.started++;
}

static struct worker *spawn_worker(void)
{
    struct worker *w = xcalloc(1, sizeof *w);
    int rc = start_proc(&w->proc);
    if (rc == -ENOMEM)
        cli_oom();
    if (rc == -EPIPE && P.zargv && WIFSIGNALED(P.zygote.status)) {
        /* its forkserver was killed under it (twice), not a --preload
         * that failed (the zygote then exits 70): a broken start */
        free(w);
        failed_start("lost its forkserver");
        return NULL;
    }
    if (rc < 0) {
        free(w);
        if (P.zargv && rc == -EPIPE)
            run_fatal("the forkserver ended before it forked a worker%s",
                      P.o->preload ? " (did its --preload fail? see above)" : "");
        else
            run_fatal("cannot start the worker %s: %s", P.wargv[0], tpar_strerror(rc));
        return NULL;
    }
    attach(w);
    return w;
}

int pool_live_remote(void)
{
    int n = 0;
    for (int i = 0; i < P.nworkers; i++)
        n += P.workers[i]->remote && !P.workers[i]->shutdown_sent &&
             P.workers[i]->state <= W_READY;
    return n;
}

/* A remote worker: one socket, no lanes (its link sends every payload
 * inline), no process of ours. */
int pool_adopt_remote(int fd, const char *peer)
{
    struct worker *w = xcalloc(1, sizeof *w);
    int wfd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    if (wfd < 0) {
        free(w);
        close(fd);
        return -errno;
    }
    /* One socket, two fds: libuv polls each fd once, for one direction. */
    w->proc.from_fd = fd;
    w->proc.to_fd = wfd;
    w->proc.down = w->proc.up = (tpar_lane)TPAR_LANE_NONE;
    w->proc.reaped = 1; /* no process of ours: never signalled, never waited for */
    w->proc.pid = 0;    /* its pid on its node, once READY says it */
    w->remote = 1;
    snprintf(w->peer, sizeof w->peer, "%s", peer);
    int extra = pool_live_remote() >= P.o->jobs;
    attach(w);
    if (extra || RUN.stop != STOP_NONE)
        close_input(w); /* more workers than -j, or the run is ending */
    return 0;
}

/* ------------------------------------------------------------ dispatch */

static const char *job_fn(const struct job *j, size_t *n)
{
    const char *p = j->data + j->id_len;
    const char *nul = memchr(p, 0, j->payload_len);
    *n = nul ? (size_t)(nul - p) : j->payload_len;
    return p;
}

static int is_proven(const struct worker *w, const struct job *j)
{
    size_t n;
    const char *fn = job_fn(j, &n);
    for (int i = 0; i < w->nproven; i++)
        if (w->proven_len[i] == n && memcmp(w->proven[i], fn, n) == 0)
            return 1;
    return 0;
}

static void prove(struct worker *w, const struct job *j)
{
    if (w->nproven == 16 || is_proven(w, j))
        return;
    size_t n;
    const char *fn = job_fn(j, &n);
    char *copy = malloc(n ? n : 1);
    if (!copy) /* a cache not filled: the job asks for a flush, no more */
        return;
    memcpy(copy, fn, n);
    w->proven[w->nproven] = copy;
    w->proven_len[w->nproven++] = (uint32_t)n;
}

/* A job asks its worker to write the results it holds before the job
 * starts when its fn, or the fn of the job queued just before it, has not
 * yet returned on this worker.  Then a fn that kills its worker the first
 * times it runs there is found exactly: it ran with no unwritten result
 * before it, and, had it finished, its own result would have been written
 * before the next job started. */
static int wants_flush_first(const struct worker *w, const struct job *j)
{
    unsigned n = w->link.njobs;
    if (!honours_flush(w) || !n)
        return 0;
    return !is_proven(w, j) || !is_proven(w, tpar_link_job(&w->link, n - 1));
}

/* Queues j on w: through its down lane when it is large and the lane is
 * free (the link decides).  Out of memory stops the run; j goes back to
 * the queue, where the stop cancels it. */
static void send_job(struct worker *w, struct job *j, double now)
{
    j->flush_first = wants_flush_first(w, j);
    j->sent_alone = w->link.njobs == 0;
    j->wseq = w->link.sent; /* its job frame's number on w */
    int rc = tpar_link_send(&w->link, TPAR_FRAME_JOB_JSON,
                            j->flush_first ? TPAR_JOB_FLUSH_FIRST : 0, j->data + j->id_len,
                            j->payload_len, j);
    if (rc == -ENOMEM)
        cli_oom();
    if (rc < 0) {
        jobq_push_front(&J.pending, j);
        run_fatal("cannot send a job to worker %d: %s", (int)w->proc.pid, tpar_strerror(rc));
        return;
    }
    j->sent = now;
    w->sent++;
    P.inflight++;
    if (w->link.njobs == 1)
        head_started(w, now);
    worker_check(w);
}

static int can_take(struct worker *w)
{
    /* Jobs given back do not count: the worker retires after max_tasks
     * jobs it ran, and would otherwise idle, taking nothing, forever. */
    return w->state == W_READY &&
           (!P.o->max_tasks || w->sent - w->given_back < P.o->max_tasks);
}

/* Tops a worker up to the pipeline depth once it has drained to half. */
static uv_timer_t wake; /* brings the loop back for a deferred fill */

static void on_wake(uv_timer_t *t)
{
}

/* A job sent alone to an idle worker gets ALONE_GAP to itself before jobs
 * queue behind it: then, if it kills its worker, it is known to be the one
 * (see head_was_alone).  Only slow jobs and the very first ones wait. */
static int defer_fill(struct worker *w, double now)
{
    const struct job *h = w->link.njobs == 1 ? head(w) : NULL;
    if (!h || !h->sent_alone || now - h->sent >= ALONE_GAP)
        return 0;
    if (!wake.loop)
        uv_timer_init(P.loop, &wake);
    if (!uv_is_active((uv_handle_t *)&wake))
        uv_timer_start(&wake, on_wake, 1, 0);
    return 1;
}

/* w may be sent jobs now: not while it holds an isolated job, nor while a
 * TAKEBACK waits for its GIVEBACK (its RESULTs may all have come first). */
static int can_fill(struct worker *w)
{
    return can_take(w) && !w->isolated && !w->link.takeback_pending;
}

static void fill(struct worker *w, int d, double now)
{
    if (!can_fill(w) || w->link.njobs > (unsigned)d / 2 || defer_fill(w, now))
        return;
    while (J.pending.n && w->link.njobs < (unsigned)d && can_take(w)) {
        /* A job with a very short timeout runs alone too: its clock then
         * measures it and nothing else.  Longer ones need not: the worker
         * writes earlier results once a job has run 200 us to 1.2 ms, so the head of a
         * worker whose clock ran out is the job that is running. */
        if (J.pending.head->isolate ||
            (J.pending.head->timeout > 0 && J.pending.head->timeout < SHORT_TIMEOUT)) {
            if (w->link.njobs == 0) {
                send_job(w, jobq_pop(&J.pending), now);
                w->isolated = 1;
            }
            return;
        }
        send_job(w, jobq_pop(&J.pending), now);
        if (w->sent == 1) /* a fresh worker's first job goes alone */
            return;
    }
}

/* The idle worker used last (LIFO: the others stay idle and time out),
 * among those fill() would send a job to. */
static struct worker *idle_worker(void)
{
    struct worker *best = NULL;
    for (int i = 0; i < P.nworkers; i++) {
        struct worker *w = P.workers[i];
        if (w->link.njobs == 0 && can_fill(w) && (!best || w->stamp > best->stamp))
            best = w;
    }
    return best;
}

/* ----------------------------------------------------------- take-back */

/* Asks w for the jobs it holds but has not started (docs/protocol.md,
 * "Taking back queued jobs"); its GIVEBACK says which.  Nothing more is
 * sent to it until then. */
static int take_back(struct worker *w)
{
    if (w->state == W_DEAD || w->proc.to_fd < 0)
        return 0;
    int rc = tpar_link_take_back(&w->link); /* the doorbell rings once it is written */
    if (rc == -ENOMEM)
        cli_oom();
    return rc;
}

static void cancel_unstarted(struct job *j)
{
    static const char body[] =
        "{\"type\":\"Cancelled\",\"message\":\"job cancelled before it started\","
        "\"traceback\":null}";
    job_attempt_done(j, ST_CANCELLED, body, sizeof body - 1, 0, 0);
}

/* A job that never started: back to the queue, or cancelled when stopping. */
static void never_started(struct job *j)
{
    if (RUN.stop != STOP_NONE)
        cancel_unstarted(j);
    else
        jobq_push_front(&J.pending, j);
}

/* The newest ev->count jobs in flight never started: back to the queue,
 * or cancelled when stopping. */
static void on_giveback(struct worker *w, const tpar_link_event *ev)
{
    for (unsigned i = 0; i < ev->count; i++) {
        P.inflight--;
        w->given_back++;
        never_started(tpar_link_take_newest(&w->link));
    }
    if (!w->link.njobs) {
        w->isolated = 0;
        became_idle(w);
    }
}

void pool_take_back_all(void)
{
    for (int i = 0; i < P.nworkers; i++)
        take_back(P.workers[i]);
}

/* Work stealing.  The depth suits a steady stream; when the jobs change
 * (instant ones, then slow ones), a worker may hold several queued behind
 * a job that runs far longer than the estimate, while another worker
 * idles (or could be started).  Once the head has run twice the estimate
 * (at least STEAL_MIN), take its queue back: the jobs go to the front of
 * the queue and on to the idle workers, and the estimate becomes at least
 * what the head has run, so the depth shrinks at once. */
static uv_timer_t steal_timer;

static void on_steal_timer(uv_timer_t *t)
{ /* the loop's prepare step dispatches */
}

static void steal(double now)
{
    int idle = 0, live = 0;
    if (J.pending.n || RUN.stop != STOP_NONE)
        return;
    for (int i = 0; i < P.nworkers; i++) {
        struct worker *w = P.workers[i];
        live += w->state <= W_READY;
        idle |= w->link.njobs == 0 && can_fill(w);
    }
    if (!idle && live >= P.o->jobs)
        return;
    double est = 2 * P.cost > STEAL_MIN ? 2 * P.cost : STEAL_MIN, due = 0;
    for (int i = 0; i < P.nworkers; i++) {
        struct worker *w = P.workers[i];
        if (w->link.njobs < 2 || w->state != W_READY || w->link.takeback_pending ||
            !(w->link.ready_flags & TPAR_READY_TAKEBACK))
            continue;
        double ran = now - head(w)->start;
        if (ran >= est) {
            if (take_back(w) && ran > P.cost)
                P.cost = ran;
        } else if (!due || head(w)->start + est < due) {
            due = head(w)->start + est;
        }
    }
    if (due) {
        if (!steal_timer.loop)
            uv_timer_init(P.loop, &steal_timer);
        uv_timer_start(&steal_timer, on_steal_timer, (uint64_t)((due - now) * 1000) + 1, 0);
    }
}

void pool_dispatch(void)
{
    if (RUN.stop >= STOP_NOW)
        return;
    if (!J.pending.n) {
        steal(tpar_now());
        return;
    }
    double now = tpar_now();
    int d = depth();
    for (int i = 0; i < P.nworkers && J.pending.n; i++)
        if (P.workers[i]->link.njobs)
            fill(P.workers[i], d, now);
    struct worker *w;
    while (J.pending.n && (w = idle_worker())) {
        size_t before = J.pending.n;
        fill(w, d, now);
        assert(J.pending.n < before); /* idle_worker chose one fill() fills */
        if (J.pending.n == before)
            break;
    }
    /* Lazy start: one more worker while jobs wait and none is free. */
    int starting = 0, live = 0;
    for (int i = 0; i < P.nworkers; i++) {
        starting += P.workers[i]->state == W_STARTING;
        live += P.workers[i]->state <= W_READY;
    }
    while (!P.remote && J.pending.n > (size_t)starting && live < P.o->jobs && !RUN.fatal) {
        if (!spawn_worker())
            return;
        starting++, live++;
    }
}

static int flush_worker(struct worker *w)
{
    const uint8_t *data;
    size_t len;
    while ((len = tpar_link_pending(&w->link, &data)) && w->proc.to_fd >= 0) {
        ssize_t n = write(w->proc.to_fd, data, len);
        if (n > 0) {
            tpar_link_written(&w->link, (size_t)n);
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN) {
            if (!w->writing)
                uv_poll_start(&w->wpoll, UV_WRITABLE, on_writable);
            w->writing = 1;
            return 0;
        }
        /* EPIPE: it died; its EOF on the other pipe tells the rest. */
        tpar_link_written(&w->link, len);
        break;
    }
    if (w->writing) {
        uv_poll_stop(&w->wpoll);
        w->writing = 0;
    }
    return 0;
}

void pool_flush(void)
{
    for (int i = 0; i < P.nworkers; i++)
        if (tpar_link_pending_bytes(&P.workers[i]->link))
            flush_worker(P.workers[i]);
}

static void on_writable(uv_poll_t *h, int status, int events)
{
    flush_worker(h->data);
}

/* ------------------------------------------------------------- results */

static void protocol_error(struct worker *w, const char *what)
{
    cli_warn("worker %d: protocol error (%s); killing it", (int)w->proc.pid, what);
    kill_worker(w, 0);
}

static void on_result(struct worker *w, const tpar_link_event *ev, double now)
{
    struct job *j = ev->job;
    if (!j) { /* a RETIRED notice with no job (the package's workers only) */
        w->exit_expected = 1;
        w->state = W_CLOSING;
        return;
    }
    P.inflight--;
    double dur = ev->duration;
    if (dur >= 0 && dur < 1e9)
        P.cost = P.cost > 0 ? 0.9 * P.cost + 0.1 * dur : dur;
    if (honours_flush(w) && w->nproven < 16)
        prove(w, j);
    if (ev->retiring) {
        w->exit_expected = 1;
        w->state = W_CLOSING;
    }
    /* The record copies the body out (of the up lane too). */
    job_attempt_done(j, ev->status == TPAR_RESULT_OK ? ST_OK : ST_ERROR,
                     (const char *)ev->body, ev->len, dur, w->proc.pid);
    if (ev->in_lane)
        tpar_link_lane_done(&w->link);
    if (w->link.njobs) {
        head_started(w, now);
    } else {
        w->isolated = 0;
        became_idle(w);
    }
}

static void on_event(struct worker *w, const tpar_link_event *ev, double now)
{
    if (ev->type == TPAR_LINK_RESULT) {
        on_result(w, ev, now);
    } else if (ev->type == TPAR_LINK_GIVEBACK) {
        on_giveback(w, ev);
    } else if (ev->type == TPAR_LINK_EXTRA) { /* for the job whose result comes next */
        if (ev->status == TPAR_EXTRA_STATS || ev->status == TPAR_EXTRA_OUTPUT)
            job_set_extra(ev->job, ev->status, ev->body, ev->len);
    } else if (ev->type == TPAR_LINK_READY && w->state == W_STARTING) {
        if (w->remote && ev->pid > 0) /* its pid, on its node */
            w->proc.pid = (pid_t)ev->pid;
        w->state = W_READY;
        P.failed_starts = 0;
        became_idle(w);
    }
    worker_check(w);
}

static void check_rss(struct worker *w)
{
    char path[64], buf[128];
    snprintf(path, sizeof path, "/proc/%d/statm", (int)w->proc.pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return;
    buf[n] = 0;
    unsigned long size, rss;
    if (sscanf(buf, "%lu %lu", &size, &rss) != 2)
        return;
    if ((uint64_t)rss * (uint64_t)sysconf(_SC_PAGESIZE) > P.o->max_rss) {
        /* Finish what it holds, take nothing more, then exit. */
        w->state = W_CLOSING;
        w->exit_expected = 1;
        if (!w->link.njobs)
            close_input(w);
    }
}

static void on_readable(uv_poll_t *h, int status, int events)
{
    static uint8_t buf[READ_CHUNK];
    struct worker *w = h->data;
    double now = tpar_now();
    for (int rounds = 0; rounds < 4 && w->state != W_DEAD; rounds++) {
        ssize_t n = read(w->proc.from_fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            break;
        if (n <= 0) {
            worker_eof(w);
            return;
        }
        for (size_t off = 0; off < (size_t)n && w->state != W_DEAD;) {
            tpar_link_event ev;
            ptrdiff_t used = tpar_link_feed(&w->link, buf + off, (size_t)n - off, &ev);
            if (used == -ENOMEM)
                cli_oom();
            if (used < 0) {
                protocol_error(w, used == TPAR_EPROTO ? w->link.error
                                                      : tpar_strerror((int)used));
                return;
            }
            off += (size_t)used;
            if (ev.type != TPAR_LINK_NONE)
                on_event(w, &ev, now);
        }
        if ((size_t)n < sizeof buf)
            break;
    }
    if (P.o->max_rss && w->state == W_READY && !w->remote)
        check_rss(w);
    if (w->state == W_CLOSING && w->exit_expected && !w->link.njobs)
        close_input(w);
    worker_check(w);
}

/* ---------------------------------------------------------- death, reap */

static void close_wpoll(struct worker *w)
{
    if (w->wpoll_closed)
        return;
    if (w->writing)
        uv_poll_stop(&w->wpoll);
    w->writing = 0;
    w->wpoll_closed = 1;
    uv_close((uv_handle_t *)&w->wpoll, handle_close_cb);
}

static void worker_eof(struct worker *w)
{
    if (w->state == W_DEAD)
        return;
    timer_clear(w);
    /* Its progress outlives it in its up lane: read before the lane closes. */
    if (tpar_link_progress(&w->link, &w->prog_started, &w->prog_finished) == 0)
        w->prog_valid = 1;
    uv_close((uv_handle_t *)&w->rpoll, handle_close_cb);
    close_wpoll(w);
    tpar_proc_close(&w->proc); /* after uv_close: libuv no longer polls them */
    w->state = W_DEAD;
    w->reap_start = tpar_now();
    worker_check(w);
    try_reap(w);
}

static const char *start_hint(int status)
{
    if (WIFEXITED(status) && WEXITSTATUS(status) == 70)
        return " (its --init failed)";
    if (WIFEXITED(status) && WEXITSTATUS(status) == 72)
        return " (Python could not start)";
    return "";
}

static void error_body(tpar_buf *b, const char *type, const char *msg)
{
    b->len = 0;
    OUT_LIT(b, "{\"type\":");
    out_jstr(b, type, strlen(type));
    OUT_LIT(b, ",\"message\":");
    out_jstr(b, msg, strlen(msg));
    OUT_LIT(b, ",\"traceback\":null}");
}

static void end_head(struct worker *w, struct job *j, const char *desc)
{
    static tpar_buf b;
    char msg[256];
    int st = w->killed_for ? w->killed_for : ST_BROKEN;
    double dur = tpar_now() - j->start;
    if (st == ST_TIMEOUT) {
        snprintf(msg, sizeof msg, "job timed out after %g s; its worker %d was killed",
                 j->timeout, (int)w->proc.pid);
        error_body(&b, "TimeoutError", msg);
    } else if (st == ST_CANCELLED) {
        snprintf(msg, sizeof msg, "job cancelled: %s; its worker %d was killed",
                 RUN.fatal ? "tpar stopped on an error" : RUN.signo ? "tpar was interrupted"
                                                               : "--halt",
                 (int)w->proc.pid);
        error_body(&b, "Cancelled", msg);
    } else {
        snprintf(msg, sizeof msg, "worker %d %s", (int)w->proc.pid, desc);
        error_body(&b, "BrokenWorkerError", msg);
    }
    /* How the worker ended, for the record and the joblog. */
    int ws = w->proc.status;
    if (w->proc.reaped && (WIFEXITED(ws) || WIFSIGNALED(ws))) {
        b.len--; /* the closing brace */
        if (WIFEXITED(ws))
            OUT_LIT(&b, ",\"exit\":");
        else
            OUT_LIT(&b, ",\"signal\":");
        out_u64(&b, (uint64_t)(WIFEXITED(ws) ? WEXITSTATUS(ws) : WTERMSIG(ws)));
        OUT_LIT(&b, "}");
    }
    job_attempt_done(j, st, (const char *)b.data, b.len, dur, w->proc.pid);
}

/* The head was sent to an idle worker, and the next job only well after
 * (the worker reads a lone job at once): then the worker read the head
 * alone, so no finished result can have been held behind it. */
static int head_was_alone(struct worker *w)
{
    const struct job *h = tpar_link_job(&w->link, 0), *n = tpar_link_job(&w->link, 1);
    if (n->flush_first) /* had h finished, its result was written before n */
        return 1;
    return h->sent_alone && n->sent - h->sent > ALONE_GAP;
}

/* With its progress (docs/protocol.md, "Progress") the worker said which
 * of its jobs ran: the one running at its death ends with the death's
 * status; those that ran to the end lost their result with it: they
 * count an attempt and run again (a success, not a failure: no retry is
 * used up), except the last of them when the worker died by itself
 * with nothing running: that one is blamed; those that never started go
 * back to the queue, counting nothing (cancelled when stopping).  Exact,
 * whatever the pipelining. */
static void settle_exact(struct worker *w, const char *desc)
{
    static tpar_buf b;
    char msg[256];
    struct job *j;
    while ((j = tpar_link_take_newest(&w->link))) {
        P.inflight--;
        if (j->wseq >= w->prog_started) {
            if (RUN.stop >= STOP_NOW)
                cancel_unstarted(j);
            else
                never_started(j);
        } else if (j->wseq >= w->prog_finished ||
                   (!w->killed_for && w->prog_started == w->prog_finished &&
                    j->wseq + 1 == w->prog_started)) {
            /* Running, or the last to end when the worker died by itself
             * with nothing running: a job that kills its worker after it
             * returned (a finalizer, a thread it left) would otherwise run
             * again forever, retries untouched. */
            end_head(w, j, desc);
        } else if (RUN.stop == STOP_NONE) {
            j->attempts++;
            jobq_push_front(&J.pending, j);
        } else { /* stopping: it is not run again */
            snprintf(msg, sizeof msg, "worker %d %s before it sent this job's result",
                     (int)w->proc.pid, desc);
            error_body(&b, "BrokenWorkerError", msg);
            job_attempt_done(j, ST_BROKEN, (const char *)b.data, b.len, 0, w->proc.pid);
        }
    }
}

/* With one job in flight, that job was running: it ends with the reason
 * the worker died.  With several, the first without a result was running
 * only if the worker had written every result it computed; it may hold a
 * few while it runs the next job, so blaming the first could blame an
 * innocent job.  Then every one of them goes back to the queue, without
 * counting an attempt, to run alone on a worker: the culprit dies again,
 * alone, and is blamed.  (When stopping, they are cancelled.) */
static void settle_ring(struct worker *w, const char *desc)
{
    tpar_link *l = &w->link;
    struct job *j;
    if (w->prog_valid) {
        settle_exact(w, desc);
        return;
    }
    if (l->njobs > 1 && RUN.stop < STOP_NOW && !l->retiring && w->killed_for != ST_TIMEOUT &&
        !head_was_alone(w)) {
        while ((j = tpar_link_take_newest(l))) {
            P.inflight--;
            j->isolate = 1;
            jobq_push_front(&J.pending, j);
        }
        return;
    }
    if (l->njobs && !l->retiring) {
        j = tpar_link_take_oldest(l);
        P.inflight--;
        end_head(w, j, desc);
    }
    while ((j = tpar_link_take_newest(l))) {
        P.inflight--;
        if (RUN.stop >= STOP_NOW) {
            static const char body[] =
                "{\"type\":\"Cancelled\",\"message\":\"job cancelled before it started\","
                "\"traceback\":null}";
            job_attempt_done(j, ST_CANCELLED, body, sizeof body - 1, 0, 0);
        } else {
            jobq_push_front(&J.pending, j);
        }
    }
}

static void finalize(struct worker *w)
{
    char desc[192];
    if (w->remote) /* its supervisor says more on its own stderr */
        snprintf(desc, sizeof desc, "on %s: its connection ended%s", w->peer,
                 w->killed_for ? "" : " (the worker died, or its node or launcher)");
    else
        tpar_describe_status(w->proc.status, desc, sizeof desc);
    for (int i = 0; i < P.nworkers; i++)
        if (P.workers[i] == w) {
            P.workers[i] = P.workers[--P.nworkers];
            break;
        }
    timer_clear(w);
    uv_close((uv_handle_t *)&w->timer, handle_close_cb);
    if (!w->link.ready && !w->killed_for && !(w->remote && w->exit_expected) &&
        RUN.stop < STOP_NOW && !RUN.fatal) {
        settle_ring(w, desc); /* no job is sent before READY: nothing to blame */
        if (!w->remote && WIFSIGNALED(w->proc.status)) {
            char what[256];
            snprintf(what, sizeof what, "worker %d %s", (int)w->proc.pid, desc);
            failed_start(what);
            return;
        }
        run_fatal("worker %d failed to start: %s%s", (int)w->proc.pid, desc,
                     start_hint(w->proc.status));
        return;
    }
    if (!w->link.njobs && !w->exit_expected && !w->killed_for && RUN.stop < STOP_NOW && !P.o->quiet)
        cli_warn("worker %d %s while idle", (int)w->proc.pid, desc);
    settle_ring(w, desc);
}

/* ------------------------------------------------------------- control */

void pool_close_idle(void)
{
    for (int i = 0; i < P.nworkers; i++) {
        struct worker *w = P.workers[i];
        if ((!w->link.njobs || w->remote) && w->state != W_DEAD &&
            (w->state != W_STARTING || w->remote))
            close_input(w); /* a remote one finishes its jobs, then exits */
        else if (w->state == W_STARTING)
            kill_worker(w, ST_CANCELLED);
    }
}

size_t pool_out_bytes(void)
{
    size_t n = 0;
    for (int i = 0; i < P.nworkers; i++)
        n += tpar_link_pending_bytes(&P.workers[i]->link);
    return n;
}

void pool_kill_all(int why)
{
    for (int i = 0; i < P.nworkers; i++)
        kill_worker(P.workers[i], why);
}

void pool_prestart(int n)
{
    if (P.remote)
        return;
    for (int i = 0; i < n && P.nworkers < P.o->jobs && !RUN.fatal; i++)
        if (!spawn_worker())
            return;
}
