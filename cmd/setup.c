/* Set-up before the loop starts: finding the worker program and building
 * its command line, loading --resume, opening -o and --joblog. */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine.h"

static char *worker_path(void)
{
    const char *env = getenv("TPAR_WORKER");
    if (env && *env)
        return xstrdup(env);
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0)
        return xstrdup("tpar-worker");
    self[n] = 0;
    char *dir = dirname(self);
    static const char *const cands[] = {"/tpar-worker", "/../pyworker/tpar-worker"};
    for (size_t i = 0; i < 2; i++) {
        char *p = xmalloc(strlen(dir) + strlen(cands[i]) + 1);
        strcpy(p, dir);
        strcat(p, cands[i]);
        if (access(p, X_OK) == 0)
            return p;
        free(p);
    }
    char *p = xmalloc(strlen(dir) + 16);
    sprintf(p, "%s/tpar-worker", dir);
    return p;
}

void setup_wargv(const struct opts *o, char ***wargv, char ***zargv)
{
    char **v = xcalloc((size_t)(2 * o->npaths + 16), sizeof *v);
    int n = 0;
    v[n++] = worker_path();
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
    if (o->capture || o->tag) { /* --tag needs the output too */
        static char cbuf[32];
        snprintf(cbuf, sizeof cbuf, "%zu", o->capture ? o->capture : (size_t)CAPTURE_DEFAULT);
        v[n++] = "--capture";
        v[n++] = cbuf;
    }
    if (o->stats)
        v[n++] = "--stats";
    v[n] = NULL;
    *wargv = v;
    *zargv = NULL;
    if (!o->forkserver)
        return;
    char **z = xcalloc((size_t)n + 5, sizeof *z);
    memcpy(z, v, (size_t)n * sizeof *z);
    z[n++] = "--zygote";
    if (o->preload) {
        z[n++] = "--preload";
        z[n++] = (char *)o->preload;
        z[n++] = "--preload-strict";
    }
    *zargv = z;
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
static void refuse_input_as_output(const struct opts *o, const char *path, const char *opt)
{
    for (int i = 0; i < o->nfiles; i++)
        if (strcmp(o->files[i], "-") != 0 && same_file(path, o->files[i]))
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

void setup_files(const struct opts *o, struct idset **resume, int *out_fd, int *log_fd)
{
    *resume = NULL;
    const char *ropt = o->resume_failed ? "--resume-failed" : "--resume";
    int resume_is_out = o->resume && o->output &&
                        (!strcmp(o->output, o->resume) || same_file(o->output, o->resume));
    if (o->resume) {
        int err = 0;
        if (o->joblog && (!strcmp(o->joblog, o->resume) || same_file(o->joblog, o->resume)))
            cli_die(EXIT_USAGE, "%s %s is also the --joblog", ropt, o->resume);
        /* Missing: the first run of `--resume R -o R`; else a typo. */
        *resume = idset_load(o->resume, ropt, !o->resume_failed, resume_is_out, &err);
        if (!*resume && err == -ENOMEM)
            cli_oom();
        if (!*resume)
            cli_die(EXIT_USAGE, "cannot read %s %s: %s", ropt, o->resume, tpar_strerror(err));
        /* R is also the output: keep one record per skipped id, so the
         * records appended make one final record per id. */
        err = resume_is_out ? idset_compact(*resume, o->resume, !o->resume_failed) : 0;
        if (err == -ENOMEM)
            cli_oom();
        if (err < 0)
            cli_die(EXIT_USAGE, "cannot rewrite %s %s: %s", ropt, o->resume, tpar_strerror(err));
    }
    if (o->output)
        refuse_input_as_output(o, o->output, "-o");
    if (o->joblog)
        refuse_input_as_output(o, o->joblog, "--joblog");
    *out_fd = 1;
    if (o->output)
        *out_fd = open_out(o->output, resume_is_out);
    *log_fd = -1;
    if (o->joblog)
        *log_fd = open_out(o->joblog, o->resume != NULL);
}
