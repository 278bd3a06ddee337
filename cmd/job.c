/* Jobs: from an input line (stream and map modes) or the command line
 * (tpar run) to a struct job holding the id text and the frame payload;
 * the queue of pending jobs; the end of an attempt (retry, or record).
 * The line is scanned once (core/jsonline.c); values are copied as raw
 * JSON text, never decoded here. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine.h"
#include "jsonline.h"

struct jobs J;

/* A job whose text is the id, the payload (the parts), then the job
 * line's "meta" value (metan 0: none). */
static struct job *job_make(uint64_t seq, const char *id, size_t idn, const char *const parts[],
                            const size_t lens[], int nparts, const char *meta, size_t metan)
{
    size_t total = idn + metan;
    for (int i = 0; i < nparts; i++)
        total += lens[i];
    struct job *j = xmalloc(sizeof *j + total);
    J.bytes += sizeof *j + total;
    j->next = NULL;
    j->seq = seq;
    j->timeout = J.o->timeout;
    j->start = 0;
    j->attempts = 0;
    j->isolate = 0;
    j->id_len = (uint32_t)idn;
    j->payload_len = (uint32_t)(total - idn - metan);
    j->meta_len = (uint32_t)metan;
    j->stats = j->output = NULL;
    j->stats_len = j->output_len = 0;
    char *p = j->data;
    memcpy(p, id, idn);
    p += idn;
    for (int i = 0; i < nparts; i++) {
        memcpy(p, parts[i], lens[i]);
        p += lens[i];
    }
    if (metan)
        memcpy(p, meta, metan);
    return j;
}

void job_free(struct job *j)
{
    J.bytes -= sizeof *j + j->id_len + j->payload_len + j->meta_len; /* as job_make added */
    free(j->stats);
    free(j->output);
    free(j);
}

void job_set_extra(struct job *j, int kind, const uint8_t *p, size_t n)
{
    char **slot = kind == TPAR_EXTRA_STATS ? &j->stats : &j->output;
    uint32_t *len = kind == TPAR_EXTRA_STATS ? &j->stats_len : &j->output_len;
    free(*slot);
    *slot = NULL;
    *len = 0;
    /* Members of an object: checked once here, then copied as they are. */
    char *text = malloc(n + 2);
    if (!text)
        return;
    text[0] = '{';
    memcpy(text + 1, p, n);
    text[n + 1] = '}';
    tpar_jsonline_span v;
    tpar_jsonline_error err;
    if (!n || tpar_jsonline_value(text, n + 2, &v, &err) < 0 || v.type != TPAR_JSON_OBJECT) {
        free(text);
        return;
    }
    memmove(text, text + 1, n);
    *slot = text;
    *len = (uint32_t)n;
}

/* --tag: the job's captured output on stderr, each line prefixed with its
 * id and a tab, in one write. */
static void tag_output(const struct job *j)
{
    static const char *const keys[] = {"stdout", "stderr"};
    tpar_jsonline_span v[2];
    tpar_jsonline_error err;
    char *obj = malloc(j->output_len + 2);
    if (!obj)
        return;
    obj[0] = '{';
    memcpy(obj + 1, j->output, j->output_len);
    obj[j->output_len + 1] = '}';
    tpar_buf b = {0};
    if (tpar_jsonline_object(obj, j->output_len + 2, keys, 2, v, &err) == 0) {
        for (int i = 0; i < 2; i++) {
            if (v[i].type != TPAR_JSON_STRING || v[i].len <= 2)
                continue;
            char *text = malloc(v[i].len);
            long n = text ? tpar_jsonline_unescape(obj + v[i].off, v[i].len, text) : -1;
            for (long a = 0; a < n;) {
                const char *nl = memchr(text + a, '\n', (size_t)(n - a));
                long e = nl ? nl - text + 1 : n;
                out_lit(&b, j->data, j->id_len);
                out_lit(&b, "\t", 1);
                out_lit(&b, text + a, (size_t)(e - a));
                if (!nl)
                    out_lit(&b, "\n", 1);
                a = e;
            }
            free(text);
        }
    }
    for (size_t off = 0; off < b.len;) {
        ssize_t w = write(2, b.data + off, b.len - off);
        if (w <= 0)
            break;
        off += (size_t)w;
    }
    tpar_buf_free(&b);
    free(obj);
}

struct job *job_new(uint64_t seq, const char *id, size_t idn, const char *const parts[],
                    const size_t lens[], int nparts)
{
    return job_make(seq, id, idn, parts, lens, nparts, NULL, 0);
}

void jobq_push(struct jobq *q, struct job *j)
{
    j->next = NULL;
    if (q->tail)
        q->tail->next = j;
    else
        q->head = j;
    q->tail = j;
    q->n++;
}

void jobq_push_front(struct jobq *q, struct job *j)
{
    j->next = q->head;
    q->head = j;
    if (!q->tail)
        q->tail = j;
    q->n++;
}

struct job *jobq_pop(struct jobq *q)
{
    struct job *j = q->head;
    if (j) {
        q->head = j->next;
        if (!q->head)
            q->tail = NULL;
        q->n--;
    }
    return j;
}

static size_t u64_text(char *buf, uint64_t v)
{
    char tmp[24];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++)
        buf[i] = tmp[n - 1 - i];
    return n;
}

/* Where a line came from, for messages: its file and line number. */
struct origin {
    const char *file;         /* "-": stdin */
    uint64_t lineno;
};

/* "FILE, " when reading a named file, so records of several files differ. */
static const char *where(const struct origin *at, char *buf, size_t n)
{
    if (!at->file || !strcmp(at->file, "-"))
        return "";
    snprintf(buf, n, "%s, ", at->file);
    return buf;
}

static void bad_json(uint64_t seq, const struct origin *at, const tpar_jsonline_error *err)
{
    char msg[512], file[256];
    if (err->syntax)
        snprintf(msg, sizeof msg, "%sline %llu, column %zu: invalid JSON: %s%s",
                 where(at, file, sizeof file), (unsigned long long)at->lineno, err->pos + 1,
                 err->msg, J.o->mode == MODE_MAP ? " (--raw passes each line as a string)"
                                                 : "");
    else
        snprintf(msg, sizeof msg, "%sline %llu: %s", where(at, file, sizeof file),
                 (unsigned long long)at->lineno, err->msg);
    record_bad_input(seq, at->lineno, at->file, msg);
}

static void bad(uint64_t seq, const struct origin *at, const char *what)
{
    char msg[512], file[256];
    snprintf(msg, sizeof msg, "%sline %llu: %s", where(at, file, sizeof file),
             (unsigned long long)at->lineno, what);
    record_bad_input(seq, at->lineno, at->file, msg);
}

/* A job line with a key tpar does not know: the key is named (up to 40
 * bytes of its literal) with the keys there are. */
static void unknown_key(uint64_t seq, const struct origin *at, const char *key, size_t left)
{
    size_t n = 1;
    while (n < left && n < 40 && (key[n] != '"' || key[n - 1] == '\\'))
        n++;
    char what[160];
    snprintf(what, sizeof what,
             "unknown key %.*s%s (a job line has fn, args, kwargs, id, timeout, and meta "
             "for data of your own)", (int)n, key, n < left && key[n] == '"' ? "\"" : "...");
    bad(seq, at, what);
}

/* "MOD:FN" from a validated JSON string literal, into buf (>= n bytes);
 * returns its length or -1 when it is not MOD:FN. */
static long fn_text(const char *lit, size_t n, char *buf)
{
    long len;
    if (memchr(lit, '\\', n)) {
        len = tpar_jsonline_unescape(lit, n, buf);
        if (len < 0 || memchr(buf, 0, (size_t)len))
            return -1;
    } else {
        len = (long)n - 2;
        memcpy(buf, lit + 1, (size_t)len);
    }
    const char *colon = memchr(buf, ':', (size_t)len);
    if (!colon || colon == buf || colon == buf + len - 1)
        return -1;
    return len;
}

/* The span is a JSON number the scanner checked, of any length (a
 * generator may write 0.1 with 70 digits): strtod needs it NUL-ended. */
static int parse_timeout(const char *s, size_t n, double *out)
{
    char tmp[64], *buf = n < sizeof tmp ? tmp : malloc(n + 1);
    if (!buf)
        cli_die(EXIT_USAGE, "out of memory");
    memcpy(buf, s, n);
    buf[n] = 0;
    char *end;
    double v = strtod(buf, &end);
    int bad = *end || !(v > 0) || v > 1e9;
    if (buf != tmp)
        free(buf);
    if (bad)
        return -1;
    *out = v;
    return 0;
}

/* A job ready to run: queued, or with --dry-run shown and dropped. */
static void enqueue(struct job *j)
{
    if (J.o->dry_run) {
        record_dry_run(j);
        job_free(j);
        return;
    }
    jobq_push(&J.pending, j);
}

static void stream_line(const char *s, size_t n, uint64_t seq, const struct origin *at)
{
    tpar_jsonline_job jl;
    tpar_jsonline_error err;
    if (tpar_jsonline_job_parse(s, n, &jl, &err) < 0) {
        if (err.msg == tpar_jsonline_unknown_key)
            unknown_key(seq, at, s + err.pos, n - err.pos);
        else
            bad_json(seq, at, &err);
        return;
    }
    char fnbuf[512], *fn = jl.fn.len <= sizeof fnbuf ? fnbuf : xmalloc(jl.fn.len);
    long fnlen = fn_text(s + jl.fn.off, jl.fn.len, fn);
    char idbuf[24];
    const char *id = s + jl.id.off;
    size_t idn = jl.id.len;
    double timeout = J.o->timeout;
    if (fnlen < 0) {
        bad(seq, at, "\"fn\" must be \"MOD:FN\" (module, colon, function)");
    } else if (jl.timeout.type == TPAR_JSON_NUMBER &&
               parse_timeout(s + jl.timeout.off, jl.timeout.len, &timeout) < 0) {
        bad(seq, at, "\"timeout\" must be a number of seconds above 0");
    } else {
        if (jl.id.type == TPAR_JSON_NONE) {
            idn = u64_text(idbuf, seq);
            id = idbuf;
        }
        if (J.resume && idset_has(J.resume, id, idn)) {
            record_skipped(seq);
        } else {
            const char *parts[] = {fn, "", s + jl.args.off, "", s + jl.kwargs.off};
            const size_t lens[] = {(size_t)fnlen, 1, jl.args.len, 1, jl.kwargs.len};
            struct job *j = job_make(seq, id, idn, parts, lens, 5, s + jl.meta.off,
                                     jl.meta.len);
            j->timeout = timeout;
            enqueue(j);
        }
    }
    if (fn != fnbuf)
        free(fn);
}

static void map_line(const char *s, size_t n, uint64_t seq, const struct origin *at)
{
    static tpar_buf text; /* --raw: the line as a JSON string */
    tpar_jsonline_span v;
    tpar_jsonline_error err;
    if (J.o->raw) {
        text.len = 0;
        out_jstr(&text, s, n);
        s = (const char *)text.data;
        v = (tpar_jsonline_span){0, text.len, TPAR_JSON_STRING};
    } else if (tpar_jsonline_value(s, n, &v, &err) < 0) {
        bad_json(seq, at, &err);
        return;
    }
    if (J.o->star && v.type != TPAR_JSON_ARRAY) {
        bad(seq, at, "with --star each line must be a JSON array of arguments");
        return;
    }
    char idbuf[24];
    size_t idn = u64_text(idbuf, seq);
    if (J.resume && idset_has(J.resume, idbuf, idn)) {
        record_skipped(seq);
        return;
    }
    const char *open = J.o->star ? "" : "[", *close = J.o->star ? "" : "]";
    const char *parts[] = {J.o->fn, "", open, s + v.off, close, ""};
    const size_t lens[] = {strlen(J.o->fn), 1, strlen(open), v.len, strlen(close), 1};
    enqueue(job_new(seq, idbuf, idn, parts, lens, 6));
}

void job_from_line(const char *s, size_t n, uint64_t seq, uint64_t lineno, const char *file)
{
    const struct origin at = {file, lineno};
    if (J.o->mode == MODE_MAP)
        map_line(s, n, seq, &at);
    else
        stream_line(s, n, seq, &at);
}

static const char *check_arg(const char *opt, const char *text, int want)
{
    tpar_jsonline_span v;
    tpar_jsonline_error err;
    if (!text)
        return "";
    if (tpar_jsonline_value(text, strlen(text), &v, &err) < 0)
        cli_die(EXIT_USAGE, "%s: invalid JSON at column %zu: %s", opt, err.pos + 1, err.msg);
    if (v.type != want)
        cli_die(EXIT_USAGE, "%s: expected a JSON %s, got %.40s", opt,
                want == TPAR_JSON_ARRAY ? "array" : "object", text + v.off);
    return text;
}

int job_for_run(void)
{
    const char *args = check_arg("--args", J.o->args, TPAR_JSON_ARRAY);
    const char *kwargs = check_arg("--kwargs", J.o->kwargs, TPAR_JSON_OBJECT);
    const char *parts[] = {J.o->fn, "", args, "", kwargs};
    const size_t lens[] = {strlen(J.o->fn), 1, strlen(args), 1, strlen(kwargs)};
    enqueue(job_new(1, "1", 1, parts, lens, 5));
    return 0;
}

void job_attempt_done(struct job *j, int status, const char *body, size_t n,
                      double duration, pid_t pid)
{
    if (pid) {
        j->attempts++;
        record_attempt(j, status, body, n, duration, pid);
    }
    if (status != ST_OK && pid && (J.o->retry_on >> status & 1) &&
        j->attempts <= J.o->retries && RUN.stop == STOP_NONE) {
        jobq_push_front(&J.pending, j);
        return;
    }
    if (J.o->tag && j->output)
        tag_output(j);
    record_result(j, status, body, n, duration, pid);
    job_free(j);
}

void jobs_cancel_pending(void)
{
    static const char body[] =
        "{\"type\":\"Cancelled\",\"message\":\"job cancelled before it started\","
                "\"traceback\":null}";
    struct job *j;
    while ((j = jobq_pop(&J.pending)))
        job_attempt_done(j, ST_CANCELLED, body, sizeof body - 1, 0, 0);
}

void jobs_drop_pending(void)
{
    struct job *j;
    while ((j = jobq_pop(&J.pending)))
        job_free(j);
}
