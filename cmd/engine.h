/* The stream engine's layers and their state (cmd/ internal).  One engine
 * per process: each layer's state is one global, named for the layer. */
#ifndef TPAR_ENGINE_H
#define TPAR_ENGINE_H

#include "cli.h"

/* One job, from its input line to its record.  Allocated once with its
 * text: the id's raw JSON, then the JOB_JSON payload (fn NUL args NUL
 * kwargs), ready to copy into a frame, then the line's "meta" JSON. */
struct job {
    struct job *next;     /* in the pending queue */
    uint64_t seq;
    double timeout;       /* seconds; 0: none */
    double start;         /* monotonic time it became its worker's head */
    double sent;          /* monotonic time it was queued to its worker */
    int sent_alone;       /* its worker had nothing else in flight then */
    int flush_first;      /* sent with TPAR_JOB_FLUSH_FIRST */
    int attempts;         /* attempts that have ended */
    int isolate;          /* runs alone on a worker (see settle_ring) */
    uint64_t wseq;        /* its job frame's number on its worker (from 0) */
    uint32_t id_len;
    uint32_t payload_len;
    uint32_t meta_len;    /* the line's "meta" JSON, after the payload; 0: none */
    char *stats;          /* EXTRA members from its worker (--stats), or NULL */
    char *output;         /* EXTRA members (--capture, --tag), or NULL */
    uint32_t stats_len, output_len;
    char data[];
};

struct jobq {
    struct job *head, *tail;
    size_t n;
};

#define MAX_DEPTH TPAR_LINK_DEPTH /* jobs in flight per worker, at most */

/* A worker's life (cmd/worker.c), one way only:
 *
 *   STARTING --READY--> READY --+--> CLOSING --EOF--> DEAD --reaped--> freed
 *       |                       |                      ^
 *       +-----------------------+----------EOF---------+
 *
 *   STARTING -> READY     its READY frame came (on_event).
 *   STARTING -> CLOSING   killed: a protocol error, or the run ends before
 *                         it is ready (pool_close_idle, pool_kill_all).
 *   READY -> CLOSING      killed (a job timeout, a stop); or it is to exit
 *                         on its own (exit_expected): a RESULT said
 *                         RETIRING, it went over --max-worker-rss, or its
 *                         input was closed (idle timeout, the end).
 *   any -> DEAD           EOF (or an error) on its output: both fds and
 *                         the read and write watchers closed (worker_eof).
 *   DEAD -> freed         reaped (try_reap, retried on the timer): its jobs
 *                         settled (settle_ring), the timer closed; freed
 *                         when the last of its three handles has closed.
 *
 * Invariants, asserted by worker_check():
 *   - jobs are sent only in READY: STARTING holds none, and a worker with
 *     jobs has seen READY;  an isolated worker holds at most one;
 *   - the timer: TIMEOUT only with jobs, IDLE only without, REAP only when
 *     DEAD (the only timer a DEAD worker has besides none);
 *   - its input closed (to_fd -1) means CLOSING or DEAD; DEAD means both
 *     fds closed and the write watcher too;  writing means the write
 *     watcher is open;  killed_for is set only once it left READY. */
enum wstate {
    W_STARTING, /* spawned, READY not seen */
    W_READY,    /* takes jobs */
    W_CLOSING,  /* takes no more jobs: retiring, shut down, or killed */
    W_DEAD,     /* EOF seen, fds closed, waiting to reap */
};

struct worker {
    tpar_proc proc;
    uv_poll_t rpoll, wpoll;   /* from_fd readable, to_fd writable */
    uv_timer_t timer;         /* job timeout, idle timeout, reap retry */
    int timer_mode;           /* what the timer is armed for: T_* in worker.c */
    int open_handles;         /* freed when the last handle has closed */
    tpar_link link;           /* frames out, events in, the jobs in flight
                                 (oldest, the running one, first) */
    int writing;              /* wpoll started: to_fd was full */
    int state;                /* enum wstate */
    int killed_for;           /* we sent SIGKILL: ST_TIMEOUT / ST_CANCELLED,
                                 what its running job ends as; 0 otherwise
                                 (or killed for a protocol error) */
    int exit_expected;        /* it will exit on its own: RETIRING seen, over
                                 --max-worker-rss, or its input closed */
    int wpoll_closed;         /* wpoll closed (its input is closed) */
    int isolated;             /* holds an isolated job: send it nothing else */
    int prog_valid;           /* prog_* read at its death */
    uint64_t prog_started, prog_finished;
    char *proven[16];         /* fns that have returned a result on it */
    uint32_t proven_len[16];
    int nproven;
    long sent;                /* jobs sent in its life */
    long given_back;          /* of those, given back unstarted (GIVEBACK) */
    uint64_t stamp;           /* when it last became idle (LIFO reuse) */
    double reap_start;
    int remote;               /* connected over TCP: no process of ours */
    int shutdown_sent;        /* remote: SHUTDOWN queued (how it is closed) */
    char peer[TPAR_PEER_MAX]; /* remote: "host:port" it connected from */
};

struct input {
    int idx;                  /* file being read (index into opts files) */
    int fd;                   /* -1: none open */
    int pollable;             /* pipe/tty: wait with uv_poll; else read */
    int polling;
    int poll_ready;           /* poll handle initialised (for this fd) */
    int closing;              /* poll handle closing: open no file until it is */
    uv_poll_t poll;
    char *buf;
    size_t cap, start, len;   /* unparsed bytes: buf[start..len) */
    size_t scanned;           /* buf[start..start+scanned) holds no newline */
    uint64_t lineno;
    int skipping;             /* discarding the rest of an over-long line */
    int eof;                  /* current file at its end */
    int done;                 /* no more input will be read */
    const char *name;         /* for messages; "-" is stdin */
    uint64_t last_seq;        /* seq of the last line taken; they start at 1 */
    const struct opts *o;
    uv_loop_t *loop;
};

enum stop { STOP_NONE, STOP_SOON, STOP_NOW, STOP_PIPE };

/* The layers of the engine, top to bottom; a file calls and reads only the
 * layers below its own (scripts/layers.py checks the calls):
 *
 *   stream.c   the loop, signals, stopping, progress, the exit status
 *   remote.c   remote workers: the listener, the launcher
 *   setup.c    the worker's path and argv, the output files
 *   input.c    reading FILEs into lines                  \ both feed job.c
 *   worker.c   the pool: spawn, dispatch, results, death  /
 *   job.c      jobs, their queue, an attempt's end (retry or record)
 *   record.c   records, the -k window, counts and --halt, the joblog, the
 *              summary; the run's stop state (RUN)
 *   out.c      record formatting;  options.c, resume.c: leaves
 *
 * A lower layer that needs the loop to act (stop, a fatal error) says so
 * through RUN's callbacks, which stream.c sets: run_stop(), run_fatal(). */

/* ----------------------------------------------------------- record.c */

/* How far the run is stopping, and why.  Written by stream.c (through the
 * callbacks below when a lower layer asks); read by every layer. */
struct run {
    int stop;                 /* enum stop */
    int fatal;                /* exit 255 once stopped */
    int signo;                /* first signal received */
    void (*request_stop)(int how);  /* set by stream.c */
    void (*request_fatal)(void);    /* set by stream.c; the message is printed */
    void (*before_output)(void);    /* stream.c's, or NULL: records are about
                                       to be written (the progress line) */
};
extern struct run RUN;

/* Asks the loop to stop (enum stop); it may stop at once, re-entering. */
void run_stop(int how);
/* Prints the message and asks the loop to stop with exit status 255. */
void run_fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

struct recorder {
    const struct opts *o;
    int out_fd;
    tpar_buf out;
    int log_fd;               /* -1: no --joblog */
    int log_dead;             /* a joblog write failed (said once) */
    tpar_buf log;
    char **rslot;             /* -k reorder window, indexed by seq % rcap */
    uint32_t *rlen;
    size_t rcap;
    uint64_t rbase;           /* next seq to write in -k mode */
    size_t held;              /* bytes of the records in rslot */
    uint64_t count[ST_COUNT];
    uint64_t skipped, failed, finished;
    double t0, wall0;         /* monotonic and wall clock at the start */
};
extern struct recorder R;

/* Sets R up; out of memory exits. */
void record_init(const struct opts *o, int out_fd, int log_fd);
/* Writes j's joblog line for the attempt that just ended. */
void record_attempt(const struct job *j, int status, const char *body, size_t n,
                    double duration, pid_t pid);
/* Writes j's record (unless the output is gone) and counts it. */
void record_result(const struct job *j, int status, const char *body, size_t n,
                   double duration, pid_t pid);
void record_bad_input(uint64_t seq, uint64_t line, const char *file, const char *msg);
void record_skipped(uint64_t seq);
void record_dry_run(const struct job *j);  /* --dry-run: what j would run */
/* In -k mode, whether seq may be taken without overflowing the window. */
int record_window_has_room(uint64_t seq);
void record_summary(uint64_t workers);
/* Lists on stderr the kinds of error the run had, with counts (not with
 * -q, nor for tpar run). */
void record_report_errors(void);
void record_drop_output(void);  /* nobody reads the records any more */
/* The output: output_start starts the writer thread (after it, records
 * are written off the loop); output_flush hands the records over;
 * output_backed_up says more than a few MB wait (stop reading input);
 * output_finish writes the rest, blocking, and stops the writer. */
void output_start(uv_loop_t *loop);
void output_flush(void);
int output_backed_up(void);
void output_finish(void);

/* -------------------------------------------------------------- job.c */

struct jobs {
    const struct opts *o;
    struct jobq pending;      /* parsed, waiting for a worker */
    struct idset *resume;     /* --resume: ids that have a record */
    size_t bytes;             /* held by jobs read and not yet recorded */
};
extern struct jobs J;

void job_from_line(const char *s, size_t n, uint64_t seq, uint64_t lineno, const char *file);
int job_for_run(void);         /* tpar run: the one job; 0 or exits 255 */
void job_free(struct job *j);  /* and J.bytes forgets it */
/* Keeps an EXTRA frame's members (TPAR_EXTRA_*) for j's record. */
void job_set_extra(struct job *j, int kind, const uint8_t *p, size_t n);
struct job *job_new(uint64_t seq, const char *id, size_t idn, const char *const parts[],
                    const size_t lens[], int nparts);
void jobq_push(struct jobq *q, struct job *j);
void jobq_push_front(struct jobq *q, struct job *j);
struct job *jobq_pop(struct jobq *q);
/* Ends one attempt of j with a status and its value or error JSON; retries
 * it or writes its record, and frees it unless it was requeued. */
void job_attempt_done(struct job *j, int status, const char *body, size_t n,
                      double duration, pid_t pid);
void jobs_cancel_pending(void); /* each pending job ends "cancelled" */
void jobs_drop_pending(void);   /* frees them, with no record */

/* ----------------------------------------------------------- worker.c */

struct pool {
    const struct opts *o;
    uv_loop_t *loop;
    struct worker **workers;  /* live workers, any state */
    int nworkers;
    char **wargv;             /* worker command line */
    char **zargv;             /* the forkserver's: wargv + --zygote [--preload] */
    tpar_zygote zygote;
    double cost;              /* EWMA of seconds per job in a worker */
    uint64_t stamp;
    uint64_t inflight;        /* jobs sent and not yet ended */
    uint64_t started;         /* workers started */
    int remote;               /* workers connect (--listen, --slurm); none spawned */
    int failed_starts;        /* workers in a row that died before READY */
    double first_failed_start;
};
extern struct pool P;

void pool_dispatch(void);      /* sends pending jobs, spawns workers */
void pool_flush(void);         /* writes queued frames */
void pool_close_idle(void);    /* at the end: lets idle workers exit */
void pool_kill_all(int why);   /* SIGKILL every worker */
size_t pool_out_bytes(void);   /* frames queued for the workers, not yet written */
void pool_prestart(int n);     /* starts n workers now */
void pool_take_back_all(void); /* stopping: takes back the queued jobs */
/* A remote worker's authenticated connection joins the pool (it takes
 * fd).  Past -j live remote workers it is shut down at once.  0, or
 * -errno when fd cannot be duplicated (fd closed); out of memory exits. */
int pool_adopt_remote(int fd, const char *peer);
int pool_live_remote(void);    /* remote workers that take or will take jobs */

/* ------------------------------------------------------------ input.c */

extern struct input IN;

void input_hide_stdin(void);   /* fd 0 becomes /dev/null; input uses a copy */
int input_init(const struct opts *o, uv_loop_t *loop); /* checks every FILE */
void input_pump(void);         /* parses lines while the engine wants jobs */
void input_stop(void);
int input_wants_more(void);

/* ----------------------------------------------------------- remote.c */

/* Listens, starts the launcher (--launcher, or srun for --slurm) and sets
 * -j's default for remote workers; errors exit.  Workers that connect and
 * authenticate join the pool (pool_adopt_remote); refused peers are
 * reported on stderr.  When the launcher has ended and no worker is left
 * while jobs remain, the run stops with run_fatal. */
void remote_start(struct opts *o, uv_loop_t *loop, char *const wargv[]);
void remote_close(void);  /* the run is ending: no more workers */
void remote_finish(void); /* after the loop: waits for the launcher (or ends it) */

/* ------------------------------------------------------------ setup.c */

/* The worker's command line, and the forkserver's (NULL without
 * --worker-type forkserver).  Out of memory exits. */
void setup_wargv(const struct opts *o, char ***wargv, char ***zargv);
/* Loads --resume and opens -o and --joblog (-1: none); errors exit. */
void setup_files(const struct opts *o, struct idset **resume, int *out_fd, int *log_fd);

#endif
