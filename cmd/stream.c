/* The stream engine's top: the loop, signals, stopping, progress, the end.
 *
 * Each loop iteration handles whatever the workers and the input produced,
 * then, in one prepare callback before the loop blocks, parses more input,
 * dispatches, writes to the workers and flushes the output once.  So a
 * busy stream costs a handful of system calls per batch, not per job. */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "engine.h"

static struct {
    uv_loop_t *loop;
    uv_prepare_t prep;
    uv_signal_t sigint, sigterm;
    uv_timer_t progress;
    int progress_on;          /* a final progress line at the end */
    int progress_drawn;       /* a progress line is on the terminal now */
    int progress_len;         /* its width, in columns */
} E;

/* ------------------------------------------------------------ stopping */

static void engine_stop(int how)
{
    if (how <= RUN.stop)
        return;
    RUN.stop = how;
    input_stop();
    if (how == STOP_PIPE) { /* nobody reads the records any more */
        record_drop_output();
        jobs_drop_pending();
        pool_kill_all(ST_CANCELLED);
        return;
    }
    jobs_cancel_pending();
    if (how >= STOP_NOW)
        pool_kill_all(ST_CANCELLED);
    else /* soon: only the running jobs finish */
        pool_take_back_all();
}

static void engine_fatal(void)
{
    RUN.fatal = 1;
    engine_stop(STOP_NOW);
}

static void on_signal(uv_signal_t *h, int signo)
{
    if (!RUN.signo)
        RUN.signo = signo;
    if (RUN.stop == STOP_NONE) {
        if (!R.o->quiet)
            cli_warn("%s: no new jobs; waiting for %llu running job(s) "
                     "(send it again to kill them)",
                     signo == SIGINT ? "interrupted" : "terminated",
                     (unsigned long long)P.inflight);
        engine_stop(STOP_SOON);
    } else if (RUN.stop == STOP_SOON) {
        if (!R.o->quiet)
            cli_warn("killing %llu running job(s)", (unsigned long long)P.inflight);
        engine_stop(STOP_NOW);
    }
}

/* ------------------------------------------------------------- progress */

static int use_color(void)
{
    return !getenv("NO_COLOR") || !*getenv("NO_COLOR");
}

static void progress_line(int final)
{
    const struct opts *o = R.o;
    double el = tpar_now() - R.t0;
    double rate = el > 0 ? R.finished / el : 0;
    int color = use_color();
    char eta[64] = "";
    if (o->total && rate > 0 && o->total > R.finished + R.skipped) {
        double left = (double)(o->total - R.finished - R.skipped) / rate;
        snprintf(eta, sizeof eta, ", ETA %d:%02d", (int)(left / 60), (int)left % 60);
    }
    char total[32] = "";
    if (o->total)
        snprintf(total, sizeof total, "/%llu", (unsigned long long)o->total);
    char text[256];
    int n = snprintf(text, sizeof text, "tpar: %llu%s done, %s%llu failed%s, %llu running, %.0f/s%s",
                     (unsigned long long)(R.finished + R.skipped), total,
                     color && R.failed ? "\033[31m" : "", (unsigned long long)R.failed,
                     color && R.failed ? "\033[0m" : "", (unsigned long long)P.inflight, rate,
                     eta);
    int width = n - (color && R.failed ? 9 : 0); /* the colour codes take no column */
    if (!color && E.progress_drawn && E.progress_len > width)
        fprintf(stderr, "\r%*s", E.progress_len, ""); /* no \033[K: blank the old one */
    fprintf(stderr, "\r%s%s%s", color ? "\033[K" : "", text, final ? "\n" : "");
    E.progress_drawn = !final;
    E.progress_len = width;
}

/* Before records go to the terminal the progress line is on: take it
 * away, so a record never starts after it on the same line; the next tick
 * draws it again below them. */
static void progress_erase(void)
{
    if (!E.progress_drawn)
        return;
    if (use_color())
        fputs("\r\033[K", stderr);
    else
        fprintf(stderr, "\r%*s\r", E.progress_len, "");
    E.progress_drawn = 0;
}

static void on_progress(uv_timer_t *t)
{
    progress_line(0);
}

/* ----------------------------------------------------------------- loop */

static int all_done(void)
{
    return IN.done && !J.pending.n && !P.inflight;
}

static void on_prepare(uv_prepare_t *h)
{
    if (RUN.stop != STOP_PIPE) {
        input_pump();
        pool_dispatch();
        pool_flush();
    }
    if (P.remote && (all_done() || RUN.stop >= STOP_NOW))
        remote_close();
    if (all_done())
        pool_close_idle();
    output_flush();
    if (all_done() && P.nworkers == 0)
        uv_stop(E.loop);
}

/* The progress line is redrawn in place on stderr every 200 ms.  By
 * default only when stderr is a terminal that shows neither the records
 * nor the typing of the job stream; with --progress, records going to the
 * same terminal first take it away (progress_erase), and while the job
 * stream is typed at the terminal it is never redrawn (a redraw would wipe
 * the line being typed): only the final line is printed. */
static void setup_loop(const struct opts *o, int out_fd, int typed_input)
{
    E.loop = uv_default_loop();
    uv_prepare_init(E.loop, &E.prep);
    uv_prepare_start(&E.prep, on_prepare);
    uv_signal_init(E.loop, &E.sigint);
    uv_signal_start(&E.sigint, on_signal, SIGINT);
    uv_signal_init(E.loop, &E.sigterm);
    uv_signal_start(&E.sigterm, on_signal, SIGTERM);
    int records_here = isatty(out_fd) && isatty(2);
    int prog = o->progress < 0 ? isatty(2) && !records_here && !typed_input : o->progress;
    if (prog && !o->quiet && o->mode != MODE_RUN && !o->dry_run) {
        E.progress_on = 1;
        if (records_here)
            RUN.before_output = progress_erase;
        if (!typed_input) {
            uv_timer_init(E.loop, &E.progress);
            uv_timer_start(&E.progress, on_progress, 200, 200);
        }
    }
}

static int exit_status(void)
{
    if (RUN.stop == STOP_PIPE) {
        signal(SIGPIPE, SIG_DFL);
        raise(SIGPIPE);
        return 141;
    }
    if (RUN.fatal)
        return EXIT_USAGE;
    if (RUN.signo)
        return 128 + RUN.signo;
    if (R.o->mode == MODE_RUN)
        return R.failed ? 1 : 0;
    return R.failed > 100 ? 101 : (int)R.failed;
}

int stream_main(struct opts *o)
{
    int out_fd, log_fd;
    struct timespec ts;
    RUN.request_stop = engine_stop;
    RUN.request_fatal = engine_fatal;
    R.o = J.o = P.o = o;
    R.t0 = tpar_now();
    clock_gettime(CLOCK_REALTIME, &ts);
    R.wall0 = (double)ts.tv_sec + ts.tv_nsec / 1e9;
    R.rbase = 1;
    IN.name = "-";
    signal(SIGPIPE, SIG_IGN);
    int typed_input = isatty(0) && o->mode != MODE_RUN;
    if (o->nfiles) { /* stdin is read only as "-" */
        typed_input = 0;
        for (int i = 0; i < o->nfiles; i++)
            typed_input |= !strcmp(o->files[i], "-") && isatty(0);
    }
    input_hide_stdin();
    if (o->mode == MODE_RUN) {
        job_for_run();
        IN.last_seq = 1;
        IN.done = 1;
    } else {
        input_init(o, uv_default_loop());
    }
    setup_files(o, &J.resume, &out_fd, &log_fd);
    record_init(o, out_fd, log_fd);
    setup_wargv(o, &P.wargv, &P.zargv);
    setup_loop(o, out_fd, typed_input);
    output_start(E.loop);
    P.loop = E.loop;
    if (REMOTE(o) && !o->dry_run) {
        P.remote = 1;
        remote_start(o, E.loop, P.wargv);
    }
    if (!o->dry_run)
        pool_prestart(o->prestart);
    uv_run(E.loop, UV_RUN_DEFAULT);
    if (P.remote)
        remote_finish();
    if (P.zargv)
        tpar_zygote_stop(&P.zygote);
    if (o->summary && RUN.stop != STOP_PIPE)
        record_summary(P.started);
    output_finish();
    if (E.progress_on)
        progress_line(1);
    if (RUN.stop != STOP_PIPE)
        record_report_errors();
    return exit_status();
}
