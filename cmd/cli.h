/* Internal header of the tpar command line program (cmd/). */
#ifndef TPAR_CLI_H
#define TPAR_CLI_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <uv.h>

#include "tpar.h"

#define EXIT_USAGE 255
#define CAPTURE_DEFAULT (64 * 1024) /* --capture: bytes kept per stream */

enum mode { MODE_STREAM, MODE_MAP, MODE_RUN };

/* Result statuses, in record order. */
enum status { ST_OK, ST_ERROR, ST_TIMEOUT, ST_BROKEN, ST_CANCELLED, ST_BAD_INPUT, ST_COUNT };
extern const char *const status_names[ST_COUNT];

enum halt { HALT_NONE, HALT_SOON, HALT_NOW };

struct opts {
    int mode;
    int jobs;                 /* -j */
    int keep_order;           /* -k */
    double timeout;           /* --timeout seconds; 0: none */
    int retries;              /* --retries */
    unsigned retry_on;        /* bit per enum status */
    int halt;                 /* enum halt */
    double halt_fail;         /* count, or percent when halt_pct */
    int halt_pct;
    long max_tasks;           /* --max-tasks-per-worker; 0: none */
    uint64_t max_rss;         /* --max-worker-rss bytes; 0: none */
    double idle_timeout;      /* --idle-timeout seconds */
    const char *init;         /* --init MOD:FN */
    const char **paths;       /* -I DIR, in order */
    int npaths;
    const char *joblog;
    const char *resume;       /* --resume or --resume-failed FILE */
    int resume_failed;        /* --resume-failed: failed jobs run again */
    const char *output;       /* -o; NULL: stdout */
    int progress;             /* -1 auto, 0 off, 1 on */
    uint64_t total;           /* --total */
    int quiet;
    int summary;
    int dry_run;              /* --dry-run: show the jobs, run none */
    size_t capture;           /* --capture[=SIZE]: job output in the record; 0: no */
    int tag;                  /* --tag: job output on stderr, lines prefixed by id */
    int stats;                /* --stats: CPU seconds and peak RSS in the record */
    size_t max_line;
    size_t max_buffer;        /* --max-buffer: bytes of jobs and -k records held */
    int forkserver;           /* --worker-type forkserver */
    const char *preload;      /* --preload MOD,MOD */
    int prestart;             /* --prestart N */
    const char *python;       /* --python PY; NULL: python_choose's default */
    const char *fn;           /* map / run: MOD:FN */
    int star;                 /* map --star */
    int raw;                  /* --raw: each line or argument is a string */
    int null;                 /* -0: input items end with NUL, not newline */
    const char *args, *kwargs;/* run */
    char *args_buf;           /* run ARG...: the --args made of them */
    int jobs_set;             /* -j given */
    const char *listen;       /* --listen ADDR:PORT */
    const char *launcher;     /* --launcher CMD */
    int slurm;                /* --slurm */
    char **files;             /* input files; none: stdin */
    int nfiles;
};

/* options.c */
int opts_parse(struct opts *o, int argc, char **argv);   /* 0, or exits */
void cli_die(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
void cli_vwarn(const char *fmt, va_list ap);
void cli_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* python.c: finds the interpreter the workers serve (--python, else
 * $TPAR_PYTHON, the active venv's, python3 in PATH) and a worker core for
 * it, or exits with a usage error that says what is missing.  The workers
 * get it as TPAR_PYTHON, its real path (a pyenv shim is run once, here). */
void python_choose(const struct opts *o);

/* alloc.c: out of memory writes the whole records formatted so far
 * (cli_oom_flush, set by record.c), says so and exits 255; the x*
 * allocators never return NULL. */
extern void (*cli_oom_flush)(void);
void cli_oom(void) __attribute__((noreturn));
void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);

/* resume.c: a set of raw JSON id texts */
struct idset;
/* NULL + *err on failure; dies (exit 255) on a file that holds no records. */
struct idset *idset_load(const char *path, const char *opt, int failed_too, int missing_ok,
                         int *err);
int idset_compact(const struct idset *s, const char *path, int failed_too);
int idset_has(const struct idset *s, const char *id, size_t n);
size_t idset_size(const struct idset *s);
void idset_free(struct idset *s);

/* out.c: record formatting into a growable buffer */
void out_lit(tpar_buf *b, const char *s, size_t n);
#define OUT_LIT(b, s) out_lit((b), (s), sizeof(s) - 1)
void out_u64(tpar_buf *b, uint64_t v);
void out_secs(tpar_buf *b, double secs);
void out_jstr(tpar_buf *b, const char *s, size_t n); /* a JSON string literal */

/* Remote workers (--listen, --launcher, --slurm). */
#define REMOTE(o) ((o)->launcher || (o)->slurm)

/* stream.c: runs the whole program for MODE_STREAM / MAP / RUN */
int stream_main(struct opts *o);

#endif
