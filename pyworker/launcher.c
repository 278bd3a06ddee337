/* tpar-worker: starts a worker under the interpreter it is asked to serve.
 *
 * This program is not linked to libpython.  It finds the interpreter
 * (--python, $TPAR_PYTHON, the active venv's, python3 in PATH), its shared
 * libpython and a worker core built for its ABI (interp.h), then either
 *   - loads that libpython (RTLD_GLOBAL, so the core and every extension
 *     module find its symbols) and the core, and runs the core's
 *     tpar_worker_main(): CPython embedded, as before; or,
 *   - when the interpreter has no shared libpython (a static build, as
 *     python-build-standalone's), execs the interpreter itself with a
 *     loader that imports the core as an extension module and runs the
 *     same main inside it: the same job loop and protocol.
 * The package passes --libpython and --core itself (it knows them from
 * sysconfig and its own files), so nothing is probed there. */
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "interp.h"

enum { EXIT_NOPYTHON = 72 }; /* as loop.h */

static _Noreturn void fail(const char *fmt, const char *a, const char *b)
{
    fprintf(stderr, "tpar-worker[%ld]: ", (long)getpid());
    fprintf(stderr, fmt, a, b);
    fputc('\n', stderr);
    exit(EXIT_NOPYTHON);
}

/* The value of option `name` (--name V or --name=V) in argv, the last one
 * given; NULL when absent.  The options are left in argv: the core ignores
 * the launcher's own. */
static const char *opt(int argc, char **argv, const char *name)
{
    const char *v = NULL;
    size_t len = strlen(name);
    for (int i = 1; i < argc && strcmp(argv[i], "--") != 0; i++) { /* "--": sys.argv */
        if (strncmp(argv[i], name, len) != 0)
            continue;
        if (argv[i][len] == '=')
            v = argv[i] + len + 1;
        else if (argv[i][len] == 0 && i + 1 < argc)
            v = argv[++i];
    }
    return v;
}

static int has_flag(int argc, char **argv, const char *name)
{
    for (int i = 1; i < argc && strcmp(argv[i], "--") != 0; i++)
        if (strcmp(argv[i], name) == 0)
            return 1;
    return 0;
}

/* The directory this program lives in, for the cores beside it. */
static int self_dir(char *out, size_t n)
{
    ssize_t len = readlink("/proc/self/exe", out, n - 1);
    if (len <= 0)
        return -1;
    out[len] = 0;
    char *slash = strrchr(out, '/');
    if (!slash)
        return -1;
    *slash = 0;
    return 0;
}

/* Python code run as `python -c` with argv [core, args...]: loads the core
 * as the extension module tpar._worker (without importing the tpar
 * package, which imports trio) and runs the worker.  No name is bound in
 * __main__. */
static const char module_loader[] =
    "__import__('_imp').create_dynamic(__import__('sys').modules['_frozen_importlib']"
    ".ModuleSpec('tpar._worker',None,origin=__import__('sys').argv[1]))._main()";

/* What the launcher needs to find, on the heap (see interp.c's scratch). */
struct found {
    char dir[TPAR_INTERP_PATH], buf[TPAR_INTERP_PATH], err[TPAR_INTERP_PATH + 128];
    char core[TPAR_INTERP_PATH];
    struct tpar_interp ip;
};

/* Fills in what the options leave out: the interpreter's real path, its
 * libpython, the core.  The strings it sets are the caller's to keep. */
static void find(const char **python, const char **exe, const char **lib, const char **core)
{
    struct found *f = calloc(1, sizeof *f);
    if (!f)
        fail("out of memory%s%s", "", "");
    int have_dir = self_dir(f->dir, sizeof f->dir) == 0;
    if (!*python)
        *python = tpar__interp_default(f->buf, sizeof f->buf, have_dir ? f->dir : NULL, NULL);
    if (tpar__interp_probe(*python, &f->ip, f->err, sizeof f->err) < 0)
        fail("%s%s", f->err, "");
    *python = strdup(*python);
    *exe = strdup(f->ip.exe);
    if (!*lib)
        *lib = strdup(f->ip.libpython);
    if (!*core) {
        if (tpar__interp_find_core(&f->ip, have_dir ? f->dir : NULL, TPAR_VERSION, f->core,
                                   sizeof f->core) < 0)
            fail("no worker core (tpar/_worker%s) of tpar " TPAR_VERSION
                 " for Python %s; install tpar into that Python",
                 f->ip.ext_suffix, f->ip.version);
        *core = strdup(f->core);
    }
    if (!*python || !*exe || !*lib || !*core)
        fail("out of memory%s%s", "", "");
    free(f);
}

int main(int argc, char **argv)
{
    const char *python = opt(argc, argv, "--python");
    const char *lib = opt(argc, argv, "--libpython");
    if (!lib) /* "" runs the worker inside the interpreter, as for a static one */
        lib = getenv("TPAR_LIBPYTHON");
    const char *core = opt(argc, argv, "--core");
    const char *exe = python;
    if (!python || !lib || !core)
        find(&python, &exe, &lib, &core);

    /* The core gets argv as it is, with --python naming the interpreter
     * found, so that the embedded one takes its prefix and venv. */
    char **v = calloc((size_t)argc + 5, sizeof *v);
    if (!v)
        fail("out of memory%s%s", "", "");
    int n = 0;
    if (lib && *lib) {
        /* --python goes before a "--", after which come the parent
         * script's sys.argv (the package's workers). */
        int end = 1;
        while (end < argc && strcmp(argv[end], "--") != 0)
            end++;
        v[n++] = argv[0];
        for (int i = 1; i < end; i++)
            v[n++] = argv[i];
        const char *given = opt(argc, argv, "--python");
        if (exe && (!given || strcmp(exe, given) != 0)) {
            v[n++] = "--python";
            v[n++] = (char *)exe;
        }
        for (int i = end; i < argc; i++)
            v[n++] = argv[i];
        v[n] = NULL;
        if (!dlopen(lib, RTLD_NOW | RTLD_GLOBAL))
            fail("cannot load %s", dlerror(), "");
        void *h = dlopen(core, RTLD_NOW | RTLD_LOCAL);
        if (!h)
            fail("cannot load the worker core: %s%s", dlerror(), "");
        void *sym = dlsym(h, "tpar_worker_main");
        int (*core_main)(int, char **);
        memcpy(&core_main, &sym, sizeof sym); /* POSIX: a void * holds it */
        if (!sym)
            fail("%s is not a tpar worker core%s", core, "");
        return core_main(n, v);
    }

    /* No shared libpython: run the core inside the interpreter itself.
     * What the embedding main does before Python starts and an exec keeps
     * (the signal mask) is done here. */
    if (!exe || !*exe)
        fail("no interpreter to run%s%s", "", "");
    if (has_flag(argc, argv, "--pdeathsig")) {
        /* Until the core sets its own handler: a parent that dies while
         * the interpreter starts takes this process with it. */
        pid_t parent = getppid();
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(EXIT_NOPYTHON);
    }
    if (has_flag(argc, argv, "--zygote")) {
        sigset_t chld;
        sigemptyset(&chld);
        sigaddset(&chld, SIGCHLD);
        sigprocmask(SIG_BLOCK, &chld, NULL);
    }
    v[n++] = (char *)exe;
    v[n++] = "-c";
    v[n++] = (char *)module_loader;
    v[n++] = (char *)core;
    for (int i = 1; i < argc; i++)
        v[n++] = argv[i];
    v[n] = NULL;
    execv(exe, v);
    fail("cannot run %s: %s", exe, strerror(errno));
}
