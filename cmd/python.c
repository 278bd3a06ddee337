/* Choosing the interpreter the workers serve (see cli.h and interp.h). */
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "interp.h"

/* The directory of the tpar-worker that setup.c will start: $TPAR_WORKER's
 * when that is a program (not a script: a wrapper's real launcher finds
 * the cores beside itself, and reports a missing one), else beside this
 * program, else the build tree's pyworker/.  -1 when there is none to
 * check. */
static int launcher_dir(char *out, size_t n)
{
    const char *env = getenv("TPAR_WORKER");
    char self[TPAR_INTERP_PATH], cand[TPAR_INTERP_PATH + 32];
    if (env && *env) {
        char m[4] = {0};
        FILE *f = fopen(env, "rbe");
        size_t got = f ? fread(m, 1, 4, f) : 0;
        if (f)
            fclose(f);
        if (got != 4 || memcmp(m, "\177ELF", 4) != 0 || !realpath(env, self))
            return -1;
        *strrchr(self, '/') = 0;
        return snprintf(out, n, "%s", self) < (int)n ? 0 : -1;
    }
    ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
    if (len <= 0)
        return -1;
    self[len] = 0;
    char *dir = dirname(self);
    static const char *const subs[] = {"", "/../pyworker"};
    for (size_t i = 0; i < 2; i++) {
        if (snprintf(cand, sizeof cand, "%s%s/tpar-worker", dir, subs[i]) >= (int)sizeof cand)
            continue;
        if (access(cand, X_OK) == 0) {
            *strrchr(cand, '/') = 0;
            return snprintf(out, n, "%s", cand) < (int)n ? 0 : -1;
        }
    }
    return -1;
}

void python_choose(const struct opts *o)
{
    static struct tpar_interp ip;
    char buf[TPAR_INTERP_PATH], err[TPAR_INTERP_PATH + 128], dir[TPAR_INTERP_PATH];
    char core[TPAR_INTERP_PATH];
    char self[TPAR_INTERP_PATH];
    ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
    self[len > 0 ? len : 0] = 0;
    char *slash = strrchr(self, '/');
    if (slash)
        *slash = 0;
    const char *what = "--python";
    const char *py = o->python ? o->python
                               : tpar__interp_default(buf, sizeof buf, slash ? self : NULL, &what);
    int rc = tpar__interp_probe(py, &ip, err, sizeof err);
    if (rc == -ENOMEM)
        cli_oom();
    if (rc < 0)
        cli_die(EXIT_USAGE, "%s: %s", what, err);
    rc = launcher_dir(dir, sizeof dir) == 0
             ? tpar__interp_find_core(&ip, dir, TPAR_VERSION, core, sizeof core)
             : 0;
    if (rc == -ENOMEM)
        cli_oom();
    if (rc < 0) {
        cli_die(EXIT_USAGE,
                "%s: no tpar worker core for Python %s (%s, needs tpar/_worker%s): "
                "install tpar into that Python, or build tpar with -Dworker_pythons=%s",
                what, ip.version, ip.exe, ip.ext_suffix, ip.exe);
    }
    if (setenv("TPAR_PYTHON", ip.exe, 1) < 0)
        cli_oom();
}
