/* The job loop: frames in, jobs run, results out.  The JSON path (the
 * CLI's) stays in C from frame to frame: cached function lookup, the json
 * module's C scanner for the arguments, our own encoder for the value.
 * The pickle path (the Trio package's) and the cold paths (imports, error
 * records) are Python, in _tpar_worker.py, embedded at build time. */
#include "loop.h"

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "connect.h"
#include "internal.h"
#include "jsonenc.h"
#include "jsonline.h"
#include "sink.h"
#include "worker_py.h"

#define HIGH_FD 100       /* the protocol fds live at or above this */
#define READ_CHUNK (256 * 1024)

static struct {
    int in_fd, out_fd;
    PyObject *helper;   /* the _tpar_worker module */
    PyObject *fn_cache; /* bytes "mod:fn" -> callable */
    PyObject *scan;     /* json scanner: scan(str, idx) -> (obj, end) */
    tpar_buf out;       /* result frames not yet written */
    tpar_lane down, up; /* large payloads from and to the parent */
    PyTypeObject *sink_type;
    int trim_due;       /* a job ran (or a lane was used) since the last trim */
    long tasks;         /* jobs done */
    long max_tasks;
    int idle_ms;        /* poll timeout while idle; -1: none */
    int retiring;
    long capture;       /* --capture BYTES (0: off): see extra_begin */
    int cap_fd[2];      /* memfds that are fds 1 and 2 while a job runs */
    int saved_fd[2];    /* the real fds 1 and 2 meanwhile */
    int stats;          /* --stats */
    int clear_refs;     /* /proc/self/clear_refs (resets the peak RSS), or -1 */
    struct rusage ru0;  /* at the job's start */
    /* Take-back (docs/protocol.md).  Job frames are numbered from 0 in the
     * order they come; all of these are guarded by out_mu. */
    uint64_t jobs_in;    /* job frames seen by scan_input */
    uint64_t jobs_taken; /* job frames handled (started or given back) */
    uint64_t skip_to;    /* jobs below this index, not yet handled, were given back */
    uint64_t started, finished; /* published in the up lane (progress) */
    int progress;        /* the up lane carries them */
    tpar_buf ahead;      /* input the flusher read while a job ran */
    tpar_buf mine;       /* such input, being decoded by the main thread */
    int in_eof;          /* the flusher saw the end of the input (or an error) */
    int wake_fd;         /* eventfd: the job the flusher watches has ended */
    uint64_t bell_seen;  /* the down lane's doorbell, as last seen */
    int has_retire;      /* the package's CONFIG set a retire() */
} W = {.down = TPAR_LANE_NONE, .up = TPAR_LANE_NONE, .wake_fd = -1};

void tpar__worker_die(int code, const char *what)
{
    fprintf(stderr, "tpar-worker[%d]: %s\n", (int)getpid(), what);
    _exit(code);
}

/* PR_SET_PDEATHSIG delivers this; its handler kills the whole group
 * (kill is async-signal-safe).  A real-time signal: Python never uses
 * one, and a job is unlikely to. */
#define PARENT_DIED (SIGRTMIN + 3)

static void on_parent_death(int sig)
{
    kill(0, SIGKILL);
    _exit(128 + sig);
}

static void sigint_noop(int sig)
{
    (void)sig;
}

/* Workers ignore SIGINT (Ctrl-C is the parent's to handle), with a handler
 * that does nothing rather than SIG_IGN: an ignored signal stays ignored
 * across exec, so every program a job starts would ignore it too, while a
 * handled one goes back to its default there. */
void tpar__worker_ignore_sigint(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = sigint_noop;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
}

void tpar__worker_die_with_parent(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_parent_death;
    sigfillset(&sa.sa_mask);
    sigaction(PARENT_DIED, &sa, NULL);
    prctl(PR_SET_PDEATHSIG, PARENT_DIED);
}

void tpar__worker_warm_for_fork(void)
{
    PyObject *r = PyObject_CallMethod(W.helper, "warm_for_fork", NULL);
    if (!r)
        PyErr_Print();
    Py_XDECREF(r);
}

int tpar__worker_in_fd(void)
{
    return W.in_fd;
}

static int lift_lane(int fd)
{
    if (fd < 0)
        return -1;
    int nfd = fcntl(fd, F_DUPFD_CLOEXEC, HIGH_FD);
    close(fd);
    return nfd; /* -1 (EMFILE): no lane, payloads come inline */
}

void tpar__worker_take_fds(int in_fd, int out_fd, int down, int up)
{ /* high fds: out of the way of user code that opens or dup2()s */
    W.in_fd = fcntl(in_fd, F_DUPFD_CLOEXEC, HIGH_FD);
    W.out_fd = out_fd < 0 ? -1 : fcntl(out_fd, F_DUPFD_CLOEXEC, HIGH_FD);
    if (W.in_fd < 0 || (out_fd >= 0 && W.out_fd < 0))
        tpar__worker_die(EXIT_PROTOCOL, "fds 3 and 4 must be the job pipes");
    close(in_fd);
    if (out_fd >= 0)
        close(out_fd);
    tpar_lane_close(&W.down); /* a worker that forked (FORK) its own worker */
    tpar_lane_close(&W.up);
    tpar_lane_adopt(&W.down, lift_lane(down));
    tpar_lane_adopt(&W.up, lift_lane(up));
    if (out_fd >= 0) /* a zygote's socket stays blocking */
        tpar__set_nonblock(W.in_fd); /* for the spin before blocking */
}

static PyObject *load_helper(void)
{
    PyObject *code = Py_CompileString(tpar_worker_py, "_tpar_worker.py",
                                      Py_file_input);
    if (!code)
        return NULL;
    PyObject *mod = PyImport_ExecCodeModule("_tpar_worker", code);
    Py_DECREF(code);
    /* The frame limit its error bodies must keep under. */
    PyObject *max = PyLong_FromSize_t(TPAR_FRAME_MAX_DEFAULT);
    if (mod && (!max || PyObject_SetAttrString(mod, "FRAME_MAX", max) < 0))
        Py_CLEAR(mod);
    Py_XDECREF(max);
    return mod;
}

static PyObject *list_of(const char **items, int n)
{
    PyObject *l = PyList_New(n);
    for (int i = 0; l && i < n; i++) {
        PyObject *s = PyUnicode_DecodeFSDefault(items[i]);
        if (!s) {
            Py_CLEAR(l);
            break;
        }
        PyList_SET_ITEM(l, i, s);
    }
    return l;
}

static PyObject *make_scanner(void)
{
    return PyObject_CallMethod(W.helper, "json_scanner", NULL);
}

static void extra_setup(const struct tpar_worker_opts *o);

void tpar__worker_setup(const struct tpar_worker_opts *o)
{
    PyObject *r;
    extra_setup(o);
    W.helper = load_helper();
    W.fn_cache = PyDict_New();
    if (!W.helper || !W.fn_cache)
        goto fail;
    PyObject *extra = list_of(o->paths, o->npaths);
    if (!extra)
        goto fail;
    r = PyObject_CallMethod(W.helper, "setup_path", "iOz", o->cwd_path, extra,
                            o->sys_path);
    Py_DECREF(extra);
    if (!r)
        goto fail;
    Py_DECREF(r);
    if (o->main_argv) {
        PyObject *argv = list_of((const char **)o->main_argv, o->main_argc);
        r = argv ? PyObject_CallMethod(W.helper, "set_argv", "O", argv) : NULL;
        Py_XDECREF(argv);
        if (!r)
            goto fail;
        Py_DECREF(r);
    }
    if (o->main_path) {
        r = PyObject_CallMethod(W.helper, "load_main", "s", o->main_path);
        if (!r)
            goto fail;
        Py_DECREF(r);
    }
    return;
fail:
    PyErr_Print();
    tpar__worker_die(EXIT_NOPYTHON, "cannot set up Python");
}

static void run_init(const char *spec)
{
    PyObject *fn = PyObject_CallMethod(W.helper, "resolve", "s", spec);
    PyObject *r = fn ? PyObject_CallNoArgs(fn) : NULL;
    Py_XDECREF(fn);
    if (!r) {
        fprintf(stderr, "tpar-worker[%d]: --init %s failed:\n", (int)getpid(), spec);
        PyErr_Print();
        fflush(stderr);
        _exit(EXIT_INIT);
    }
    Py_DECREF(r);
}

/* ---------------------------------------------------------------- output */

/* Writes a then b (b may be empty) whole, blocking. */
static void write_all(const uint8_t *a, size_t an, const uint8_t *b, size_t bn)
{
    struct iovec v[2] = {{(void *)a, an}, {(void *)b, bn}};
    int i = 0;
    while (i < 2) {
        if (v[i].iov_len == 0) {
            i++;
            continue;
        }
        ssize_t w = writev(W.out_fd, v + i, 2 - i);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) { /* a socket: O_NONBLOCK is shared with the input */
                struct pollfd p = {.fd = W.out_fd, .events = POLLOUT};
                poll(&p, 1, -1);
                continue;
            }
            _exit(errno == EPIPE ? 0 : EXIT_PROTOCOL); /* the parent is gone */
        }
        for (size_t left = (size_t)w; i < 2 && left; ) {
            size_t k = left < v[i].iov_len ? left : v[i].iov_len;
            v[i].iov_base = (uint8_t *)v[i].iov_base + k;
            v[i].iov_len -= k;
            left -= k;
            if (!v[i].iov_len)
                i++;
        }
    }
}

/* Writes the pending frames, then `extra` (the tail of the last frame,
 * when it is a large body kept out of W.out to spare a copy). */
static void flush_out(const uint8_t *extra, size_t extra_len)
{
    if (!W.out.len)
        return;
    /* print() in a job is block-buffered when stderr is not a tty: push it
     * out with the results, so it is not lost if the worker is killed. */
    PyObject *r = PyObject_CallMethod(PySys_GetObject("stdout"), "flush", NULL);
    if (!r)
        PyErr_Clear();
    Py_XDECREF(r);
    write_all(W.out.data, W.out.len, extra, extra_len);
    W.out.len = 0;
}

static void oom(void)
{
    tpar__worker_die(EXIT_PROTOCOL, "out of memory");
}

/* The flusher.  Results are written in batches, at the end of each chunk
 * of input; but a job that runs long (or never returns: killed for a
 * timeout, a segfault) must not hold back the results finished before it:
 * the parent would lose them, and blame the wrong job for the death.  So
 * while a job runs, a thread writes the finished results once the job has
 * run for FLUSH_AFTER, and watches the input for a TAKEBACK (take-back,
 * below).  It never touches Python.  out_mu guards W.out; the main thread
 * holds it whenever it is not running a job.
 *
 * The flusher follows the jobs through atomics, not out_mu, and a job's
 * start does not wake it: a wake-up and a lock handed back and forth at
 * every job (futex calls, and a thread that takes a CPU from the parent's
 * spin) more than doubled a warm call's latency.  While jobs come, it looks
 * every FLUSH_TICK for one that has run FLUSH_AFTER, and takes out_mu only
 * then (the main thread does not hold it while a job runs); after
 * FLUSH_IDLE with no job it sleeps until the next job wakes it.  So a long
 * job's earlier results go out after FLUSH_AFTER to FLUSH_AFTER +
 * FLUSH_TICK. */
#define FLUSH_AFTER_NS 200000LL
#define FLUSH_TICK_NS 1000000L
#define FLUSH_IDLE_NS 20000000LL

static pthread_mutex_t out_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t fl_mu = PTHREAD_MUTEX_INITIALIZER; /* the flusher's idle sleep */
static pthread_cond_t fl_cv;
static struct {
    atomic_int running;            /* a job is running */
    atomic_int idle;               /* the flusher sleeps until a job starts */
    _Atomic uint64_t gen;          /* jobs started */
    _Atomic long long started_ns;  /* CLOCK_MONOTONIC, the last job's start */
    int watching;                  /* the flusher polls the input (out_mu released) */
} J;

static long long mono_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

/* ------------------------------------------------------------ take-back
 *
 * Every byte of input passes through scan_input as it is read (by the main
 * thread, or by the flusher while a job runs), under out_mu: it counts the
 * job frames and answers a TAKEBACK at once, before the frames ahead of it
 * are decoded.  The jobs given back are skipped when the main thread
 * reaches them.  So a TAKEBACK is answered while a long job runs, not
 * after it. */
#define AHEAD_MAX (8u << 20) /* the flusher reads no further ahead */

static struct {
    uint8_t hdr[TPAR_FRAME_HEADER];
    size_t hdr_have;
    uint64_t left;   /* payload bytes of the current frame not yet seen */
    int takeback;    /* the current frame is a TAKEBACK: keep its payload */
    uint8_t arg[8];
    size_t arg_have;
} S;

static void take_back(uint64_t n)
{
    if (n != W.jobs_in)
        tpar__worker_die(EXIT_PROTOCOL, "TAKEBACK counts a different number of jobs");
    uint64_t from = W.jobs_taken > W.skip_to ? W.jobs_taken : W.skip_to;
    W.skip_to = n;
    if (tpar_buf_giveback(&W.out, from, n) < 0)
        oom();
}

static void scan_input(const uint8_t *p, size_t n)
{
    while (n) {
        if (S.left) {
            size_t k = n < S.left ? n : (size_t)S.left;
            if (S.takeback) {
                size_t c = k < 8 - S.arg_have ? k : 8 - S.arg_have;
                memcpy(S.arg + S.arg_have, p, c);
                S.arg_have += c;
            }
            p += k;
            n -= k;
            S.left -= k;
            if (!S.left && S.takeback) {
                S.takeback = 0;
                take_back(tpar_get_u64le(S.arg));
            }
            continue;
        }
        size_t k = TPAR_FRAME_HEADER - S.hdr_have;
        if (k > n)
            k = n;
        memcpy(S.hdr + S.hdr_have, p, k);
        S.hdr_have += k;
        p += k;
        n -= k;
        if (S.hdr_have < TPAR_FRAME_HEADER)
            break;
        S.hdr_have = 0;
        uint8_t kind = S.hdr[4];
        uint32_t len = (uint32_t)S.hdr[0] | (uint32_t)S.hdr[1] << 8 |
                       (uint32_t)S.hdr[2] << 16 | (uint32_t)S.hdr[3] << 24;
        int in_lane = S.hdr[6] & TPAR_FRAME_IN_LANE;
        if (kind == TPAR_FRAME_JOB_JSON || kind == TPAR_FRAME_JOB_PICKLE) {
            W.jobs_in++;
        } else if (kind == TPAR_FRAME_TAKEBACK) {
            if (len != 8 || in_lane)
                tpar__worker_die(EXIT_PROTOCOL, "malformed TAKEBACK frame");
            S.takeback = 1;
            S.arg_have = 0;
        }
        S.left = in_lane ? 0 : len;
    }
}

/* The flusher, while a job runs: reads what the parent sent into W.ahead
 * (the main thread decodes it after what it read itself). */
static void read_ahead(void)
{
    if (tpar_buf_reserve(&W.ahead, READ_CHUNK) < 0)
        return; /* left in the pipe: the main thread reads it later */
    ssize_t n = read(W.in_fd, W.ahead.data + W.ahead.len, READ_CHUNK);
    if (n > 0) {
        scan_input(W.ahead.data + W.ahead.len, (size_t)n);
        W.ahead.len += (size_t)n;
    } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
        W.in_eof = 1;
    }
}

/* The job begun as generation gen still runs. */
static int same_job(uint64_t gen)
{
    return atomic_load(&J.running) && atomic_load(&J.gen) == gen;
}

static void flush_held(void)
{
    if (W.out.len) {
        write_all(W.out.data, W.out.len, NULL, 0); /* blocks the job's end, not the job */
        W.out.len = 0;
    }
}

/* While the job runs: answers a TAKEBACK, and writes what it answered. */
static void watch_input(uint64_t gen)
{
    while (same_job(gen)) {
        int can_read = !W.in_eof && W.ahead.len < AHEAD_MAX;
        struct pollfd p[2] = {{.fd = W.wake_fd, .events = POLLIN},
                              {.fd = can_read ? W.in_fd : -1, .events = POLLIN}};
        if (W.wake_fd < 0 && !can_read)
            return;
        J.watching = 1;
        pthread_mutex_unlock(&out_mu);
        int r = poll(p, 2, W.wake_fd < 0 ? 10 : -1);
        pthread_mutex_lock(&out_mu);
        J.watching = 0;
        if (r > 0 && p[0].revents) {
            uint64_t v;
            while (read(W.wake_fd, &v, sizeof v) < 0 && errno == EINTR)
                ;
        }
        if (!same_job(gen))
            return;
        if (r > 0 && p[1].revents)
            read_ahead();
        flush_held();
    }
}

static void sleep_until_ns(long long t)
{
    struct timespec ts = {.tv_sec = (time_t)(t / 1000000000LL), .tv_nsec = (long)(t % 1000000000LL)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

static void *flusher(void *arg)
{
    for (;;) {
        if (!atomic_load(&J.running)) {
            long long now = mono_ns();
            if (now - atomic_load(&J.started_ns) < FLUSH_IDLE_NS) {
                sleep_until_ns(now + FLUSH_TICK_NS); /* jobs come: look again soon */
                continue;
            }
            pthread_mutex_lock(&fl_mu); /* none for a while: the next one wakes us */
            atomic_store(&J.idle, 1);
            while (!atomic_load(&J.running))
                pthread_cond_wait(&fl_cv, &fl_mu);
            atomic_store(&J.idle, 0);
            pthread_mutex_unlock(&fl_mu);
        }
        uint64_t gen = atomic_load(&J.gen);
        sleep_until_ns(atomic_load(&J.started_ns) + FLUSH_AFTER_NS);
        if (!same_job(gen))
            continue;
        pthread_mutex_lock(&out_mu); /* free while the job runs */
        if (same_job(gen)) {
            flush_held();
            watch_input(gen);
        }
        pthread_mutex_unlock(&out_mu);
    }
    return NULL;
}

static void start_flusher(void)
{
    pthread_condattr_t ca;
    pthread_attr_t ta;
    pthread_t t;
    sigset_t all, old;
    pthread_condattr_init(&ca);
    pthread_cond_init(&fl_cv, &ca);
    if (W.wake_fd < 0) /* without it the flusher polls every 10 ms */
        W.wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    pthread_condattr_destroy(&ca);
    pthread_attr_init(&ta);
    pthread_attr_setstacksize(&ta, 64 * 1024);
    pthread_attr_setdetachstate(&ta, PTHREAD_CREATE_DETACHED);
    sigfillset(&all); /* signals are the main thread's (Python's) */
    pthread_sigmask(SIG_SETMASK, &all, &old);
    if (pthread_create(&t, &ta, flusher, NULL) != 0)
        tpar__worker_die(EXIT_NOPYTHON, "cannot start the flusher thread");
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&ta);
    pthread_mutex_lock(&out_mu); /* held except while a job runs */
}

/* Around user code (imports, argument parsing, the call): lets the
 * flusher write what is finished if the code runs long. */
static void job_begin(void)
{
    atomic_fetch_add(&J.gen, 1);
    atomic_store(&J.started_ns, mono_ns());
    atomic_store(&J.running, 1);
    W.started = W.jobs_taken; /* 1 + the index of this job */
    if (W.progress)
        tpar_lane_progress_set(&W.up, W.started, W.finished);
    if (atomic_load(&J.idle)) { /* it saw no job for a while */
        pthread_mutex_lock(&fl_mu);
        pthread_cond_signal(&fl_cv);
        pthread_mutex_unlock(&fl_mu);
    }
    /* The flusher still watches the input for an earlier job: move it on
     * to this one.  Done here, not when that job ended: woken then, it
     * would take the CPU from the result being written. */
    if (J.watching && W.wake_fd >= 0) {
        uint64_t one = 1;
        while (write(W.wake_fd, &one, sizeof one) < 0 && errno == EINTR)
            ;
    }
    pthread_mutex_unlock(&out_mu);
}

static void job_end(void)
{
    pthread_mutex_lock(&out_mu);
    atomic_store(&J.running, 0);
    W.finished = W.started;
    if (W.progress)
        tpar_lane_progress_set(&W.up, W.started, W.finished);
    W.trim_due = 1; /* the job may have freed memory the heap keeps */
}

/* Reserves the 8-byte header and the 8-byte duration of a RESULT frame;
 * the body is appended after, and result_end fills them in. */
static size_t result_begin(void)
{
    size_t at = W.out.len;
    if (tpar_buf_reserve(&W.out, TPAR_FRAME_HEADER + 8) < 0)
        oom();
    W.out.len += TPAR_FRAME_HEADER + 8;
    return at;
}

/* Fills in the header of the result begun at `at`; the body is what was
 * appended since, plus extra bytes the caller writes right after. */
static void result_end(size_t at, int status, double duration, size_t extra)
{
    size_t len = W.out.len - at - TPAR_FRAME_HEADER + extra;
    if (len > TPAR_FRAME_MAX_DEFAULT) /* the callers keep under it */
        tpar__worker_die(EXIT_PROTOCOL, "result over the frame limit");
    W.tasks++;
    if (W.max_tasks > 0 && W.tasks >= W.max_tasks)
        W.retiring = 1;
    if (W.retiring)
        status |= TPAR_RESULT_RETIRING;
    tpar_frame_header(W.out.data + at, TPAR_FRAME_RESULT, (uint8_t)status,
                      (uint32_t)len);
    memcpy(W.out.data + at + TPAR_FRAME_HEADER, &duration, 8); /* LE hosts */
}

/* Ends a result whose len payload bytes (duration first) are in the up
 * lane, published: only its header goes into W.out. */
static void result_end_lane(size_t at, int status, double duration, size_t len)
{
    W.out.len = at + TPAR_FRAME_HEADER; /* no duration here: it is in the lane */
    result_end(at, status, duration, len);
    W.out.data[at + 6] = TPAR_FRAME_IN_LANE;
    W.trim_due = 1;
}

/* Moves the payload of the result at `at` (the last frame in W.out) into
 * the up lane when it is large and the lane is free. */
static void result_to_lane(size_t at)
{
    size_t len = W.out.len - at - TPAR_FRAME_HEADER;
    if (len < TPAR_LANE_MIN || !tpar_lane_put(&W.up, W.out.data + at + TPAR_FRAME_HEADER, len))
        return;
    W.out.len = at + TPAR_FRAME_HEADER;
    W.out.data[at + 6] = TPAR_FRAME_IN_LANE;
    W.trim_due = 1;
}

/* The job's payload was in the down lane and is no longer needed. */
static void lane_release(int *held)
{
    if (*held)
        tpar_lane_done(&W.down);
    *held = 0;
}

/* ------------------------------------------------------------- JSON jobs */

/* Appends the error record of the current exception as a result body. */
static int put_error_json(size_t at)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb)
        PyException_SetTraceback(value, tb);
    PyObject *rec = PyObject_CallMethod(W.helper, "error_info", "O", value);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    W.out.len = at + TPAR_FRAME_HEADER + 8; /* drop a partial value */
    if (!rec || tpar__json_encode(&W.out, rec) < 0) {
        Py_XDECREF(rec);
        PyErr_Clear();
        W.out.len = at + TPAR_FRAME_HEADER + 8;
        static const char fallback[] =
            "{\"type\":\"SystemError\",\"message\":\"tpar-worker could not "
            "describe the error\",\"traceback\":\"\"}";
        return tpar_buf_append(&W.out, fallback, sizeof(fallback) - 1);
    }
    Py_DECREF(rec);
    return 0;
}

static PyObject *lookup_fn(const char *spec, size_t n)
{
    PyObject *key = PyBytes_FromStringAndSize(spec, (Py_ssize_t)n);
    if (!key)
        return NULL;
    PyObject *fn = PyDict_GetItemWithError(W.fn_cache, key);
    if (fn) {
        Py_INCREF(fn);
    } else if (!PyErr_Occurred()) {
        fn = PyObject_CallMethod(W.helper, "resolve", "s#", spec, (Py_ssize_t)n);
        if (fn && PyDict_SetItem(W.fn_cache, key, fn) < 0)
            Py_CLEAR(fn);
    }
    Py_DECREF(key);
    return fn;
}

/* JSON text -> Python object through the json module's C scanner
 * (_tpar_worker.json_scanner). */
static PyObject *parse_json(const char *p, size_t n, PyTypeObject *want)
{
    /* Made on the first JSON job: the Trio package's workers never need
     * it. */
    if (!W.scan && !(W.scan = make_scanner()))
        return NULL;
    PyObject *s = PyUnicode_DecodeUTF8(p, (Py_ssize_t)n, "strict");
    if (!s)
        return NULL;
    PyObject *r = PyObject_CallFunction(W.scan, "On", s, (Py_ssize_t)0);
    if (!r && PyErr_Occurred() && PyErr_ExceptionMatches(PyExc_ValueError)) {
        /* The scanner raises a plain ValueError only for an int over the
         * digit limit (jsonenc.h): once more without it. */
        PyObject *t, *v, *tb;
        PyErr_Fetch(&t, &v, &tb);
        long old = t == PyExc_ValueError ? tpar__int_digits_lift() : -1;
        if (old < 0) {
            PyErr_Restore(t, v, tb);
        } else {
            Py_XDECREF(t);
            Py_XDECREF(v);
            Py_XDECREF(tb);
            r = PyObject_CallFunction(W.scan, "On", s, (Py_ssize_t)0);
            tpar__int_digits_restore(old);
        }
    }
    Py_DECREF(s);
    if (!r) {
        if (PyErr_ExceptionMatches(PyExc_StopIteration)) {
            /* p is not NUL-terminated (kwargs end the frame): n bytes. */
            PyErr_Clear();
            PyObject *head = PyUnicode_DecodeUTF8(p, (Py_ssize_t)(n < 200 ? n : 200),
                                                  "replace");
            if (head) {
                PyErr_Format(PyExc_ValueError, "invalid JSON: %U", head);
                Py_DECREF(head);
            }
        }
        return NULL;
    }
    PyObject *v = PyTuple_GET_ITEM(r, 0);
    Py_INCREF(v);
    Py_DECREF(r);
    if (Py_TYPE(v) != want) {
        PyErr_Format(PyExc_TypeError, "job %s must be a JSON %s",
                     want == &PyList_Type ? "args" : "kwargs",
                     want == &PyList_Type ? "array" : "object");
        Py_CLEAR(v);
    }
    return v;
}

/* Splits "fn NUL args NUL kwargs"; args and kwargs may be empty. */
static int split_job(const tpar_frame *f, const char *part[3], size_t len[3])
{
    const char *p = (const char *)f->payload, *end = p + f->len;
    for (int i = 0; i < 3; i++) {
        const char *z = i < 2 ? memchr(p, 0, (size_t)(end - p)) : end;
        if (!z)
            return -1;
        part[i] = p;
        len[i] = (size_t)(z - p);
        p = z + (i < 2);
    }
    return len[0] ? 0 : -1;
}

/* ------------------------------------------- --capture and --stats */

/* With --capture, a JSON job's fds 1 and 2 are memfds while it runs (the
 * worker's own are put back after), and what it wrote, cut to the limit,
 * goes to the parent in an EXTRA frame before its result; with --stats,
 * its CPU time (getrusage) and the worker's peak RSS while it ran (the
 * peak is reset before the job through /proc/self/clear_refs). */
static void extra_setup(const struct tpar_worker_opts *o)
{
    W.capture = o->capture > 0 ? o->capture : 0;
    W.stats = o->stats;
    W.clear_refs = -1;
    if (W.capture) {
        for (int i = 0; i < 2; i++) {
            W.cap_fd[i] = memfd_create(i ? "tpar-stderr" : "tpar-stdout", MFD_CLOEXEC);
            W.saved_fd[i] = fcntl(i + 1, F_DUPFD_CLOEXEC, HIGH_FD);
            if (W.cap_fd[i] < 0 || W.saved_fd[i] < 0)
                W.capture = 0; /* cannot: the output goes where it goes */
        }
    }
    if (W.stats)
        W.clear_refs = open("/proc/self/clear_refs", O_WRONLY | O_CLOEXEC);
}

/* A worker forked from the zygote must not share the zygote's memfds
 * with its siblings, and /proc/self was the zygote when it was opened. */
static void extra_after_fork(void)
{
    for (int i = 0; i < 2 && W.capture; i++) {
        int fd = memfd_create(i ? "tpar-stderr" : "tpar-stdout", MFD_CLOEXEC);
        if (fd < 0) {
            W.capture = 0;
            break;
        }
        dup3(fd, W.cap_fd[i], O_CLOEXEC); /* same number, a file of its own */
        close(fd);
    }
    if (W.clear_refs >= 0) {
        close(W.clear_refs);
        W.clear_refs = open("/proc/self/clear_refs", O_WRONLY | O_CLOEXEC);
    }
}

static void flush_std(void)
{
    static const char *const names[] = {"stdout", "stderr"};
    for (int i = 0; i < 2; i++) {
        PyObject *f = PySys_GetObject(names[i]); /* borrowed */
        PyObject *r = f && f != Py_None ? PyObject_CallMethod(f, "flush", NULL) : NULL;
        Py_XDECREF(r);
    }
    PyErr_Clear();
}

static void extra_begin(void)
{
    if (W.capture) {
        flush_std();
        dup2(W.cap_fd[0], 1);
        dup2(W.cap_fd[1], 2);
    }
    if (W.stats) {
        if (W.clear_refs >= 0)
            (void)!pwrite(W.clear_refs, "5", 1, 0);
        getrusage(RUSAGE_SELF, &W.ru0);
    }
}

/* Bytes as a JSON string; what is not UTF-8 becomes U+FFFD. */
static void put_jstr(tpar_buf *b, const uint8_t *s, size_t n)
{
    if (tpar_buf_reserve(b, TPAR_JSONLINE_ESCAPED_MAX(n)) < 0)
        oom();
    b->len += tpar_jsonline_escape(s, n, (char *)b->data + b->len);
}

static void put_lit(tpar_buf *b, const char *s)
{
    if (tpar_buf_append(b, s, strlen(s)) < 0)
        oom();
}

/* Appends an EXTRA frame of kind to W.out: the members text[0..n). */
static void put_extra(int kind, const tpar_buf *text)
{
    if (tpar_buf_frame(&W.out, TPAR_FRAME_EXTRA, (uint8_t)kind, text->data, text->len) < 0)
        oom();
}

/* After the job (the output lock held): fds 1 and 2 back, and the EXTRA
 * frames before its result. */
static void extra_end(void)
{
    static tpar_buf t;
    if (W.stats) {
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        double us = (double)(ru.ru_utime.tv_sec - W.ru0.ru_utime.tv_sec) +
                    (double)(ru.ru_utime.tv_usec - W.ru0.ru_utime.tv_usec) / 1e6;
        double sy = (double)(ru.ru_stime.tv_sec - W.ru0.ru_stime.tv_sec) +
                    (double)(ru.ru_stime.tv_usec - W.ru0.ru_stime.tv_usec) / 1e6;
        char s[160];
        snprintf(s, sizeof s, "\"cpu_user\":%.6f,\"cpu_sys\":%.6f,\"max_rss\":%llu",
                 us < 0 ? 0 : us, sy < 0 ? 0 : sy, (unsigned long long)ru.ru_maxrss * 1024);
        t.len = 0;
        put_lit(&t, s);
        put_extra(TPAR_EXTRA_STATS, &t);
    }
    if (W.capture) {
        flush_std();
        dup2(W.saved_fd[0], 1);
        dup2(W.saved_fd[1], 2);
        static const char *const keys[] = {"\"stdout\":", ",\"stderr\":"};
        int cut = 0;
        t.len = 0;
        for (int i = 0; i < 2; i++) {
            off_t size = lseek(W.cap_fd[i], 0, SEEK_CUR);
            size_t n = size > 0 ? (size_t)size : 0;
            if (n > (size_t)W.capture) {
                n = (size_t)W.capture;
                cut = 1;
            }
            uint8_t *data = n ? mmap(NULL, n, PROT_READ, MAP_SHARED, W.cap_fd[i], 0) : NULL;
            put_lit(&t, keys[i]);
            if (data == MAP_FAILED) {
                put_lit(&t, "\"\"");
            } else {
                put_jstr(&t, data, n);
                if (data)
                    munmap(data, n);
            }
            if (ftruncate(W.cap_fd[i], 0) < 0 || lseek(W.cap_fd[i], 0, SEEK_SET) < 0)
                W.capture = 0; /* next jobs write where the worker writes */
        }
        put_lit(&t, cut ? ",\"output_cut\":true" : ",\"output_cut\":false");
        put_extra(TPAR_EXTRA_OUTPUT, &t);
    }
}

static void run_json_job(const tpar_frame *f, int *lane)
{
    const char *part[3];
    size_t len[3];
    PyObject *fn = NULL, *args = NULL, *kwargs = NULL, *targs = NULL, *res = NULL;
    double t0 = 0, dt = 0;
    int ok = 0;

    if (split_job(f, part, len) < 0)
        tpar__worker_die(EXIT_PROTOCOL, "malformed JSON job frame");
    if (W.capture || W.stats)
        extra_begin();
    job_begin();
    if (!(fn = lookup_fn(part[0], len[0])))
        goto ended;
    if (len[1] && !(args = parse_json(part[1], len[1], &PyList_Type)))
        goto ended;
    if (len[2] && !(kwargs = parse_json(part[2], len[2], &PyDict_Type)))
        goto ended;
    targs = args ? PyList_AsTuple(args) : PyTuple_New(0);
    if (!targs)
        goto ended;
    lane_release(lane); /* parsed: the parent may fill the lane again */
    t0 = tpar_now();
    res = PyObject_Call(fn, targs, kwargs);
    dt = tpar_now() - t0;
ended:
    job_end();
    if (W.capture || W.stats)
        extra_end();
    lane_release(lane);
    size_t at = result_begin();
    if (res && tpar__json_encode(&W.out, res) == 0)
        ok = 1;
    else if (put_error_json(at) < 0)
        oom();
    if (W.out.len - at - TPAR_FRAME_HEADER > TPAR_FRAME_MAX_DEFAULT) {
        size_t n = W.out.len - at - TPAR_FRAME_HEADER - 8;
        W.out.len = at + TPAR_FRAME_HEADER + 8;
        char msg[256];
        snprintf(msg, sizeof msg,
                 "{\"type\":\"OverflowError\",\"message\":\"the job's %s is %zu bytes "
                 "of JSON, over the %zu-byte frame limit\",\"traceback\":\"\"}",
                 ok ? "value" : "error record", n, (size_t)TPAR_FRAME_MAX_DEFAULT);
        if (tpar_buf_append(&W.out, msg, strlen(msg)) < 0)
            oom();
        ok = 0;
    }
    result_end(at, ok ? TPAR_RESULT_OK : TPAR_RESULT_ERROR, dt, 0);
    result_to_lane(at);
    Py_XDECREF(fn);
    Py_XDECREF(args);
    Py_XDECREF(kwargs);
    Py_XDECREF(targs);
    Py_XDECREF(res);
}

/* ----------------------------------------------------------- pickle jobs */

#define BIG_BODY (64 * 1024) /* written from where it is, not copied */

static void run_pickle_job(const tpar_frame *f, int *lane)
{
    /* A view, not a copy: pickle.loads copies what it keeps, and the view
     * is released before the decoder's buffer (or the lane) is reused. */
    PyObject *view = PyMemoryView_FromMemory((char *)f->payload, (Py_ssize_t)f->len,
                                             PyBUF_READ);
    /* The value is pickled straight into the up lane when it is large;
     * the first 8 bytes are the duration, filled in below. */
    PyObject *sink = view ? tpar_sink_new(W.sink_type, &W.up, 8) : NULL;
    job_begin();
    PyObject *r = sink ? PyObject_CallMethod(W.helper, "run_pickle", "OO", view, sink)
                       : NULL;
    job_end();
    int ok = 0, retiring = 0;
    double dt = 0;
    PyObject *body;
    if (!r || !PyArg_ParseTuple(r, "pdOp", &ok, &dt, &body, &retiring) ||
        (body != Py_None && !PyBytes_Check(body))) {
        /* run_pickle catches everything; this is a worker bug: say so. */
        PyErr_Print();
        tpar__worker_die(EXIT_PROTOCOL, "the pickle job runner failed");
    }
    PyObject *rel = PyObject_CallMethod(view, "release", NULL);
    if (!rel)
        tpar__worker_die(EXIT_PROTOCOL, "a job kept a view of its own frame");
    Py_DECREF(rel);
    Py_DECREF(view);
    lane_release(lane);
    if (retiring)
        W.retiring = 1;
    int status = ok ? TPAR_RESULT_OK : TPAR_RESULT_ERROR;
    size_t at = result_begin();
    const uint8_t *p;
    size_t n;
    if (body == Py_None) { /* the value is in the sink */
        uint8_t *data;
        if (tpar_sink_payload(sink, &data, &n)) {
            memcpy(data, &dt, 8); /* LE hosts */
            tpar_sink_finish(sink, 1);
            result_end_lane(at, status, dt, n);
            goto done;
        }
        p = data + 8;
        n -= 8;
    } else {
        p = (const uint8_t *)PyBytes_AS_STRING(body);
        n = (size_t)PyBytes_GET_SIZE(body);
    }
    if (n >= BIG_BODY) {
        result_end(at, status, dt, n);
        flush_out(p, n);
    } else {
        if (tpar_buf_append(&W.out, p, n) < 0)
            oom();
        result_end(at, status, dt, 0);
    }
done:
    tpar_sink_finish(sink, 0);
    Py_DECREF(sink);
    Py_DECREF(r);
}

static void run_config(const tpar_frame *f)
{
    PyObject *r = PyObject_CallMethod(W.helper, "config", "y#",
                                      (const char *)f->payload, (Py_ssize_t)f->len);
    if (!r) {
        fprintf(stderr, "tpar-worker[%d]: init failed:\n", (int)getpid());
        PyErr_Print();
        fflush(stderr);
        _exit(EXIT_INIT);
    }
    W.has_retire = PyObject_IsTrue(r) > 0; /* config() says whether one is set */
    Py_DECREF(r);
}

/* The package's retire() runs once the job's result has gone back, so a
 * slow or hanging one never holds up the caller (as with trio-parallel).
 * True: a RETIRED notice follows, and the worker exits; a job the parent
 * sent meanwhile is not run, and the notice tells it so.  Raised: the
 * traceback goes to stderr and the worker exits with EXIT_RETIRE_FAILED,
 * which the parent reports as BrokenWorkerError. */
static void retire_after_result(void)
{
    static const uint8_t no_duration[8];
    flush_out(NULL, 0);
    PyObject *r = PyObject_CallMethod(W.helper, "retire_now", NULL);
    int yes = r ? PyObject_IsTrue(r) : -1;
    Py_XDECREF(r);
    if (yes < 0) {
        fprintf(stderr, "tpar-worker[%d]: retire() raised:\n", (int)getpid());
        PyErr_Print();
        fflush(stderr);
        _exit(EXIT_RETIRE_FAILED);
    }
    if (!yes)
        return;
    if (tpar_buf_frame(&W.out, TPAR_FRAME_RESULT, TPAR_RESULT_RETIRED | TPAR_RESULT_RETIRING,
                       no_duration, sizeof no_duration) < 0)
        oom();
    W.retiring = 1;
}

/* ------------------------------------------------------------------ loop */

/* Returns 1 to go on, 0 when the worker should exit. */
static int handle(const tpar_frame *in)
{
    tpar_frame f = *in;
    int lane = 0;
    if (f.flags & TPAR_FRAME_IN_LANE) {
        if (tpar_lane_view(&W.down, f.len, &f.payload) < 0)
            tpar__worker_die(EXIT_PROTOCOL, "a lane frame with no payload in the lane");
        lane = 1;
        W.trim_due = 1;
    }
    if (f.kind == TPAR_FRAME_JOB_JSON || f.kind == TPAR_FRAME_JOB_PICKLE) {
        /* A TAKEBACK waits in the pipe: read it before starting this job. */
        if (tpar_lane_rang(&W.down, &W.bell_seen)) {
            size_t held = W.out.len;
            for (size_t had = (size_t)-1; !W.in_eof && W.ahead.len != had &&
                                          W.ahead.len < AHEAD_MAX;)
                had = W.ahead.len, read_ahead();
            if (W.out.len != held)
                flush_out(NULL, 0); /* the GIVEBACK, and the results before it */
        }
        if (W.jobs_taken++ < W.skip_to) { /* given back: never started */
            lane_release(&lane);
            return 1;
        }
    }
    switch (f.kind) {
    case TPAR_FRAME_JOB_JSON:
        if (f.status & TPAR_JOB_FLUSH_FIRST)
            flush_out(NULL, 0);
        run_json_job(&f, &lane);
        break;
    case TPAR_FRAME_JOB_PICKLE:
        if (f.status & TPAR_JOB_FLUSH_FIRST)
            flush_out(NULL, 0);
        run_pickle_job(&f, &lane);
        if (W.has_retire) {
            lane_release(&lane);
            retire_after_result();
        }
        break;
    case TPAR_FRAME_CONFIG: run_config(&f); break;
    case TPAR_FRAME_SHUTDOWN: return 0;
    case TPAR_FRAME_TAKEBACK: break; /* answered by scan_input when read */
    default: tpar__worker_die(EXIT_PROTOCOL, "unexpected frame kind");
    }
    lane_release(&lane);
    return !W.retiring;
}

/* An idle worker gives back what large payloads left behind: the lanes'
 * pages, large buffers, and the heap a job freed (kept while jobs come,
 * see tpar__worker_work).  Waits for a lane the parent still reads. */
#define TRIM_AFTER_MS 1000

static void trim(tpar_decoder *dec)
{
    int held = tpar_lane_trim(&W.down) == -EBUSY;
    held |= tpar_lane_trim(&W.up) == -EBUSY;
    tpar_decoder_shrink(dec);
    if (W.out.len == 0 && W.out.cap > TPAR_LANE_MIN)
        tpar_buf_free(&W.out);
    if (W.ahead.len == 0 && W.ahead.cap > READ_CHUNK) /* held by out_mu, as we are */
        tpar_buf_free(&W.ahead);
    if (W.mine.cap > READ_CHUNK)
        tpar_buf_free(&W.mine);
    malloc_trim(0);
    W.trim_due = held;
}

/* Reads what is there, spinning up to *spin µs before blocking.  The spin
 * adapts to how long the parent takes to send the next job: input that
 * came within spin_max of the start (during the spin, or soon after it
 * gave up) sets the spin to a little more than that gap; input that came
 * later halves it (the parent is idle, or shares our CPU: spinning only
 * burns time).  A spin that only grew when it caught input would, once
 * shrunk below the parent's gap, never catch any again.  Returns bytes
 * read, 0 at EOF or after --idle-timeout. */
static void adapt_spin(double t0, long *spin, long spin_max)
{
    long gap = (long)((tpar_now() - t0) * 1e6);
    if (gap <= spin_max) {
        long want = gap + gap / 2 + 2;
        *spin = want > spin_max ? spin_max : want > *spin ? want : *spin;
    } else {
        *spin /= 2;
    }
}

static pid_t feeder; /* tpar__worker_set_feeder; 0: our parent */

void tpar__worker_set_feeder(pid_t pid)
{
    feeder = pid;
}

static ssize_t read_input(tpar_decoder *dec, uint8_t *buf, size_t cap, long *spin,
                          long spin_max)
{
    double t0 = tpar_now(), deadline = t0 + (double)*spin * 1e-6;
    /* No spin on a machine with more runnable tasks than CPUs, the
     * process that feeds us aside (our parent, or our zygote's): there the
     * first yield already loses the CPU for a time slice.  (No rule on a yield that lost the CPU: on two CPUs the slice
     * lost is most often our parent's, by which we were woken onto its
     * CPU, and stopping the spin for it made every job wake a sleeping
     * worker; where other processes take the CPUs, this check already
     * sees them: docs/design.md, "Spinning before blocking".) */
    if (*spin > 0 && tpar_cpus_oversubscribed(t0, feeder ? feeder : getppid()))
        deadline = t0;
    for (;;) {
        ssize_t n = read(W.in_fd, buf, cap);
        if (n >= 0) {
            adapt_spin(t0, spin, spin_max);
            return n;
        }
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN)
            return -1;
        if (tpar_now() >= deadline)
            break;
        /* When the parent shares our CPU, this is what lets it run (and
         * send the next job); on a CPU of our own it returns at once. */
        sched_yield();
    }
    double idle_end = t0 + W.idle_ms * 1e-3;
    for (;;) {
        struct pollfd p = {.fd = W.in_fd, .events = POLLIN};
        int timeout = -1, r;
        if (W.idle_ms >= 0) {
            double left = (idle_end - tpar_now()) * 1e3;
            timeout = left > 0 ? (int)left + 1 : 0;
        }
        if (W.trim_due && (timeout < 0 || timeout > TRIM_AFTER_MS))
            timeout = TRIM_AFTER_MS;
        Py_BEGIN_ALLOW_THREADS
        r = poll(&p, 1, timeout);
        Py_END_ALLOW_THREADS
        if (r == 0) {
            if (W.idle_ms >= 0 && tpar_now() >= idle_end)
                return 0; /* idle too long: leave as at EOF */
            trim(dec);
            continue;
        }
        ssize_t n = read(W.in_fd, buf, cap);
        if (n >= 0) {
            adapt_spin(t0, spin, spin_max);
            return n;
        }
        if (errno != EINTR && errno != EAGAIN)
            return -1;
    }
}

/* Feeds n bytes at buf to the decoder, running each complete frame.
 * Returns 0 to go on, 1 when the worker should exit. */
static int feed(tpar_decoder *dec, const uint8_t *buf, size_t n)
{
    tpar_frame f;
    size_t off = 0;
    while (off < n) {
        int got;
        ptrdiff_t used = tpar_decoder_feed(dec, buf + off, n - off, &f, &got);
        if (used < 0)
            tpar__worker_die(EXIT_PROTOCOL, tpar_strerror((int)used));
        off += (size_t)used;
        if (got && !handle(&f))
            return 1;
    }
    return 0;
}

/* In a child a job forks (os.fork, multiprocessing's fork start method):
 * the worker's pipes and lanes are not the child's.  Held open there, the
 * result pipe would hide the worker's death from its parent (which learns
 * of it at end of file) for as long as the child lives, and a child that
 * returned from the job into this loop would answer jobs itself. */
static void drop_fds_in_forked_child(void)
{
    int *fds[] = {&W.in_fd, &W.out_fd, &W.down.fd, &W.up.fd, &W.wake_fd};
    for (size_t i = 0; i < sizeof fds / sizeof fds[0]; i++) {
        if (*fds[i] >= 0)
            close(*fds[i]);
        *fds[i] = -1;
    }
}

static int serve(long spin_max)
{
    tpar_decoder dec;
    tpar_frame f;
    uint8_t *buf = malloc(READ_CHUNK), *dst;
    long spin = spin_max;
    static int atfork_set;
    if (!buf)
        oom();
    if (!atfork_set && pthread_atfork(NULL, NULL, drop_fds_in_forked_child) == 0)
        atfork_set = 1;
    tpar_decoder_init(&dec, 0);
    for (;;) {
        if (W.ahead.len) { /* read by the flusher, after what we read */
            tpar_buf t = W.mine;
            W.mine = W.ahead;
            W.ahead = t;
            int stop = feed(&dec, W.mine.data, W.mine.len);
            W.mine.len = 0;
            flush_out(NULL, 0);
            if (stop)
                return 0;
            continue;
        }
        if (W.in_eof)
            return tpar_decoder_partial(&dec) ? EXIT_PROTOCOL : 0;
        /* The rest of a large frame goes straight into the decoder. */
        size_t room = tpar_decoder_room(&dec, &dst);
        int direct = room >= READ_CHUNK;
        ssize_t n = direct ? read_input(&dec, dst, room, &spin, spin_max)
                           : read_input(&dec, buf, READ_CHUNK, &spin, spin_max);
        if (n <= 0)
            return n < 0 || tpar_decoder_partial(&dec) ? EXIT_PROTOCOL : 0;
        size_t answers = W.out.len;
        scan_input(direct ? dst : buf, (size_t)n);
        if (W.out.len != answers)
            flush_out(NULL, 0); /* a GIVEBACK: the parent waits for it */
        int stop = direct ? tpar_decoder_commit(&dec, (size_t)n, &f) && !handle(&f)
                          : feed(&dec, buf, (size_t)n);
        flush_out(NULL, 0);
        if (stop)
            return 0;
    }
}

static void send_ready(void)
{
    uint32_t pid = (uint32_t)getpid();
    W.progress = tpar_lane_progress_set(&W.up, 0, 0) == 0;
    uint8_t status = TPAR_READY_FLUSH_FIRST | TPAR_READY_TAKEBACK |
                     (W.progress ? TPAR_READY_PROGRESS : 0);
    uint8_t le[4] = {(uint8_t)pid, (uint8_t)(pid >> 8), (uint8_t)(pid >> 16),
                     (uint8_t)(pid >> 24)};
    if (tpar_buf_frame(&W.out, TPAR_FRAME_READY, status, le, 4) < 0)
        oom();
    write_all(W.out.data, W.out.len, NULL, 0);
    W.out.len = 0;
}

/* Serves jobs until EOF, SHUTDOWN or retirement, then exits without
 * finalizing: the parent has its results, and a job's leftover threads or
 * atexit hooks must not keep the worker alive. */
void tpar__worker_work(const struct tpar_worker_opts *o)
{
    /* Large blocks from the heap, and freed memory kept while jobs come
     * (trim() gives it back when idle): a job that receives 100 MB then
     * copies into warm pages, several times cheaper than fresh ones. */
    mallopt(M_MMAP_MAX, 0);
    mallopt(M_TRIM_THRESHOLD, 512 << 20);
    if (!W.sink_type &&
        !(W.sink_type = (PyTypeObject *)PyType_FromSpec(&tpar_sink_spec))) {
        PyErr_Print();
        tpar__worker_die(EXIT_NOPYTHON, "cannot set up Python");
    }
    if (o->init)
        run_init(o->init);
    W.max_tasks = o->max_tasks;
    W.idle_ms = o->idle_timeout > 0 ? (int)(o->idle_timeout * 1000 + 0.5) : -1;
    long spin = o->spin_us >= 0 ? o->spin_us : tpar_cpu_count() > 1 ? 50 : 0;
    start_flusher();
    send_ready();
    int rc = serve(spin);
    fflush(stderr);
    PyObject *r = PyObject_CallMethod(PySys_GetObject("stdout"), "flush", NULL);
    Py_XDECREF(r);
    PyErr_Clear();
    /* A remote worker's supervisor dials again for one that retired. */
    _exit(rc == 0 && W.retiring && o->connect ? EXIT_RETIRED : rc);
}

/* ------------------------------------------------------------------ FORK */

static int load_python_half(void)
{
    if (W.helper)
        return 0;
    W.helper = load_helper();
    W.fn_cache = W.helper ? PyDict_New() : NULL;
    if (!W.fn_cache) {
        Py_CLEAR(W.helper);
        Py_CLEAR(W.fn_cache);
        return -1;
    }
    return 0;
}

/* glibc keeps up to 128 kB free at the top of the heap, and never returns
 * free pages below it on its own: an idle worker then holds only what it
 * uses. */
void tpar__worker_trim_heap(void)
{
    malloc_trim(0);
}

void tpar__worker_after_fork(pid_t parent, int pdeathsig)
{
    sigset_t none;
    sigemptyset(&none);
    PyOS_AfterFork_Child();
    /* The parent's handlers (Trio's wakeup fd among them) are not ours. */
    tpar__worker_ignore_sigint();
    signal(SIGTERM, SIG_DFL);
    sigprocmask(SIG_SETMASK, &none, NULL);
    setpgid(0, 0); /* a timeout kills the job's own children too */
    extra_after_fork();
    if (pdeathsig) {
        tpar__worker_die_with_parent();
        if (getppid() != parent) /* it died before prctl */
            _exit(EXIT_PROTOCOL);
    }
}

static _Noreturn void forked_child(const struct tpar__chan *c,
                                   const struct tpar_worker_opts *o, pid_t parent)
{
    tpar__worker_after_fork(parent, o->pdeathsig);
    close(c->in[1]); /* the parent's ends */
    close(c->out[0]);
    tpar__worker_take_fds(c->in[0], c->out[1], c->down.fd, c->up.fd);
    if (!o->keep_stdout)
        dup2(STDERR_FILENO, STDOUT_FILENO);
    /* The caller's stdin is not the job's (a job reading it would take the
     * caller's input, or stop on SIGTTIN at a terminal): /dev/null, as a
     * spawned worker has. */
    int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (null >= 0) {
        dup2(null, STDIN_FILENO); /* dup2 clears FD_CLOEXEC on fd 0 */
        close(null);
    }
    W.out.len = 0;
    W.tasks = 0;
    W.retiring = 0;
    W.jobs_in = W.jobs_taken = W.skip_to = W.started = W.finished = 0;
    W.bell_seen = 0;
    W.ahead.len = W.mine.len = 0;
    W.in_eof = 0;
    memset(&S, 0, sizeof S);
    /* Forked by a job that runs in a worker (a nested FORK context): the
     * flusher thread did not come along, and may have held out_mu at the
     * fork; the job it watched is not this process's. */
    out_mu = (pthread_mutex_t)PTHREAD_MUTEX_INITIALIZER;
    fl_mu = (pthread_mutex_t)PTHREAD_MUTEX_INITIALIZER;
    atomic_store(&J.running, 0);
    atomic_store(&J.idle, 0);
    atomic_store(&J.gen, 0);
    atomic_store(&J.started_ns, 0);
    J.watching = 0;
    tpar__worker_work(o);
}

int tpar_worker_fork(tpar_proc *p, const struct tpar_worker_opts *o)
{
    struct tpar__chan c;
    if (load_python_half() < 0)
        return -EINVAL; /* with a Python exception set */
    int rc = tpar__chan_open(&c);
    if (rc < 0)
        return rc;
    pid_t me = getpid();
    PyOS_BeforeFork();
    pid_t pid = fork();
    if (pid == 0)
        forked_child(&c, o, me);
    int err = errno;
    PyOS_AfterFork_Parent();
    if (pid < 0) {
        tpar__chan_close(&c);
        return -err;
    }
    tpar__chan_hand_over(&c, p, pid);
    return 0;
}
