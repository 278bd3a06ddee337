/* The job loop of tpar-worker, apart from the program around it, so that
 * the Trio extension can run it in a forked child (WorkerType.FORK). */
#ifndef TPAR_WORKER_LOOP_H
#define TPAR_WORKER_LOOP_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "tpar.h"

/* 73, 74: connect.h.  EXIT_RETIRE_FAILED: the package's retire() raised
 * (the parent reports it as BrokenWorkerError); EXIT_UNGUARDED_MAIN: the
 * parent's script, imported as __main__, started jobs (_tpar_worker.py). */
enum { EXIT_INIT = 70, EXIT_PROTOCOL = 71, EXIT_NOPYTHON = 72, EXIT_RETIRE_FAILED = 75,
       EXIT_UNGUARDED_MAIN = 76 };

struct tpar_worker_opts {
    int cwd_path;
    const char **paths; /* -I, in order */
    int npaths;
    const char *sys_path;
    const char *main_path;
    char **main_argv; /* after "--": sys.argv while and after __main__ loads */
    int main_argc;
    int keep_stdout;  /* stdout stays the parent's (the Trio package) */
    const char *python;
    const char *init;
    long max_tasks;
    int pdeathsig;
    long spin_us; /* -1: automatic */
    double idle_timeout; /* seconds; <= 0: wait forever */
    int zygote;          /* fork workers on request instead of serving */
    const char *preload; /* comma-separated modules the zygote imports */
    int preload_strict;  /* a --preload that fails to import ends the zygote */
    long capture;        /* --capture BYTES: a JSON job's stdout/stderr, each
                            cut to BYTES, go to the parent (EXTRA); 0: off */
    int stats;           /* --stats: a JSON job's CPU time and peak RSS (EXTRA) */
    const char *connect; /* --connect HOST:PORT: a remote worker */
    double connect_timeout; /* seconds to connect and authenticate */
    int connect_workers;    /* --workers: workers (connections) to keep */
};

/* Prints "tpar-worker[pid]: what" and exits with code, unflushed. */
_Noreturn void tpar__worker_die(int code, const char *what);

/* Makes in_fd/out_fd (closed) the protocol fds, moved to high fds, the
 * input non-blocking; out_fd < 0: only in_fd (a zygote's socket).  down
 * and up are the lanes' memfds, or -1. */
void tpar__worker_take_fds(int in_fd, int out_fd, int down, int up);

/* Dies when the parent (thread) dies, taking its process group along: the
 * processes a job started die too, even when the parent was SIGKILLed.
 * Call after becoming a group leader. */
void tpar__worker_die_with_parent(void);
void tpar__worker_ignore_sigint(void); /* a no-op handler: not inherited by exec */

/* In a child just forked from a Python process (a zygote, or a Trio
 * program's WorkerType.FORK): Python's after-fork work, the signals a
 * spawned worker starts with, its own process group and, with pdeathsig,
 * death with `parent` (exits at once if that has died already). */
void tpar__worker_after_fork(pid_t parent, int pdeathsig);

/* The process that sends this worker its jobs, which its load check
 * leaves out while it runs: its parent (0, the default), or, in a zygote
 * (set before its first fork, inherited by its workers), the zygote's
 * own parent. */
void tpar__worker_set_feeder(pid_t pid);

/* Gives the free memory at the top of malloc's heap back to the system. */
void tpar__worker_trim_heap(void);

/* In a zygote: imports what forked workers would each import on their
 * first pickle job.  Failures are printed and ignored. */
void tpar__worker_warm_for_fork(void);

/* The input fd after tpar__worker_take_fds. */
int tpar__worker_in_fd(void);

/* Loads the Python half, sets sys.path and __main__ as the options say. */
void tpar__worker_setup(const struct tpar_worker_opts *o);

/* Runs --init, says READY, serves jobs until EOF, SHUTDOWN or retirement,
 * and exits. */
_Noreturn void tpar__worker_work(const struct tpar_worker_opts *o);

/* FORK: forks the calling (Python) process; the child runs the job loop
 * on fresh pipes and never returns.  The parent gets *p as from
 * tpar_proc_spawn.  Call with the GIL held.  Returns 0 or -errno. */
int tpar_worker_fork(tpar_proc *p, const struct tpar_worker_opts *o);

#endif
