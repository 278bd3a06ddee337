/* Command line parsing for tpar.  Every usage error is one line on stderr
 * and exit status 255. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "cli.h"
#include "jsonline.h"

#ifndef TPAR_VERSION
#define TPAR_VERSION "0.0"
#endif

static const char help_text[] =
    "usage: tpar [OPTIONS] [FILE...]           run JSON-lines jobs (stdin or FILEs)\n"
    "       tpar map MOD:FN [FILE...]           call MOD:FN on each line's JSON value\n"
    "       tpar map MOD:FN ::: VALUE... [::: VALUE...] [:::: ARGFILE...]\n"
    "       tpar run MOD:FN [ARG...] [--args JSON] [--kwargs JSON]\n"
    "\n"
    "A job line: {\"id\": ..., \"fn\": \"mod:fn\", \"args\": [...], \"kwargs\": {...}}\n"
    "Input: --raw (lines and arguments are strings, not JSON), -0 (NUL-separated),\n"
    "--star (map: a JSON array is the arguments).\n"
    "Common options: -j N|N%|+N|-N|0, -k, --timeout DUR, --retries N, --halt SPEC,\n"
    "-o FILE, --joblog FILE, --resume FILE, --resume-failed FILE, --progress,\n"
    "--summary, -I DIR, --init MOD:FN, --worker-type spawn|forkserver, --preload MODS,\n"
    "--prestart N, --dry-run (validate and show the jobs, run none),\n"
    "--python PY (default: $TPAR_PYTHON, the active venv's, python3 beside tpar, in PATH).\n"
    "Output: --capture[=SIZE] (a job's stdout/stderr in its record), --tag (a job's\n"
    "output on stderr, each line prefixed with its id), --stats (CPU time, peak RSS).\n"
    "Remote workers: --slurm (inside an allocation), --launcher CMD, --listen ADDR:PORT.\n"
    "\n"
    "See the manual for every option, the record formats and exit statuses:\n"
    "  man tpar\n";

void cli_vwarn(const char *fmt, va_list ap)
{
    fputs("tpar: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
}

void cli_die(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cli_vwarn(fmt, ap);
    va_end(ap);
    exit(code);
}

void cli_warn(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cli_vwarn(fmt, ap);
    va_end(ap);
}

enum {
    O_TIMEOUT = 256, O_RETRIES, O_RETRY_ON, O_HALT, O_MAX_TASKS, O_MAX_RSS,
    O_IDLE, O_INIT, O_JOBLOG, O_RESUME, O_PROGRESS, O_NO_PROGRESS, O_TOTAL,
    O_SUMMARY, O_MAX_LINE, O_STAR, O_ARGS, O_KWARGS, O_WORKER_TYPE, O_PRELOAD,
    O_PRESTART, O_RAW, O_RESUME_FAILED, O_DRY_RUN, O_LISTEN, O_LAUNCHER, O_SLURM, O_PYTHON,
    O_CAPTURE, O_TAG, O_STATS, O_MAX_BUFFER,
};

static const struct option longopts[] = {
    {"jobs", required_argument, 0, 'j'},
    {"keep-order", no_argument, 0, 'k'},
    {"timeout", required_argument, 0, O_TIMEOUT},
    {"retries", required_argument, 0, O_RETRIES},
    {"retry-on", required_argument, 0, O_RETRY_ON},
    {"halt", required_argument, 0, O_HALT},
    {"max-tasks-per-worker", required_argument, 0, O_MAX_TASKS},
    {"max-worker-rss", required_argument, 0, O_MAX_RSS},
    {"idle-timeout", required_argument, 0, O_IDLE},
    {"init", required_argument, 0, O_INIT},
    {"path", required_argument, 0, 'I'},
    {"joblog", required_argument, 0, O_JOBLOG},
    {"resume", required_argument, 0, O_RESUME},
    {"resume-failed", required_argument, 0, O_RESUME_FAILED},
    {"progress", no_argument, 0, O_PROGRESS},
    {"no-progress", no_argument, 0, O_NO_PROGRESS},
    {"total", required_argument, 0, O_TOTAL},
    {"output", required_argument, 0, 'o'},
    {"quiet", no_argument, 0, 'q'},
    {"summary", no_argument, 0, O_SUMMARY},
    {"max-line", required_argument, 0, O_MAX_LINE},
    {"max-buffer", required_argument, 0, O_MAX_BUFFER},
    {"star", no_argument, 0, O_STAR},
    {"args", required_argument, 0, O_ARGS},
    {"kwargs", required_argument, 0, O_KWARGS},
    {"worker-type", required_argument, 0, O_WORKER_TYPE},
    {"preload", required_argument, 0, O_PRELOAD},
    {"prestart", required_argument, 0, O_PRESTART},
    {"raw", no_argument, 0, O_RAW},
    {"dry-run", no_argument, 0, O_DRY_RUN},
    {"capture", optional_argument, 0, O_CAPTURE},
    {"tag", no_argument, 0, O_TAG},
    {"stats", no_argument, 0, O_STATS},
    {"null", no_argument, 0, '0'},
    {"listen", required_argument, 0, O_LISTEN},
    {"launcher", required_argument, 0, O_LAUNCHER},
    {"slurm", no_argument, 0, O_SLURM},
    {"python", required_argument, 0, O_PYTHON},
    {"help", no_argument, 0, 'h'},
    {"version", no_argument, 0, 'V'},
    {0, 0, 0, 0},
};

static double parse_number(const char *opt, const char *s, char **end)
{
    errno = 0;
    double v = strtod(s, end);
    if (*end == s || errno == ERANGE || !isfinite(v) || v < 0)
        cli_die(EXIT_USAGE, "%s: invalid value '%s'", opt, s);
    return v;
}

/* A non-negative integer. */
static long parse_long(const char *opt, const char *s)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (end == s || *end || errno || v < 0)
        cli_die(EXIT_USAGE, "%s: expected a non-negative integer, got '%s'", opt, s);
    return v;
}

/* Seconds with an optional unit: ms, s, m, h, d. */
static double parse_duration(const char *opt, const char *s)
{
    char *end;
    double v = parse_number(opt, s, &end);
    if (!*end || !strcmp(end, "s"))
        return v;
    if (!strcmp(end, "ms"))
        return v / 1000;
    if (!strcmp(end, "m"))
        return v * 60;
    if (!strcmp(end, "h"))
        return v * 3600;
    if (!strcmp(end, "d"))
        return v * 86400;
    cli_die(EXIT_USAGE, "%s: invalid duration '%s' (use e.g. 30, 1.5s, 500ms, 2m, 1h)", opt, s);
}

/* Bytes with an optional binary unit: K, M, G, T (KiB, KB, k...). */
static uint64_t parse_size(const char *opt, const char *s)
{
    char *end;
    double v = parse_number(opt, s, &end);
    static const char units[] = "KMGT";
    double mult = 1;
    if (*end) {
        /* Not strchr: it finds a unit char of 0, what ' ' & ~0x20 gives,
         * in the terminating NUL. */
        const char *u = memchr(units, end[0] & ~0x20, sizeof units - 1);
        if (!u)
            cli_die(EXIT_USAGE, "%s: invalid size '%s' (use e.g. 512M, 2G)", opt, s);
        for (const char *q = units; q <= u; q++)
            mult *= 1024;
        const char *rest = end + 1;
        if (strcmp(rest, "") && strcmp(rest, "B") && strcmp(rest, "iB"))
            cli_die(EXIT_USAGE, "%s: invalid size '%s' (use e.g. 512M, 2G)", opt, s);
    }
    return (uint64_t)(v * mult);
}

/* -j in GNU parallel's forms: N; N% of the CPUs (at least 1); +N and -N,
 * the CPUs plus or minus N (at least 1); 0, as many as can be useful,
 * which tpar caps at JOBS_ZERO workers. */
#define JOBS_MAX 4096
#define JOBS_ZERO 256

static int parse_jobs(const char *s)
{
    int ncpu = tpar_cpu_count();
    int sign = s[0] == '+' ? 1 : s[0] == '-' ? -1 : 0;
    const char *p = s + (sign != 0);
    if (*p < '0' || *p > '9')
        cli_die(EXIT_USAGE, "-j: expected N, N%%, +N, -N or 0, got '%s'", s);
    char *end;
    errno = 0;
    double v = strtod(p, &end);
    if (errno == ERANGE || !isfinite(v))
        cli_die(EXIT_USAGE, "-j: expected N, N%%, +N, -N or 0, got '%s'", s);
    if (!strcmp(end, "%")) {
        if (sign)
            cli_die(EXIT_USAGE, "-j: expected N%% without a sign, got '%s'", s);
        v = floor(ncpu * v / 100);
        if (v < 1)
            v = 1;
    } else if (*end || v != floor(v)) {
        cli_die(EXIT_USAGE, "-j: expected N, N%%, +N, -N or 0 (whole numbers), got '%s'", s);
    } else if (sign) {
        v = ncpu + sign * v;
        if (v < 1)
            v = 1;
    } else if (v == 0) {
        v = JOBS_ZERO;
    }
    if (v > JOBS_MAX)
        cli_die(EXIT_USAGE, "-j: at most %d workers, got '%s' (%.0f)", JOBS_MAX, s, v);
    return (int)v;
}

static unsigned parse_retry_on(const char *s)
{
    unsigned mask = 0;
    char *copy = xstrdup(s), *save = NULL;
    for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (!strcmp(t, "broken"))
            mask |= 1u << ST_BROKEN;
        else if (!strcmp(t, "timeout"))
            mask |= 1u << ST_TIMEOUT;
        else if (!strcmp(t, "error"))
            mask |= 1u << ST_ERROR;
        else
            cli_die(EXIT_USAGE, "--retry-on: unknown status '%s' (use broken, timeout, error)", t);
    }
    free(copy);
    return mask;
}

/* now|soon,fail=N|N%; also GNU parallel's 0, 1 (soon,fail=1), 2 (now,fail=1). */
static void parse_halt(struct opts *o, const char *s)
{
    if (!strcmp(s, "0") || !strcmp(s, "never")) {
        o->halt = HALT_NONE;
        return;
    }
    if (!strcmp(s, "1") || !strcmp(s, "2")) {
        o->halt = s[0] == '1' ? HALT_SOON : HALT_NOW;
        o->halt_fail = 1;
        return;
    }
    const char *rest;
    if (!strncmp(s, "now,", 4))
        o->halt = HALT_NOW, rest = s + 4;
    else if (!strncmp(s, "soon,", 5))
        o->halt = HALT_SOON, rest = s + 5;
    else
        cli_die(EXIT_USAGE, "--halt: expected now|soon,fail=N|N%%, got '%s'", s);
    if (strncmp(rest, "fail=", 5))
        cli_die(EXIT_USAGE, "--halt: expected now|soon,fail=N|N%%, got '%s'", s);
    char *end;
    o->halt_fail = parse_number("--halt", rest + 5, &end);
    o->halt_pct = !strcmp(end, "%");
    if ((*end && !o->halt_pct) || o->halt_fail <= 0 ||
        (o->halt_pct && o->halt_fail > 100) ||
        (!o->halt_pct && o->halt_fail != floor(o->halt_fail)))
        cli_die(EXIT_USAGE, "--halt: invalid fail=%s", rest + 5);
}

static void add_path(struct opts *o, const char *dir)
{
    const char **p = xrealloc(o->paths, (size_t)(o->npaths + 1) * sizeof *p);
    p[o->npaths++] = dir;
    o->paths = p;
}

static void defaults(struct opts *o)
{
    memset(o, 0, sizeof *o);
    o->jobs = tpar_cpu_count();
    o->retry_on = 1u << ST_BROKEN;
    o->idle_timeout = 600;
    o->progress = -1;
    o->max_line = (size_t)64 << 20;
    o->max_buffer = (size_t)64 << 20;
}

static void option(struct opts *o, int c, const char *arg)
{
    switch (c) {
    case 'j': o->jobs = parse_jobs(arg), o->jobs_set = 1; break;
    case 'k': o->keep_order = 1; break;
    case O_TIMEOUT:
        o->timeout = parse_duration("--timeout", arg);
        if (o->timeout <= 0)
            cli_die(EXIT_USAGE, "--timeout: must be more than 0");
        break;
    case O_RETRIES: o->retries = (int)parse_long("--retries", arg); break;
    case O_RETRY_ON: o->retry_on = parse_retry_on(arg); break;
    case O_HALT: parse_halt(o, arg); break;
    case O_MAX_TASKS:
        o->max_tasks = parse_long("--max-tasks-per-worker", arg);
        if (o->max_tasks < 1)
            cli_die(EXIT_USAGE, "--max-tasks-per-worker: must be at least 1");
        break;
    case O_MAX_RSS: o->max_rss = parse_size("--max-worker-rss", arg); break;
    case O_IDLE:
        /* 0 would close each new worker before its first job, forever. */
        o->idle_timeout = parse_duration("--idle-timeout", arg);
        if (o->idle_timeout <= 0)
            cli_die(EXIT_USAGE, "--idle-timeout: must be more than 0");
        break;
    case O_INIT:
        if (!strchr(arg, ':'))
            cli_die(EXIT_USAGE, "--init: expected MOD:FN, got '%s'", arg);
        o->init = arg;
        break;
    case 'I': add_path(o, arg); break;
    case O_JOBLOG: o->joblog = arg; break;
    case O_RESUME:
    case O_RESUME_FAILED:
        if (o->resume)
            cli_die(EXIT_USAGE, "--resume and --resume-failed: give one of them, once");
        o->resume = arg;
        o->resume_failed = c == O_RESUME_FAILED;
        break;
    case O_PROGRESS: o->progress = 1; break;
    case O_NO_PROGRESS: o->progress = 0; break;
    case O_TOTAL: o->total = (uint64_t)parse_long("--total", arg); break;
    case 'o': o->output = arg; break;
    case 'q': o->quiet = 1; break;
    case O_SUMMARY: o->summary = 1; break;
    case O_MAX_LINE:
        o->max_line = (size_t)parse_size("--max-line", arg);
        if (o->max_line < 2 || o->max_line > ((size_t)1 << 31))
            cli_die(EXIT_USAGE, "--max-line: must be between 2 bytes and 2G");
        break;
    case O_MAX_BUFFER:
        o->max_buffer = (size_t)parse_size("--max-buffer", arg);
        if (o->max_buffer < 1)
            cli_die(EXIT_USAGE, "--max-buffer: must be at least 1 byte");
        break;
    case O_STAR: o->star = 1; break;
    case O_ARGS: o->args = arg; break;
    case O_KWARGS: o->kwargs = arg; break;
    case O_WORKER_TYPE:
        if (!strcmp(arg, "spawn"))
            o->forkserver = 0;
        else if (!strcmp(arg, "forkserver"))
            o->forkserver = 1;
        else
            cli_die(EXIT_USAGE, "--worker-type: expected spawn or forkserver, got '%s'", arg);
        break;
    case O_PRELOAD: o->preload = arg; break;
    case O_PRESTART: o->prestart = (int)parse_long("--prestart", arg); break;
    case O_RAW: o->raw = 1; break;
    case O_DRY_RUN: o->dry_run = 1; break;
    case O_CAPTURE:
        o->capture = arg ? (size_t)parse_size("--capture", arg) : CAPTURE_DEFAULT;
        if (o->capture < 1 || o->capture > ((size_t)256 << 20))
            cli_die(EXIT_USAGE, "--capture: between 1 byte and 256M per stream");
        break;
    case O_TAG: o->tag = 1; break;
    case O_STATS: o->stats = 1; break;
    case '0': o->null = 1; break;
    case O_LISTEN: {
        char host[256];
        unsigned port;
        if (tpar_addr_split(arg, host, sizeof host, &port) < 0)
            cli_die(EXIT_USAGE, "--listen: expected ADDR:PORT (port 0: any free one), got '%s'",
                    arg);
        o->listen = arg;
        break;
    }
    case O_LAUNCHER: o->launcher = arg; break;
    case O_SLURM: o->slurm = 1; break;
    case O_PYTHON:
        if (!*arg)
            cli_die(EXIT_USAGE, "--python: expected an interpreter's path");
        o->python = arg;
        break;
    case 'h': fputs(help_text, stdout); exit(0);
    case 'V': printf("tpar %s\n", TPAR_VERSION); exit(0);
    }
}

static void bad_option(int argc, char **argv, int c)
{
    const char *arg = optind - 1 < argc ? argv[optind - 1] : "?";
    if (c == ':')
        cli_die(EXIT_USAGE, "option %s needs a value (see tpar --help)", arg);
    if (optopt && optopt < 256)
        cli_die(EXIT_USAGE, "unknown option -%c (see tpar --help)", optopt);
    cli_die(EXIT_USAGE, "unknown option %s (see tpar --help)", arg);
}

/* One argument value as JSON text into b: with --raw the text as a JSON
 * string, else the text itself, which must be one JSON value.  what names
 * it in the message. */
static void arg_value(const struct opts *o, tpar_buf *b, const char *s, size_t n,
                      const char *what)
{
    if (o->raw) {
        out_jstr(b, s, n);
        return;
    }
    tpar_jsonline_span v;
    tpar_jsonline_error err;
    if (tpar_jsonline_value(s, n, &v, &err) < 0)
        cli_die(EXIT_USAGE, "%s '%.*s' is not JSON (%s); --raw passes arguments as strings",
                what, (int)(n > 60 ? 60 : n), s, err.msg);
    out_lit(b, s + v.off, v.len);
}

/* tpar run MOD:FN ARG...: the --args array of the positional arguments. */
static const char *run_args(const struct opts *o, int n, char **v)
{
    tpar_buf b = {0};
    OUT_LIT(&b, "[");
    for (int i = 0; i < n; i++) {
        if (i)
            OUT_LIT(&b, ",");
        arg_value(o, &b, v[i], strlen(v[i]), "run: argument");
    }
    OUT_LIT(&b, "]");
    out_lit(&b, "", 1);
    return (const char *)b.data; /* main frees it (opts.args_buf) */
}

/* ::: and :::: input sources, as GNU parallel has them: each ::: starts a
 * source of the values that follow it, each FILE after :::: is a source of
 * its lines (NUL-separated with -0).  Jobs are every combination, the last
 * source varying fastest; a job's arguments are one value of each source. */
struct source {
    tpar_buf vals;  /* JSON texts, each followed by a NUL */
    size_t n;
};

static void source_add(const struct opts *o, struct source *src, const char *s, size_t n,
                       const char *what)
{
    arg_value(o, &src->vals, s, n, what);
    out_lit(&src->vals, "", 1);
    src->n++;
}

static int blank_text(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r')
            return 0;
    return 1;
}

static void source_file(const struct opts *o, struct source *src, const char *path)
{
    FILE *f = strcmp(path, "-") ? fopen(path, "re") : stdin;
    if (!f)
        cli_die(EXIT_USAGE, "::::: cannot read %s: %s", path, strerror(errno));
    char *line = NULL, what[512];
    size_t cap = 0;
    ssize_t len;
    unsigned long lineno = 0;
    while ((len = getdelim(&line, &cap, o->null ? 0 : '\n', f)) >= 0) {
        lineno++;
        if (len > 0 && line[len - 1] == (o->null ? 0 : '\n'))
            len--;
        if (!o->null && blank_text(line, (size_t)len))
            continue;
        snprintf(what, sizeof what, ":::: %s, line %lu:", path, lineno);
        source_add(o, src, line, (size_t)len, what);
    }
    if (ferror(f))
        cli_die(EXIT_USAGE, ":::: cannot read %s: %s", path, strerror(errno));
    free(line);
    if (f != stdin)
        fclose(f);
}

static void write_buf(int fd, tpar_buf *b)
{
    for (size_t off = 0; off < b->len;) {
        ssize_t w = write(fd, b->data + off, b->len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            cli_die(EXIT_USAGE, "::: needs memory for its jobs: %s", strerror(errno));
        off += (size_t)w;
    }
    b->len = 0;
}

/* Writes every combination, one JSON array of arguments a line (with
 * --star and one source: the value itself), into a memfd that becomes
 * the input. */
static void sources_to_input(struct opts *o, struct source *src, int k)
{
    size_t *idx = xcalloc((size_t)k, sizeof *idx);
    const char **at = xcalloc((size_t)k, sizeof *at);
    int fd = memfd_create("tpar-arguments", MFD_CLOEXEC);
    if (fd < 0)
        cli_die(EXIT_USAGE, "::: needs memory for its jobs: %s", strerror(errno));
    int bare = o->star && k == 1, empty = 0;
    for (int i = 0; i < k; i++) {
        empty |= !src[i].n;
        at[i] = (const char *)src[i].vals.data;
    }
    tpar_buf b = {0};
    while (!empty) {
        if (!bare)
            OUT_LIT(&b, "[");
        for (int i = 0; i < k; i++) {
            if (i)
                OUT_LIT(&b, ",");
            out_lit(&b, at[i], strlen(at[i]));
        }
        if (bare)
            OUT_LIT(&b, "\n");
        else
            OUT_LIT(&b, "]\n");
        if (b.len >= 65536)
            write_buf(fd, &b);
        int i = k - 1; /* the next combination: the last source fastest */
        for (; i >= 0; i--) {
            at[i] += strlen(at[i]) + 1;
            if (++idx[i] < src[i].n)
                break;
            idx[i] = 0;
            at[i] = (const char *)src[i].vals.data;
        }
        if (i < 0)
            break;
    }
    write_buf(fd, &b);
    tpar_buf_free(&b);
    for (int i = 0; i < k; i++)
        tpar_buf_free(&src[i].vals);
    free(idx);
    free(at);
    lseek(fd, 0, SEEK_SET);
    static char name[32];
    static char *files[1];
    snprintf(name, sizeof name, "/proc/self/fd/%d", fd);
    files[0] = name;
    o->files = files;
    o->nfiles = 1;
    o->star = !bare;
    o->raw = o->null = 0; /* the lines made here are JSON, one a line */
}

/* Where ::: or :::: first appears in argv (argc if nowhere): getopt sees
 * only what comes before, so values after ::: may start with '-'. */
static int sources_start(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], ":::") || !strcmp(argv[i], "::::"))
            return i;
    return argc;
}

static void sources(struct opts *o, int n, char **v)
{
    struct source *src = NULL;
    int k = 0, files = 0;
    for (int i = 0; i < n; i++) {
        int sep3 = !strcmp(v[i], ":::"), sep4 = !strcmp(v[i], "::::");
        if (sep3 || sep4)
            files = sep4;
        if (sep4)
            continue;
        if (sep3 || files) {
            src = xrealloc(src, (size_t)(k + 1) * sizeof *src);
            memset(&src[k++], 0, sizeof *src);
        }
        if (files)
            source_file(o, &src[k - 1], v[i]);
        else if (!sep3)
            source_add(o, &src[k - 1], v[i], strlen(v[i]), "::: argument");
        if (sep3 && (i + 1 == n || !strcmp(v[i + 1], ":::") || !strcmp(v[i + 1], "::::")))
            cli_die(EXIT_USAGE, "::: needs values after it");
    }
    if (!k)
        cli_die(EXIT_USAGE, ":::: needs a FILE after it");
    if (o->mode != MODE_MAP)
        cli_die(EXIT_USAGE, "::: and :::: go with 'tpar map MOD:FN'");
    if (o->nfiles)
        cli_die(EXIT_USAGE, "::: and :::: take the place of input FILEs; got '%s' too",
                o->files[0]);
    if (o->star && k > 1)
        cli_die(EXIT_USAGE, "--star goes with one ::: source (several already make the "
                            "arguments)");
    sources_to_input(o, src, k);
    free(src);
}

/* The first operand names a subcommand (run, map) or is the first FILE. */
static void operands(struct opts *o, int n, char **v)
{
    o->mode = MODE_STREAM;
    if (n > 0 && (!strcmp(v[0], "run") || !strcmp(v[0], "map"))) {
        o->mode = v[0][0] == 'r' ? MODE_RUN : MODE_MAP;
        if (n < 2)
            cli_die(EXIT_USAGE, "%s: missing MOD:FN (see tpar --help)", v[0]);
        o->fn = v[1];
        const char *colon = strrchr(o->fn, ':');
        if (!colon || colon == o->fn || !colon[1])
            cli_die(EXIT_USAGE, "%s: expected MOD:FN (module, colon, function), got '%s'",
                    v[0], o->fn);
        v += 2, n -= 2;
        if (o->mode == MODE_RUN && n > 0) {
            if (o->args)
                cli_die(EXIT_USAGE, "run: arguments go either after MOD:FN or in --args, "
                                    "not both");
            o->args = o->args_buf = (char *)run_args(o, n, v);
            n = 0;
        }
    }
    if ((o->args || o->kwargs) && o->mode != MODE_RUN)
        cli_die(EXIT_USAGE, "--args and --kwargs go with 'tpar run'");
    if (o->star && o->mode != MODE_MAP)
        cli_die(EXIT_USAGE, "--star goes with 'tpar map'");
    if (o->null && o->mode != MODE_MAP)
        cli_die(EXIT_USAGE, "-0 goes with 'tpar map'");
    if (o->raw && o->star)
        cli_die(EXIT_USAGE, "--raw and --star exclude each other (a string is not an array "
                            "of arguments)");
    if (o->raw && o->mode == MODE_STREAM)
        cli_die(EXIT_USAGE, "--raw goes with 'tpar map' or 'tpar run' (job lines are JSON)");
    o->files = v;
    o->nfiles = n;
}

int opts_parse(struct opts *o, int argc, char **argv)
{
    defaults(o);
    opterr = 0;
    int c, end = sources_start(argc, argv);
    while ((c = getopt_long(end, argv, ":j:kI:o:qhV0", longopts, NULL)) != -1) {
        if (c == '?' || c == ':')
            bad_option(end, argv, c);
        option(o, c, optarg);
    }
    if (o->null)
        o->raw = 1; /* as xargs -0: each item is text */
    operands(o, end - optind, argv + optind);
    if (end < argc)
        sources(o, argc - end, argv + end);
    if (o->preload && !o->forkserver)
        cli_die(EXIT_USAGE, "--preload goes with --worker-type forkserver");
    if (o->listen && !REMOTE(o))
        cli_die(EXIT_USAGE, "--listen goes with --launcher or --slurm (the workers need "
                            "the run's secret, which only a launcher tpar starts gets)");
    if (REMOTE(o) && (o->forkserver || o->max_rss || o->prestart))
        cli_die(EXIT_USAGE, "%s does not apply to remote workers (--launcher, --slurm)",
                o->forkserver ? "--worker-type forkserver" : o->max_rss ? "--max-worker-rss"
                                                                       : "--prestart");
    if (o->mode == MODE_RUN)
        o->jobs = 1;
    return 0;
}
