/* The stream engine: the loop, records, keep-order, signals, the end.
 *
 * Each loop iteration handles whatever the workers and the input produced,
 * then, in one prepare callback before the loop blocks, parses more input,
 * dispatches, writes to the workers and flushes the output once.  So a
 * busy stream costs a handful of system calls per batch, not per job. */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "engine.h"

struct engine E;

#define OUT_FLUSH_AT (256 * 1024)
#define REORDER_WINDOW 4096

static char skipped_marker;

/* ------------------------------------------------------------- output */

static void write_all(int fd, tpar_buf *b, const char *what)
{
    size_t off = 0;
    while (off < b->len) {
        ssize_t n = write(fd, b->data + off, b->len - off);
        if (n > 0) {
            off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN) { /* someone made it non-blocking */
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
            continue;
        }
        b->len = 0;
        if (n < 0 && errno == EPIPE && fd == E.out_fd) {
            engine_stop(STOP_PIPE);
            return;
        }
        engine_fatal("cannot write %s: %s", what, strerror(errno));
        return;
    }
    b->len = 0;
}

void output_flush(void)
{
    if (E.out.len && E.stop != STOP_PIPE)
        write_all(E.out_fd, &E.out, E.o->output ? E.o->output : "stdout");
    E.out.len = 0;
    if (E.log.len)
        write_all(E.log_fd, &E.log, E.o->joblog);
}

/* Writes the records held for seq numbers from rbase on, in order. */
static void reorder_drain(void)
{
    for (;;) {
        size_t k = E.rbase % E.rcap;
        char *r = E.rslot[k];
        if (!r)
            return;
        if (r != &skipped_marker) {
            out_lit(&E.out, r, E.rlen[k]);
            free(r);
        }
        E.rslot[k] = NULL;
        E.rbase++;
    }
}

/* The record just formatted at E.out[start..] belongs to seq: in -k mode
 * it is held back until every earlier seq has been written. */
static void record_placed(uint64_t seq, size_t start)
{
    if (E.o->keep_order) {
        if (seq != E.rbase) {
            size_t n = E.out.len - start;
            char *copy = malloc(n ? n : 1);
            if (!copy)
                cli_die(EXIT_USAGE, "out of memory");
            memcpy(copy, E.out.data + start, n);
            E.rslot[seq % E.rcap] = copy;
            E.rlen[seq % E.rcap] = (uint32_t)n;
            E.out.len = start;
            return;
        }
        E.rbase++;
        reorder_drain();
    }
    if (E.out.len >= OUT_FLUSH_AT)
        output_flush();
}

void record_skipped(uint64_t seq)
{
    E.skipped++;
    if (E.o->keep_order) {
        if (seq == E.rbase) {
            E.rbase++;
            reorder_drain();
        } else {
            E.rslot[seq % E.rcap] = &skipped_marker;
        }
    }
}

static void count(int status)
{
    E.count[status]++;
    E.finished++;
    if (status == ST_OK)
        return;
    E.failed++;
    if (!E.o->halt || E.stop != STOP_NONE)
        return;
    int hit = E.o->halt_pct ? E.failed * 100.0 >= E.o->halt_fail * (double)E.finished
                            : (double)E.failed >= E.o->halt_fail;
    if (hit) {
        if (!E.o->quiet)
            cli_warn("--halt: %llu failed job(s); %s", (unsigned long long)E.failed,
                     E.o->halt == HALT_NOW ? "killing the running jobs"
                                           : "waiting for the running jobs");
        engine_stop(E.o->halt == HALT_NOW ? STOP_NOW : STOP_SOON);
    }
}

static void put_id(tpar_buf *b, const struct job *j)
{
    out_lit(b, j->data, j->id_len);
}

static void run_record(int status, const char *body, size_t n)
{
    OUT_LIT(&E.out, "{\"type\":\"result\",\"status\":\"");
    out_lit(&E.out, status_names[status], strlen(status_names[status]));
    if (status == ST_OK)
        OUT_LIT(&E.out, "\",\"value\":");
    else
        OUT_LIT(&E.out, "\",\"error\":");
    out_lit(&E.out, body, n);
    OUT_LIT(&E.out, "}\n");
}

/* The end every record shares: duration, worker pid (null if none). */
static void put_tail(tpar_buf *b, double dur, pid_t pid)
{
    OUT_LIT(b, ",\"duration\":");
    out_secs(b, dur);
    OUT_LIT(b, ",\"worker\":");
    if (pid)
        out_u64(b, (uint64_t)pid);
    else
        OUT_LIT(b, "null");
    OUT_LIT(b, "}\n");
}

static void stream_record(const struct job *j, int status, const char *body, size_t n,
                          double dur, pid_t pid)
{
    tpar_buf *b = &E.out;
    OUT_LIT(b, "{\"type\":\"result\",\"id\":");
    put_id(b, j);
    OUT_LIT(b, ",\"seq\":");
    out_u64(b, j->seq);
    if (status == ST_OK) {
        OUT_LIT(b, ",\"status\":\"ok\",\"value\":");
    } else {
        OUT_LIT(b, ",\"status\":\"");
        out_lit(b, status_names[status], strlen(status_names[status]));
        OUT_LIT(b, "\",\"error\":");
    }
    out_lit(b, body, n);
    OUT_LIT(b, ",\"attempts\":");
    out_u64(b, (uint64_t)j->attempts);
    put_tail(b, dur, pid);
}

static void joblog_attempt(const struct job *j, int status, double dur, pid_t pid)
{
    tpar_buf *b = &E.log;
    OUT_LIT(b, "{\"type\":\"attempt\",\"id\":");
    put_id(b, j);
    OUT_LIT(b, ",\"seq\":");
    out_u64(b, j->seq);
    OUT_LIT(b, ",\"attempt\":");
    out_u64(b, (uint64_t)j->attempts);
    OUT_LIT(b, ",\"status\":\"");
    out_lit(b, status_names[status], strlen(status_names[status]));
    OUT_LIT(b, "\",\"start\":");
    out_secs(b, j->start > 0 ? E.wall0 + (j->start - E.t0) : 0);
    put_tail(b, dur, pid);
}

void job_attempt_done(struct job *j, int status, const char *body, size_t n,
                      double duration, pid_t pid)
{
    if (pid)
        j->attempts++;
    if (E.log_fd >= 0 && pid)
        joblog_attempt(j, status, duration, pid);
    if (status != ST_OK && pid && (E.o->retry_on >> status & 1) &&
        j->attempts <= E.o->retries && E.stop == STOP_NONE) {
        jobq_push_front(&E.pending, j);
        return;
    }
    if (E.stop != STOP_PIPE) {
        size_t start = E.out.len;
        if (E.o->mode == MODE_RUN)
            run_record(status, body, n);
        else
            stream_record(j, status, body, n, duration, pid);
        record_placed(j->seq, start);
    }
    count(status);
    free(j);
}

void record_bad_input(uint64_t seq, uint64_t line, const char *msg)
{
    tpar_buf *b = &E.out;
    size_t start = b->len;
    OUT_LIT(b, "{\"type\":\"result\",\"id\":");
    out_u64(b, seq);
    OUT_LIT(b, ",\"seq\":");
    out_u64(b, seq);
    OUT_LIT(b, ",\"status\":\"bad_input\",\"error\":{\"type\":\"BadInput\",\"message\":");
    out_jstr(b, msg, strlen(msg));
    OUT_LIT(b, ",\"traceback\":null},\"line\":");
    out_u64(b, line);
    if (strcmp(E.in.name, "-")) {
        OUT_LIT(b, ",\"file\":");
        out_jstr(b, E.in.name, strlen(E.in.name));
    }
    OUT_LIT(b, ",\"attempts\":0,\"duration\":0.0,\"worker\":null}\n");
    record_placed(seq, start);
    count(ST_BAD_INPUT);
}

static void cancel_pending(void)
{
    static const char body[] =
        "{\"type\":\"Cancelled\",\"message\":\"job cancelled before it started\","
                "\"traceback\":null}";
    struct job *j;
    while ((j = jobq_pop(&E.pending)))
        job_attempt_done(j, ST_CANCELLED, body, sizeof body - 1, 0, 0);
}

/* ------------------------------------------------------------ stopping */

void engine_stop(int how)
{
    if (how <= E.stop)
        return;
    E.stop = how;
    input_stop();
    if (how == STOP_PIPE) { /* nobody reads the records any more */
        E.out.len = 0;
        struct job *j;
        while ((j = jobq_pop(&E.pending)))
            free(j);
        pool_kill_all(ST_CANCELLED);
        return;
    }
    cancel_pending();
    if (how >= STOP_NOW)
        pool_kill_all(ST_CANCELLED);
}

void engine_fatal(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cli_vwarn(fmt, ap);
    va_end(ap);
    E.fatal = 1;
    engine_stop(STOP_NOW);
}

static void on_signal(uv_signal_t *h, int signo)
{
    if (!E.signo)
        E.signo = signo;
    if (E.stop == STOP_NONE) {
        if (!E.o->quiet)
            cli_warn("%s: no new jobs; waiting for %llu running job(s) "
                     "(send it again to kill them)",
                     signo == SIGINT ? "interrupted" : "terminated",
                     (unsigned long long)E.inflight);
        engine_stop(STOP_SOON);
    } else if (E.stop == STOP_SOON) {
        if (!E.o->quiet)
            cli_warn("killing %llu running job(s)", (unsigned long long)E.inflight);
        engine_stop(STOP_NOW);
    }
}

/* ------------------------------------------------------------- progress */

static void progress_line(int final)
{
    double el = tpar_now() - E.t0;
    double rate = el > 0 ? E.finished / el : 0;
    int color = !getenv("NO_COLOR") || !*getenv("NO_COLOR");
    char eta[64] = "";
    if (E.o->total && rate > 0 && E.o->total > E.finished + E.skipped) {
        double left = (double)(E.o->total - E.finished - E.skipped) / rate;
        snprintf(eta, sizeof eta, ", ETA %d:%02d", (int)(left / 60), (int)left % 60);
    }
    char total[32] = "";
    if (E.o->total)
        snprintf(total, sizeof total, "/%llu", (unsigned long long)E.o->total);
    fprintf(stderr, "\r%stpar: %llu%s done, %s%llu failed%s, %llu running, %.0f/s%s%s",
            color ? "\033[K" : "", (unsigned long long)(E.finished + E.skipped), total,
            color && E.failed ? "\033[31m" : "", (unsigned long long)E.failed,
            color && E.failed ? "\033[0m" : "", (unsigned long long)E.inflight, rate, eta,
            final ? "\n" : "");
}

static void on_progress(uv_timer_t *t)
{
    progress_line(0);
}

/* ----------------------------------------------------------------- loop */

static int all_done(void)
{
    return E.in.done && !E.pending.n && !E.inflight;
}

static void on_prepare(uv_prepare_t *h)
{
    if (E.stop != STOP_PIPE) {
        input_pump();
        pool_dispatch();
        pool_flush();
    }
    if (all_done())
        pool_close_idle();
    output_flush();
    if (all_done() && E.nworkers == 0)
        uv_stop(E.loop);
}

/* --------------------------------------------------------------- set-up */

static char *worker_path(void)
{
    const char *env = getenv("TPAR_WORKER");
    if (env && *env)
        return strdup(env);
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0)
        return strdup("tpar-worker");
    self[n] = 0;
    char *dir = dirname(self);
    static const char *const cands[] = {"/tpar-worker", "/../pyworker/tpar-worker"};
    for (size_t i = 0; i < 2; i++) {
        char *p = malloc(strlen(dir) + strlen(cands[i]) + 1);
        if (!p)
            return NULL;
        strcpy(p, dir);
        strcat(p, cands[i]);
        if (access(p, X_OK) == 0)
            return p;
        free(p);
    }
    char *p = malloc(strlen(dir) + 16);
    if (p)
        sprintf(p, "%s/tpar-worker", dir);
    return p;
}

static void build_wargv(void)
{
    struct opts *o = E.o;
    char **v = calloc((size_t)(2 * o->npaths + 12), sizeof *v);
    int n = 0;
    if (!v || !(v[n++] = worker_path()))
        cli_die(EXIT_USAGE, "out of memory");
    v[n++] = "--pdeathsig";
    v[n++] = "--cwd-path";
    for (int i = 0; i < o->npaths; i++) {
        v[n++] = "-I";
        v[n++] = (char *)o->paths[i];
    }
    if (o->init) {
        v[n++] = "--init";
        v[n++] = (char *)o->init;
    }
    if (o->max_tasks) {
        static char buf[32];
        snprintf(buf, sizeof buf, "%ld", o->max_tasks);
        v[n++] = "--max-tasks";
        v[n++] = buf;
    }
    v[n] = NULL;
    E.wargv = v;
    if (!o->forkserver)
        return;
    char **z = calloc((size_t)n + 4, sizeof *z);
    if (!z)
        cli_die(EXIT_USAGE, "out of memory");
    memcpy(z, v, (size_t)n * sizeof *z);
    z[n++] = "--zygote";
    if (o->preload) {
        z[n++] = "--preload";
        z[n++] = (char *)o->preload;
    }
    E.zargv = z;
}

static int same_file(const char *a, const char *b)
{
    struct stat sa, sb;
    return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev &&
           sa.st_ino == sb.st_ino;
}

/* Appending to a file whose last line was cut by a killed run: start on a
 * fresh line so records never join. */
static void fresh_line(int fd)
{
    char c;
    off_t end = lseek(fd, 0, SEEK_END);
    if (end > 0 && pread(fd, &c, 1, end - 1) == 1 && c != '\n')
        (void)!write(fd, "\n", 1);
}

/* An output that is also an input would be truncated before it is read. */
static void refuse_input_as_output(const char *path, const char *opt)
{
    for (int i = 0; i < E.o->nfiles; i++)
        if (strcmp(E.o->files[i], "-") != 0 && same_file(path, E.o->files[i]))
            cli_die(EXIT_USAGE, "%s %s is also an input file", opt, path);
}

static int open_out(const char *path, int append)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | (append ? O_APPEND : O_TRUNC), 0666);
    if (fd < 0)
        cli_die(EXIT_USAGE, "cannot write %s: %s", path, strerror(errno));
    if (append)
        fresh_line(fd);
    return fd;
}

static void open_files(void)
{
    struct opts *o = E.o;
    if (o->resume) {
        int err = 0;
        E.resume = idset_load(o->resume, &err);
        if (!E.resume)
            cli_die(EXIT_USAGE, "cannot read --resume %s: %s", o->resume, tpar_strerror(err));
    }
    if (o->output)
        refuse_input_as_output(o->output, "-o");
    if (o->joblog)
        refuse_input_as_output(o->joblog, "--joblog");
    E.out_fd = 1;
    if (o->output)
        E.out_fd = open_out(o->output, o->resume && same_file(o->output, o->resume));
    E.log_fd = -1;
    if (o->joblog)
        E.log_fd = open_out(o->joblog, o->resume != NULL);
}

static void setup_loop(void)
{
    E.loop = uv_default_loop();
    uv_prepare_init(E.loop, &E.prep);
    uv_prepare_start(&E.prep, on_prepare);
    uv_signal_init(E.loop, &E.sigint);
    uv_signal_start(&E.sigint, on_signal, SIGINT);
    uv_signal_init(E.loop, &E.sigterm);
    uv_signal_start(&E.sigterm, on_signal, SIGTERM);
    int prog = E.o->progress < 0 ? isatty(2) : E.o->progress;
    if (prog && !E.o->quiet && E.o->mode != MODE_RUN) {
        E.progress_on = 1;
        uv_timer_init(E.loop, &E.progress);
        uv_timer_start(&E.progress, on_progress, 200, 200);
    }
}

static void summary(void)
{
    tpar_buf *b = &E.out;
    OUT_LIT(b, "{\"type\":\"summary\",\"total\":");
    out_u64(b, E.finished); /* the result records; skipped jobs have none */
    for (int s = 0; s < ST_COUNT; s++) {
        OUT_LIT(b, ",\"");
        out_lit(b, status_names[s], strlen(status_names[s]));
        OUT_LIT(b, "\":");
        out_u64(b, E.count[s]);
    }
    OUT_LIT(b, ",\"skipped\":");
    out_u64(b, E.skipped);
    OUT_LIT(b, ",\"workers\":");
    out_u64(b, E.started_workers);
    OUT_LIT(b, ",\"wall\":");
    out_secs(b, tpar_now() - E.t0);
    OUT_LIT(b, "}\n");
}

static int exit_status(void)
{
    if (E.stop == STOP_PIPE) {
        signal(SIGPIPE, SIG_DFL);
        raise(SIGPIPE);
        return 141;
    }
    if (E.fatal)
        return EXIT_USAGE;
    if (E.signo)
        return 128 + E.signo;
    if (E.o->mode == MODE_RUN)
        return E.failed ? 1 : 0;
    return E.failed > 100 ? 101 : (int)E.failed;
}

int stream_main(struct opts *o)
{
    E.o = o;
    E.t0 = tpar_now();
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    E.wall0 = (double)ts.tv_sec + ts.tv_nsec / 1e9;
    E.rbase = 1;
    E.in.name = "-";
    signal(SIGPIPE, SIG_IGN);
    input_hide_stdin();
    if (o->mode == MODE_RUN) {
        job_for_run();
        E.in.done = 1;
    } else {
        input_init();
    }
    open_files();
    if (o->keep_order) {
        E.rcap = REORDER_WINDOW;
        E.rslot = calloc(E.rcap, sizeof *E.rslot);
        E.rlen = calloc(E.rcap, sizeof *E.rlen);
        if (!E.rslot || !E.rlen)
            cli_die(EXIT_USAGE, "out of memory");
    }
    build_wargv();
    setup_loop();
    pool_prestart(o->prestart);
    uv_run(E.loop, UV_RUN_DEFAULT);
    if (E.zargv)
        tpar_zygote_stop(&E.zygote);
    if (E.o->summary && E.stop != STOP_PIPE)
        summary();
    output_flush();
    if (E.progress_on)
        progress_line(1);
    return exit_status();
}
