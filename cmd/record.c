/* Records: formatting each job's result record, holding them back in -k
 * mode until every earlier one is out, counting them (and --halt), the
 * joblog, the summary, and writing the output in large batches.  Also the
 * run's stop state, which every layer reads. */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "engine.h"
#include "jsonline.h"

struct run RUN;
struct recorder R;

#define OUT_FLUSH_AT (256 * 1024)
#define REORDER_WINDOW 4096

static char skipped_marker;

void run_stop(int how)
{
    RUN.request_stop(how);
}

void run_fatal(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cli_vwarn(fmt, ap);
    va_end(ap);
    RUN.request_fatal();
}

/* Out of memory (alloc.c): the whole records formatted so far go out
 * before tpar exits, not the one it was formatting (each record is one
 * line, its newline written last); no allocation, errors ignored. */
static void write_raw(int fd, const tpar_buf *b)
{
    const uint8_t *nl = b->len ? memrchr(b->data, '\n', b->len) : NULL;
    size_t len = nl ? (size_t)(nl - b->data) + 1 : 0;
    for (size_t off = 0; fd >= 0 && off < len;) {
        ssize_t n = write(fd, b->data + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return;
        off += (size_t)n;
    }
}

static void flush_on_oom(void)
{
    if (RUN.stop != STOP_PIPE)
        write_raw(R.out_fd, &R.out);
    write_raw(R.log_fd, &R.log);
}

void record_init(const struct opts *o, int out_fd, int log_fd)
{
    R.o = o;
    R.out_fd = out_fd;
    R.log_fd = log_fd;
    R.rbase = 1;
    if (o->keep_order) {
        R.rcap = REORDER_WINDOW;
        R.rslot = xcalloc(R.rcap, sizeof *R.rslot);
        R.rlen = xcalloc(R.rcap, sizeof *R.rlen);
    }
    cli_oom_flush = flush_on_oom;
}

int record_window_has_room(uint64_t seq)
{
    return !R.o->keep_order || seq + 1 < R.rbase + R.rcap;
}

/* ------------------------------------------------------------- output
 *
 * The records go out from a thread of their own, the writer, with
 * blocking writes: a reader that stops reading (a full pipe, a terminal
 * on hold, a slow disk) stalls the writer, never the loop, so timeouts,
 * signals and worker deaths are handled on time.  (O_NONBLOCK on stdout
 * is not ours to set: the open file is shared with the shell and the
 * other programs of the pipeline.)  The loop hands the records over in
 * batches; while more than OUT_BACKLOG bytes wait, input_wants_more()
 * says no, so memory stays bounded by the jobs already running.  The
 * first write error is reported once, and the output is then dropped. */

#define OUT_BACKLOG (4 << 20)

static struct {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    tpar_buf q;               /* handed over, not yet taken by the writer */
    tpar_buf spare;           /* an empty buffer to swap in */
    size_t writing;           /* bytes the writer is writing now */
    size_t backlog;           /* q.len + writing, read without the lock */
    int err;                  /* errno of the failed write, 0 */
    int quit;
    int running;
    uv_async_t wake;          /* the writer tells the loop: drained, or failed */
    int reported;             /* the error was reported */
} WR = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

/* Writes b whole, blocking; 0 or an errno. */
static int write_all(int fd, const tpar_buf *b)
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
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            poll(&p, 1, 100);
            continue;
        }
        return n < 0 ? errno : EIO;
    }
    return 0;
}

static void *writer(void *arg)
{
    pthread_mutex_lock(&WR.mu);
    for (;;) {
        while (!WR.q.len && !WR.quit)
            pthread_cond_wait(&WR.cv, &WR.mu);
        if (!WR.q.len)
            break;
        tpar_buf mine = WR.q;
        WR.q = WR.spare;
        WR.spare = (tpar_buf){0};
        WR.writing = mine.len;
        __atomic_store_n(&WR.backlog, WR.writing, __ATOMIC_RELAXED);
        pthread_mutex_unlock(&WR.mu);
        int err = WR.err ? 0 : write_all(R.out_fd, &mine);
        pthread_mutex_lock(&WR.mu);
        mine.len = 0;
        if (!WR.spare.base)
            WR.spare = mine;
        else
            tpar_buf_free(&mine);
        WR.writing = 0;
        if (err && !WR.err)
            WR.err = err;
        if (WR.err)
            WR.q.len = 0;
        __atomic_store_n(&WR.backlog, WR.q.len, __ATOMIC_RELAXED);
        if (!WR.quit)
            uv_async_send(&WR.wake);
        pthread_cond_broadcast(&WR.cv); /* for output_finish */
    }
    pthread_mutex_unlock(&WR.mu);
    return NULL;
}

/* Reports the output's write error, once: EPIPE stops the run quietly. */
static void report_out_error(int err)
{
    if (!err || WR.reported)
        return;
    WR.reported = 1;
    if (err == EPIPE) {
        run_stop(STOP_PIPE);
        return;
    }
    run_fatal("cannot write %s: %s", R.o->output ? R.o->output : "stdout", strerror(err));
}

static void on_writer(uv_async_t *h)
{
    pthread_mutex_lock(&WR.mu);
    int err = WR.err;
    pthread_mutex_unlock(&WR.mu);
    report_out_error(err); /* and the loop runs prepare: input may resume */
}

void output_start(uv_loop_t *loop)
{
    sigset_t all, old;
    uv_async_init(loop, &WR.wake, on_writer);
    uv_unref((uv_handle_t *)&WR.wake);
    sigfillset(&all); /* signals are the loop's */
    pthread_sigmask(SIG_SETMASK, &all, &old);
    WR.running = pthread_create(&WR.thread, NULL, writer, NULL) == 0;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}

int output_backed_up(void)
{ /* once per input line: no lock */
    return __atomic_load_n(&WR.backlog, __ATOMIC_RELAXED) + R.out.len > OUT_BACKLOG;
}

static void log_flush(void)
{
    if (!R.log.len)
        return;
    if (!R.log_dead) {
        int err = write_all(R.log_fd, &R.log);
        if (err) {
            R.log_dead = 1; /* said once */
            run_fatal("cannot write %s: %s", R.o->joblog, strerror(err));
        }
    }
    R.log.len = 0;
}

void output_flush(void)
{
    log_flush();
    if (!R.out.len)
        return;
    if (RUN.stop == STOP_PIPE || WR.reported) {
        R.out.len = 0;
        return;
    }
    if (RUN.before_output)
        RUN.before_output();
    if (!WR.running) { /* before the loop, or no thread: write it here */
        report_out_error(write_all(R.out_fd, &R.out));
        R.out.len = 0;
        return;
    }
    pthread_mutex_lock(&WR.mu);
    int err = WR.err;
    if (!err && !WR.q.len) { /* hand the buffer over: no copy */
        tpar_buf t = WR.q;
        WR.q = R.out;
        R.out = t;
    } else if (!err && tpar_buf_append(&WR.q, R.out.data, R.out.len) < 0) {
        err = ENOMEM;
    }
    R.out.len = 0;
    __atomic_store_n(&WR.backlog, WR.q.len + WR.writing, __ATOMIC_RELAXED);
    pthread_cond_broadcast(&WR.cv);
    pthread_mutex_unlock(&WR.mu);
    report_out_error(err);
}

void output_finish(void)
{
    output_flush();
    if (!WR.running)
        return;
    pthread_mutex_lock(&WR.mu);
    WR.quit = 1;
    pthread_cond_broadcast(&WR.cv);
    pthread_mutex_unlock(&WR.mu);
    pthread_join(WR.thread, NULL);
    WR.running = 0;
    report_out_error(WR.err);
    uv_close((uv_handle_t *)&WR.wake, NULL);
    tpar_buf_free(&WR.q);
    tpar_buf_free(&WR.spare);
}

void record_drop_output(void)
{
    R.out.len = 0;
}

/* Writes the records held for seq numbers from rbase on, in order. */
static void reorder_drain(void)
{
    for (;;) {
        size_t k = R.rbase % R.rcap;
        char *r = R.rslot[k];
        if (!r)
            return;
        if (r != &skipped_marker) {
            out_lit(&R.out, r, R.rlen[k]);
            R.held -= R.rlen[k];
            free(r);
        }
        R.rslot[k] = NULL;
        R.rbase++;
    }
}

/* The record just formatted at R.out[start..] belongs to seq: in -k mode
 * it is held back until every earlier seq has been written. */
static void record_placed(uint64_t seq, size_t start)
{
    if (R.o->keep_order) {
        if (seq != R.rbase) {
            size_t n = R.out.len - start;
            char *copy = xmalloc(n);
            memcpy(copy, R.out.data + start, n);
            R.rslot[seq % R.rcap] = copy;
            R.rlen[seq % R.rcap] = (uint32_t)n;
            R.held += n;
            R.out.len = start;
            return;
        }
        R.rbase++;
        reorder_drain();
    }
    if (R.out.len >= OUT_FLUSH_AT)
        output_flush();
}

void record_skipped(uint64_t seq)
{
    R.skipped++;
    if (R.o->keep_order) {
        if (seq == R.rbase) {
            R.rbase++;
            reorder_drain();
        } else {
            R.rslot[seq % R.rcap] = &skipped_marker;
        }
    }
}

static void count(int status)
{
    R.count[status]++;
    R.finished++;
    if (status == ST_OK)
        return;
    R.failed++;
    if (!R.o->halt || RUN.stop != STOP_NONE)
        return;
    int hit = R.o->halt_pct ? R.failed * 100.0 >= R.o->halt_fail * (double)R.finished
                            : (double)R.failed >= R.o->halt_fail;
    if (hit) {
        if (!R.o->quiet)
            cli_warn("--halt: %llu failed job(s); %s", (unsigned long long)R.failed,
                     R.o->halt == HALT_NOW ? "killing the running jobs"
                                           : "waiting for the running jobs");
        run_stop(R.o->halt == HALT_NOW ? STOP_NOW : STOP_SOON);
    }
}

/* ------------------------------------------------------ distinct errors */

/* The failures of the run by kind (status, error type, the first line of
 * the message), for the report at the end: a misspelt module on a long
 * stream is one line there, with its count, not a scroll of records. */
#define ERR_KINDS 64
#define ERR_TEXT 200

static struct errkind {
    char text[ERR_TEXT];
    uint64_t n;
} errs[ERR_KINDS];
static int nerrs;
static uint64_t errs_other; /* failures of kinds past ERR_KINDS */

/* Appends the JSON string literal lit (validated) decoded, first line
 * only, to buf[*at..cap); digit runs become N when squash is set (tpar's
 * own messages name pids and seconds). */
static void put_text(char *buf, size_t cap, size_t *at, const char *lit, size_t n, int squash)
{
    char small[ERR_TEXT * 2], *tmp = n <= sizeof small ? small : malloc(n);
    if (!tmp)
        return;
    long len = tpar_jsonline_unescape(lit, n, tmp);
    for (long i = 0; i < len && *at + 1 < cap; i++) {
        char c = tmp[i];
        if (c == '\n' || c == '\r')
            break;
        if (squash && c >= '0' && c <= '9') {
            while (i + 1 < len && ((tmp[i + 1] >= '0' && tmp[i + 1] <= '9') || tmp[i + 1] == '.'))
                i++;
            c = 'N';
        }
        buf[(*at)++] = c;
    }
    if (tmp != small)
        free(tmp);
}

static void tally_error(int status, const char *body, size_t n)
{
    static const char *const keys[] = {"type", "message"};
    tpar_jsonline_span v[2];
    tpar_jsonline_error err;
    char text[ERR_TEXT];
    size_t at = 0;
    const char *st = status_names[status];
    memcpy(text, st, strlen(st));
    at = strlen(st);
    text[at++] = ' ';
    if (tpar_jsonline_object(body, n, keys, 2, v, &err) == 0) {
        if (v[0].type == TPAR_JSON_STRING)
            put_text(text, sizeof text, &at, body + v[0].off, v[0].len, 0);
        if (v[1].type == TPAR_JSON_STRING && at + 2 < sizeof text) {
            text[at++] = ':';
            text[at++] = ' ';
            const char *m = body + v[1].off;
            size_t mn = v[1].len;
            put_text(text, sizeof text, &at, m, mn, status != ST_ERROR);
        }
    }
    while (at > 0 && ((unsigned char)text[at - 1] & 0xC0) == 0x80 && at + 1 >= sizeof text)
        at--; /* a character cut at the end */
    text[at] = 0;
    for (int i = 0; i < nerrs; i++)
        if (!strcmp(errs[i].text, text)) {
            errs[i].n++;
            return;
        }
    if (nerrs == ERR_KINDS) {
        errs_other++;
        return;
    }
    memcpy(errs[nerrs].text, text, at + 1);
    errs[nerrs++].n = 1;
}

/* "BadInput: FILE, line 3, column 2: invalid JSON: ..." -> the kind
 * without the place. */
static void tally_bad_input(const char *msg)
{
    const char *p = strstr(msg, "line ");
    const char *colon = p ? strstr(p, ": ") : NULL;
    char text[ERR_TEXT];
    snprintf(text, sizeof text, "bad_input BadInput: %s", colon ? colon + 2 : msg);
    for (int i = 0; i < nerrs; i++)
        if (!strcmp(errs[i].text, text)) {
            errs[i].n++;
            return;
        }
    if (nerrs == ERR_KINDS) {
        errs_other++;
        return;
    }
    strcpy(errs[nerrs].text, text);
    errs[nerrs++].n = 1;
}

static int by_count(const void *a, const void *b)
{
    const struct errkind *x = a, *y = b;
    return x->n < y->n ? 1 : x->n > y->n ? -1 : strcmp(x->text, y->text);
}

#define ERR_SHOWN 10

void record_report_errors(void)
{
    if (!R.failed || R.o->quiet || R.o->mode == MODE_RUN)
        return;
    qsort(errs, (size_t)nerrs, sizeof *errs, by_count);
    fprintf(stderr, "tpar: %llu of %llu job(s) failed:\n", (unsigned long long)R.failed,
            (unsigned long long)R.finished);
    uint64_t rest = errs_other;
    int rest_kinds = errs_other ? 1 : 0;
    for (int i = 0; i < nerrs; i++) {
        if (i < ERR_SHOWN)
            fprintf(stderr, "tpar: %8llu  %s\n", (unsigned long long)errs[i].n, errs[i].text);
        else
            rest += errs[i].n, rest_kinds++;
    }
    if (rest)
        fprintf(stderr, "tpar: %8llu  (%s%d other kind%s of error)\n",
                (unsigned long long)rest, errs_other ? "at least " : "", rest_kinds,
                rest_kinds == 1 && !errs_other ? "" : "s");
}

/* ------------------------------------------------------------ records */

static void put_id(tpar_buf *b, const struct job *j)
{
    out_lit(b, j->data, j->id_len);
}

/* --stats and --capture: the members the job's worker sent. */
static void put_extras(tpar_buf *b, const struct job *j)
{
    if (j->stats_len) {
        OUT_LIT(b, ",");
        out_lit(b, j->stats, j->stats_len);
    }
    if (j->output_len && R.o->capture) {
        OUT_LIT(b, ",");
        out_lit(b, j->output, j->output_len);
    }
}

static void run_record(const struct job *j, int status, const char *body, size_t n)
{
    OUT_LIT(&R.out, "{\"type\":\"result\",\"status\":\"");
    out_lit(&R.out, status_names[status], strlen(status_names[status]));
    if (status == ST_OK)
        OUT_LIT(&R.out, "\",\"value\":");
    else
        OUT_LIT(&R.out, "\",\"error\":");
    out_lit(&R.out, body, n);
    put_extras(&R.out, j);
    OUT_LIT(&R.out, "}\n");
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
    tpar_buf *b = &R.out;
    OUT_LIT(b, "{\"type\":\"result\",\"id\":");
    put_id(b, j);
    if (j->meta_len) {
        OUT_LIT(b, ",\"meta\":");
        out_lit(b, j->data + j->id_len + j->payload_len, j->meta_len);
    }
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
    put_extras(b, j);
    OUT_LIT(b, ",\"attempts\":");
    out_u64(b, (uint64_t)j->attempts);
    put_tail(b, dur, pid);
}

/* A failed attempt's error type, and how its worker ended when it died:
 * copied from the error body into the joblog line. */
static void put_attempt_error(tpar_buf *b, const char *body, size_t n)
{
    static const char *const keys[] = {"type", "exit", "signal"};
    tpar_jsonline_span v[3];
    tpar_jsonline_error err;
    if (!n || tpar_jsonline_object(body, n, keys, 3, v, &err) < 0)
        return;
    if (v[0].type == TPAR_JSON_STRING) {
        OUT_LIT(b, ",\"error\":");
        out_lit(b, body + v[0].off, v[0].len);
    }
    if (v[1].type == TPAR_JSON_NUMBER) {
        OUT_LIT(b, ",\"exit\":");
        out_lit(b, body + v[1].off, v[1].len);
    }
    if (v[2].type == TPAR_JSON_NUMBER) {
        OUT_LIT(b, ",\"signal\":");
        out_lit(b, body + v[2].off, v[2].len);
    }
}

void record_attempt(const struct job *j, int status, const char *body, size_t n, double dur,
                    pid_t pid)
{
    if (R.log_fd < 0)
        return;
    tpar_buf *b = &R.log;
    OUT_LIT(b, "{\"type\":\"attempt\",\"id\":");
    put_id(b, j);
    OUT_LIT(b, ",\"seq\":");
    out_u64(b, j->seq);
    OUT_LIT(b, ",\"attempt\":");
    out_u64(b, (uint64_t)j->attempts);
    OUT_LIT(b, ",\"status\":\"");
    out_lit(b, status_names[status], strlen(status_names[status]));
    OUT_LIT(b, "\"");
    if (status != ST_OK)
        put_attempt_error(b, body, n);
    OUT_LIT(b, ",\"start\":");
    out_secs(b, j->start > 0 ? R.wall0 + (j->start - R.t0) : 0);
    put_tail(b, dur, pid);
}

void record_result(const struct job *j, int status, const char *body, size_t n,
                   double duration, pid_t pid)
{
    if (RUN.stop != STOP_PIPE) {
        size_t start = R.out.len;
        if (R.o->mode == MODE_RUN)
            run_record(j, status, body, n);
        else
            stream_record(j, status, body, n, duration, pid);
        record_placed(j->seq, start);
    }
    if (status != ST_OK)
        tally_error(status, body, n);
    count(status);
}

/* --dry-run: what would run, in place of the job's result record. */
void record_dry_run(const struct job *j)
{
    if (RUN.stop == STOP_PIPE)
        return;
    tpar_buf *b = &R.out;
    size_t start = b->len;
    const char *p = j->data + j->id_len, *end = p + j->payload_len;
    const char *part[3] = {p, "", ""};
    size_t len[3] = {j->payload_len, 0, 0};
    for (int i = 0; i < 2; i++) { /* fn NUL args NUL kwargs */
        const char *nul = memchr(part[i], 0, (size_t)(end - part[i]));
        if (!nul)
            break;
        len[i] = (size_t)(nul - part[i]);
        part[i + 1] = nul + 1;
        len[i + 1] = (size_t)(end - nul - 1);
    }
    OUT_LIT(b, "{\"type\":\"dry_run\",\"id\":");
    put_id(b, j);
    if (j->meta_len) {
        OUT_LIT(b, ",\"meta\":");
        out_lit(b, end, j->meta_len);
    }
    OUT_LIT(b, ",\"seq\":");
    out_u64(b, j->seq);
    OUT_LIT(b, ",\"fn\":");
    out_jstr(b, part[0], len[0]);
    OUT_LIT(b, ",\"args\":");
    if (len[1])
        out_lit(b, part[1], len[1]);
    else
        OUT_LIT(b, "[]");
    OUT_LIT(b, ",\"kwargs\":");
    if (len[2])
        out_lit(b, part[2], len[2]);
    else
        OUT_LIT(b, "{}");
    if (j->timeout > 0) {
        OUT_LIT(b, ",\"timeout\":");
        out_secs(b, j->timeout);
    }
    OUT_LIT(b, "}\n");
    record_placed(j->seq, start);
}

void record_bad_input(uint64_t seq, uint64_t line, const char *file, const char *msg)
{
    tpar_buf *b = &R.out;
    size_t start = b->len;
    OUT_LIT(b, "{\"type\":\"result\",\"id\":");
    out_u64(b, seq);
    OUT_LIT(b, ",\"seq\":");
    out_u64(b, seq);
    OUT_LIT(b, ",\"status\":\"bad_input\",\"error\":{\"type\":\"BadInput\",\"message\":");
    out_jstr(b, msg, strlen(msg));
    OUT_LIT(b, ",\"traceback\":null},\"line\":");
    out_u64(b, line);
    if (strcmp(file, "-")) {
        OUT_LIT(b, ",\"file\":");
        out_jstr(b, file, strlen(file));
    }
    OUT_LIT(b, ",\"attempts\":0,\"duration\":0.0,\"worker\":null}\n");
    record_placed(seq, start);
    tally_bad_input(msg);
    count(ST_BAD_INPUT);
}

void record_summary(uint64_t workers)
{
    tpar_buf *b = &R.out;
    OUT_LIT(b, "{\"type\":\"summary\",\"total\":");
    out_u64(b, R.finished); /* the result records; skipped jobs have none */
    for (int s = 0; s < ST_COUNT; s++) {
        OUT_LIT(b, ",\"");
        out_lit(b, status_names[s], strlen(status_names[s]));
        OUT_LIT(b, "\":");
        out_u64(b, R.count[s]);
    }
    OUT_LIT(b, ",\"skipped\":");
    out_u64(b, R.skipped);
    OUT_LIT(b, ",\"workers\":");
    out_u64(b, workers);
    OUT_LIT(b, ",\"wall\":");
    out_secs(b, tpar_now() - R.t0);
    OUT_LIT(b, "}\n");
}
