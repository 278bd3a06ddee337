/* Remote workers (--listen, --launcher, --slurm): the listener that
 * authenticates their connections, the launcher that starts them, and the
 * end of a run whose workers are all gone.  Layer: below stream.c, above
 * worker.c (which takes each authenticated connection as a worker).
 *
 * The launcher runs once: srun starts every worker of the allocation in
 * one step, ssh or kubectl whatever their command says.  Each worker is a
 * supervisor's child (pyworker/connect.h), so a worker that dies is
 * replaced by a fresh connection from the same slot, and the launcher
 * ends when its workers do: after SHUTDOWN at the end of the run, or when
 * tpar has gone. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "engine.h"

#define TICK_MS 100          /* the launcher's exit, the handshakes' deadlines */
#define LAUNCHER_GRACE 10.0  /* seconds the launcher gets to end on its own */

static struct {
    tpar_listener *l;
    uv_poll_t poll;
    uv_timer_t tick;
    int active;               /* the listener is open and watched */
    tpar_proc launcher;
    int launcher_live;        /* started and not yet reaped */
    char launcher_desc[128];  /* how it ended */
    char **argv;              /* the launcher's command line */
    char addr[300];           /* what the workers dial: {addr} */
    int connected;            /* workers that have connected */
    int gone_reported;
} RM;

/* --slurm: the allocation's task count, or 0. */
static int slurm_tasks(void)
{
    const char *v = getenv("SLURM_NTASKS");
    if (!v || !*v)
        v = getenv("SLURM_NPROCS");
    return v ? atoi(v) : 0;
}

static void check_slurm(const struct opts *o)
{
    if (!getenv("SLURM_JOB_ID"))
        cli_die(EXIT_USAGE, "--slurm: not inside a Slurm allocation (SLURM_JOB_ID is not "
                            "set): run tpar in an sbatch script or under salloc");
    if (getenv("SLURM_STEP_ID") && !o->launcher)
        cli_die(EXIT_USAGE, "--slurm: tpar runs inside a job step (srun): run it in the "
                            "batch script or in salloc's shell, where srun can start a step");
    if (slurm_tasks() <= 0 && !o->jobs_set)
        cli_die(EXIT_USAGE, "--slurm: SLURM_NTASKS is not set: give -j N");
}

/* srun starting one worker per task, with the local worker's options
 * (less --pdeathsig: its parent is the supervisor). */
static char **srun_argv(const struct opts *o, char *const wargv[], const char *addr)
{
    size_t n = 0;
    while (wargv[n])
        n++;
    char **v = calloc(n + 12, sizeof *v);
    static char ntasks[32];
    if (!v)
        cli_die(EXIT_USAGE, "out of memory");
    snprintf(ntasks, sizeof ntasks, "--ntasks=%d", o->jobs);
    size_t k = 0;
    v[k++] = "srun";
    v[k++] = ntasks;
    v[k++] = "--kill-on-bad-exit=0"; /* a task's end is one worker's, not the run's */
    v[k++] = "--quiet";
    v[k++] = "--job-name=tpar-workers";
    v[k++] = wargv[0];
    for (size_t i = 1; i < n; i++)
        if (strcmp(wargv[i], "--pdeathsig") != 0)
            v[k++] = wargv[i];
    v[k++] = "--connect";
    v[k++] = (char *)addr;
    v[k] = NULL;
    return v;
}

/* The address the workers dial.  --slurm without --listen: ":PORT", which
 * each worker completes with the address its srun's host has for slurmd
 * (SLURM_SRUN_COMM_HOST): an address the compute nodes reach this node
 * by.  A wildcard --listen: this host's name. */
static void dial_addr(const struct opts *o, const char *host, unsigned port)
{
    char name[256];
    if (!*host || !strcmp(host, "0.0.0.0") || !strcmp(host, "::")) {
        if (o->slurm && !o->launcher) {
            snprintf(RM.addr, sizeof RM.addr, ":%u", port);
            return;
        }
        if (gethostname(name, sizeof name) < 0)
            snprintf(name, sizeof name, "localhost");
        name[sizeof name - 1] = 0;
        host = name;
    }
    snprintf(RM.addr, sizeof RM.addr, strchr(host, ':') ? "[%s]:%u" : "%s:%u", host, port);
}

static void on_readable(uv_poll_t *h, int status, int events);
static void on_tick(uv_timer_t *t);

/* Two fds per remote worker (the socket and its dup): a thousand workers
 * pass the usual soft limit of 1,024 fds, so take what the hard limit
 * allows. */
static void raise_fd_limit(void)
{
    struct rlimit r;
    if (getrlimit(RLIMIT_NOFILE, &r) == 0 && r.rlim_cur < r.rlim_max) {
        r.rlim_cur = r.rlim_max;
        (void)setrlimit(RLIMIT_NOFILE, &r);
    }
}

void remote_start(struct opts *o, uv_loop_t *loop, char *const wargv[])
{
    uint8_t key[TPAR_SECRET_LEN];
    char hex[TPAR_SECRET_HEX + 1], host[256] = "";
    unsigned port = 0;
    if (o->slurm)
        check_slurm(o);
    raise_fd_limit();
    if (o->slurm && !o->jobs_set)
        o->jobs = slurm_tasks();
    else if (!o->jobs_set)
        o->jobs = 1 << 30; /* as many as the launcher starts */
    if (o->listen)
        tpar_addr_split(o->listen, host, sizeof host, &port); /* checked by options.c */
    if (tpar_secret_new(key, hex) < 0)
        cli_die(EXIT_USAGE, "cannot make the run's secret (libsodium failed to start)");
    /* TPAR_AUTH_TIMEOUT: seconds a connection has to authenticate (tests). */
    tpar_listen_opts lo = {0};
    const char *at = getenv("TPAR_AUTH_TIMEOUT");
    if (at && *at)
        lo.auth_timeout = atof(at);
    int rc = tpar_listener_open(&RM.l, host, port, key, &lo);
    explicit_bzero(key, sizeof key);
    if (rc < 0)
        cli_die(EXIT_USAGE, "cannot listen on %s: %s", o->listen ? o->listen : "a free port",
                tpar_strerror(rc));
    dial_addr(o, host, tpar_listener_port(RM.l));
    const char *err = NULL;
    if (o->launcher) {
        rc = tpar_launcher_argv(o->launcher, RM.addr, &RM.argv, &err);
        if (rc < 0)
            cli_die(EXIT_USAGE, "--launcher: %s", err ? err : tpar_strerror(rc));
    } else {
        RM.argv = srun_argv(o, wargv, RM.addr);
    }
    rc = tpar_launcher_spawn(&RM.launcher, RM.argv, hex);
    explicit_bzero(hex, sizeof hex);
    if (rc < 0)
        cli_die(EXIT_USAGE, "cannot start the launcher %s: %s", RM.argv[0], tpar_strerror(rc));
    RM.launcher_live = 1;
    uv_poll_init(loop, &RM.poll, tpar_listener_fd(RM.l));
    uv_poll_start(&RM.poll, UV_READABLE, on_readable);
    uv_timer_init(loop, &RM.tick);
    uv_timer_start(&RM.tick, on_tick, TICK_MS, TICK_MS);
    RM.active = 1;
}

static void drain(void)
{
    tpar_listen_event ev;
    int rc;
    while (RM.active && (rc = tpar_listener_next(RM.l, &ev)) != 0) {
        if (rc < 0) {
            run_fatal("remote workers: the listener failed: %s", tpar_strerror(rc));
            return;
        }
        if (ev.kind == TPAR_LISTEN_WORKER) {
            RM.connected++;
            if (pool_adopt_remote(ev.fd, ev.peer) < 0)
                cli_warn("out of memory for the worker from %s", ev.peer);
        } else if (ev.kind == TPAR_LISTEN_REFUSED) {
            cli_warn("refused a connection from %s: %s", ev.peer, ev.reason);
        } else {
            cli_warn("%s: %s", ev.reason, tpar_strerror(ev.err));
        }
    }
}

static void on_readable(uv_poll_t *h, int status, int events)
{
    drain();
}

static int work_left(void)
{
    return !(IN.done && !J.pending.n && !P.inflight);
}

/* Every worker gone, none to come: the run cannot go on. */
static void check_gone(void)
{
    if (RM.launcher_live || RM.gone_reported || P.nworkers ||
        (RM.l && tpar_listener_pending(RM.l)) || !work_left() || RUN.stop >= STOP_NOW)
        return;
    RM.gone_reported = 1;
    if (!RM.connected)
        run_fatal("the launcher %s %s, and no worker connected", RM.argv[0], RM.launcher_desc);
    else
        run_fatal("every remote worker is gone (%d connected in all), and the launcher %s %s",
                  RM.connected, RM.argv[0], RM.launcher_desc);
}

static void on_tick(uv_timer_t *t)
{
    if (RM.launcher_live && tpar_proc_reap(&RM.launcher, 0) == 0) {
        RM.launcher_live = 0;
        tpar_describe_status(RM.launcher.status, RM.launcher_desc, sizeof RM.launcher_desc);
    }
    drain(); /* handshakes past their deadline */
    check_gone();
}

void remote_close(void)
{
    if (!RM.active)
        return;
    RM.active = 0;
    uv_poll_stop(&RM.poll);
    uv_close((uv_handle_t *)&RM.poll, NULL);
    tpar_listener_free(RM.l); /* workers dialling again now find nobody */
    RM.l = NULL;
}

/* Waits up to secs for the launcher to end; 1 when it has. */
static int wait_launcher(double secs)
{
    double end = tpar_now() + secs;
    while (tpar_proc_reap(&RM.launcher, 0) == -EAGAIN) {
        if (tpar_now() >= end)
            return 0;
        usleep(20000);
    }
    return 1;
}

void remote_finish(void)
{
    remote_close();
    if (RM.tick.loop) {
        uv_timer_stop(&RM.tick);
        uv_close((uv_handle_t *)&RM.tick, NULL);
    }
    if (RM.launcher_live) {
        /* Its workers have had SHUTDOWN or lost their connection, so it
         * ends on its own; if not, SIGTERM (srun then kills its tasks). */
        if (!wait_launcher(LAUNCHER_GRACE)) {
            cli_warn("the launcher %s did not end in %g s; terminating it", RM.argv[0],
                     LAUNCHER_GRACE);
            tpar_proc_kill(&RM.launcher, SIGTERM);
            if (!wait_launcher(5.0)) {
                tpar_proc_kill(&RM.launcher, SIGKILL);
                tpar_proc_reap(&RM.launcher, 1);
            }
        }
        RM.launcher_live = 0;
    }
    free(RM.argv);
    RM.argv = NULL;
}
