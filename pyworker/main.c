/* tpar-worker: embeds CPython and runs the jobs its parent sends as frames
 * (docs/protocol.md), or, with --zygote, forks such workers on request.
 * The job loop itself is in loop.c, the zygote's server in zygote.c. */
#include "loop.h"
#include "zygote.h"

#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "connect.h"

static void usage_error(const char *msg)
{
    fprintf(stderr, "tpar-worker: %s\n"
                    "tpar-worker is started by tpar; see docs/protocol.md\n", msg);
    exit(2);
}

static void parse_opts(int argc, char **argv, struct tpar_worker_opts *o)
{
    static const struct option longs[] = {
        {"path", required_argument, 0, 'I'},
        {"cwd-path", no_argument, 0, 'c'},
        {"sys-path", required_argument, 0, 's'},
        {"main-path", required_argument, 0, 'm'},
        {"python", required_argument, 0, 'p'},
        {"init", required_argument, 0, 'i'},
        {"max-tasks", required_argument, 0, 't'},
        {"pdeathsig", no_argument, 0, 'd'},
        {"spin-us", required_argument, 0, 'S'},
        {"idle-timeout", required_argument, 0, 'T'},
        {"zygote", no_argument, 0, 'z'},
        {"preload", required_argument, 0, 'P'},
        {"preload-strict", no_argument, 0, 'R'},
        {"capture", required_argument, 0, 'Y'},
        {"stats", no_argument, 0, 'X'},
        {"connect", required_argument, 0, 'C'},
        {"connect-timeout", required_argument, 0, 'O'},
        {"workers", required_argument, 0, 'W'},
        {"libpython", required_argument, 0, 'L'}, /* the launcher's */
        {"core", required_argument, 0, 'K'},      /* the launcher's */
        {"keep-stdout", no_argument, 0, 'k'},
        {0, 0, 0, 0}};
    memset(o, 0, sizeof(*o));
    o->spin_us = -1;
    o->paths = calloc((size_t)argc, sizeof(char *));
    if (!o->paths)
        tpar__worker_die(EXIT_NOPYTHON, "out of memory");
    int c;
    /* "+": options end at the first non-option; "--" ends them too, and
     * what follows is sys.argv for the parent's script (--main-path). */
    while ((c = getopt_long(argc, argv, "+I:", longs, NULL)) != -1) {
        switch (c) {
        case 'I': o->paths[o->npaths++] = optarg; break;
        case 'c': o->cwd_path = 1; break;
        case 's': o->sys_path = optarg; break;
        case 'm': o->main_path = optarg; break;
        case 'k': o->keep_stdout = 1; break;
        case 'p': o->python = optarg; break;
        case 'i': o->init = optarg; break;
        case 't': o->max_tasks = strtol(optarg, NULL, 10); break;
        case 'd': o->pdeathsig = 1; break;
        case 'S': o->spin_us = strtol(optarg, NULL, 10); break;
        case 'T': o->idle_timeout = strtod(optarg, NULL); break;
        case 'z': o->zygote = 1; break;
        case 'P': o->preload = optarg; break;
        case 'R': o->preload_strict = 1; break;
        case 'Y': o->capture = strtol(optarg, NULL, 10); break;
        case 'X': o->stats = 1; break;
        case 'C': o->connect = optarg; break;
        case 'O': o->connect_timeout = strtod(optarg, NULL); break;
        case 'W': o->connect_workers = (int)strtol(optarg, NULL, 10); break;
        case 'L': case 'K': break;
        default: usage_error("bad option");
        }
    }
    if (optind < argc && strcmp(argv[optind - 1], "--") != 0)
        usage_error("unexpected argument");
    if (optind > 1 && strcmp(argv[optind - 1], "--") == 0) {
        o->main_argv = argv + optind;
        o->main_argc = argc - optind;
    }
    if (o->connect && o->zygote)
        usage_error("--connect and --zygote exclude each other");
    if (o->connect_workers < 0 || o->connect_workers > 4096 ||
        ((o->connect_workers || o->connect_timeout) && !o->connect))
        usage_error("--workers N (1 to 4096) and --connect-timeout go with --connect");
    if (o->connect_timeout < 0)
        usage_error("--connect-timeout must be positive");
}

/* The protocol fds go out of the way of user code (fds 3/4 are free for
 * it, and a print() never corrupts a frame). */
static int lane_fd(int fd)
{ /* a memfd says F_GET_SEALS; anything else there is not a lane of ours */
    return fcntl(fd, F_GET_SEALS) >= 0 ? fd : -1;
}

static void setup_fds(int zygote, int keep_stdout)
{
    if (zygote)
        tpar__worker_take_fds(TPAR_WORKER_FD_IN, -1, -1, -1);
    else
        tpar__worker_take_fds(TPAR_WORKER_FD_IN, TPAR_WORKER_FD_OUT, lane_fd(TPAR_WORKER_FD_DOWN),
                 lane_fd(TPAR_WORKER_FD_UP));
    /* The CLI's stdout carries records: a job's print() goes to stderr.
     * The Trio package's workers print to the program's stdout, as
     * trio-parallel's do (--keep-stdout). */
    if (!keep_stdout)
        dup2(STDERR_FILENO, STDOUT_FILENO);
}

static void setup_signals(int pdeathsig)
{
    tpar__worker_ignore_sigint(); /* Ctrl-C is the parent's to handle */
    if (pdeathsig) {
        /* A parent that died before prctl leaves our input at EOF, and we
         * exit on that; pid 1 may be a legitimate parent in a container. */
        pid_t parent = getppid();
        tpar__worker_die_with_parent();
        if (getppid() != parent)
            _exit(EXIT_PROTOCOL);
    }
}

static void check_status(PyStatus st, PyConfig *cfg)
{
    if (!PyStatus_Exception(st))
        return;
    PyConfig_Clear(cfg);
    if (PyStatus_IsExit(st))
        _exit(st.exitcode);
    fprintf(stderr, "tpar-worker: cannot start Python: %s%s%s\n",
            st.func ? st.func : "", st.func ? ": " : "",
            st.err_msg ? st.err_msg : "?");
    _exit(EXIT_NOPYTHON);
}

/* The interpreter whose environment the worker takes: --python, else the
 * active virtualenv's, else the one tpar was built with (NULL). */
static const char *python_exe(const struct tpar_worker_opts *o, char *buf, size_t n)
{
    if (o->python)
        return o->python;
    const char *venv = getenv("VIRTUAL_ENV");
    if (venv && *venv) {
        snprintf(buf, n, "%s/bin/python3", venv);
        if (access(buf, F_OK) == 0)
            return buf;
    }
    return NULL;
}

static void start_python(const struct tpar_worker_opts *o, const char *argv0)
{
    PyConfig cfg;
    char exe_buf[4096];
    PyConfig_InitPythonConfig(&cfg);
    cfg.parse_argv = 0;
    cfg.install_signal_handlers = 1; /* SIGINT stays ours: set before */
    const char *exe = python_exe(o, exe_buf, sizeof(exe_buf));
    /* getpath finds a venv's pyvenv.cfg next to the executable. */
    if (exe)
        check_status(PyConfig_SetBytesString(&cfg, &cfg.executable, exe), &cfg);
    check_status(PyConfig_SetBytesString(&cfg, &cfg.program_name,
                                         exe ? exe : argv0), &cfg);
    char *argv[] = {(char *)argv0};
    check_status(PyConfig_SetBytesArgv(&cfg, 1, argv), &cfg);
    check_status(Py_InitializeFromConfig(&cfg), &cfg);
    PyConfig_Clear(&cfg);
}

/* The worker core's version, which the launcher (interp.c) reads from the
 * file: a core serves only a launcher of its own version. */
__attribute__((used)) static const char core_tag[] = "\ntpar-worker-core " TPAR_VERSION "\n";

/* Called by the launcher (launcher.c) with libpython loaded, Python not yet
 * started; or, in a Python with no shared libpython, by _main() below from
 * inside the running interpreter ("module mode").  Never returns. */
/* In module mode Python started before the supervisor read the run's
 * secret: the C environment has lost it, but os.environ keeps its copy,
 * which every job would see and pass on to the programs it starts with
 * env=dict(os.environ, ...).  In the worker, with the GIL held. */
static void forget_secret_in_python(void)
{
    PyObject *os = PyImport_ImportModule("os");
    PyObject *env = os ? PyObject_GetAttrString(os, "environ") : NULL;
    PyObject *r = env ? PyObject_CallMethod(env, "pop", "sO", TPAR_SECRET_ENV, Py_None)
                      : NULL;
    Py_XDECREF(os);
    Py_XDECREF(env);
    if (!r) {
        PyErr_Print();
        tpar__worker_die(EXIT_NOPYTHON, "cannot drop the secret from os.environ");
    }
    Py_DECREF(r);
}

__attribute__((visibility("default"))) int tpar_worker_main(int argc, char **argv);
int tpar_worker_main(int argc, char **argv)
{
    struct tpar_worker_opts o;
    int embedded = !Py_IsInitialized();
    parse_opts(argc, argv, &o);
    if (o.zygote && embedded) { /* in module mode the launcher did it before the exec */
        /* The zygote reads SIGCHLD from a signalfd: blocked before Python
         * starts, so that no thread started by site, a preload or the
         * parent's script (each inherits the mask) takes the signal and
         * drops it, leaving dead workers unreported. */
        sigset_t chld;
        sigemptyset(&chld);
        sigaddset(&chld, SIGCHLD);
        sigprocmask(SIG_BLOCK, &chld, NULL);
    }
    if (o.connect) {
        /* Returns in the worker, a child of the supervisor, which it dies
         * with; the socket carries the frames both ways, no lanes. */
        int fd = tpar__worker_connect(o.connect, o.connect_timeout > 0 ? o.connect_timeout : 30.0,
                                      o.connect_workers);
        if (!embedded)
            forget_secret_in_python();
        int fd2 = fcntl(fd, F_DUPFD_CLOEXEC, 0);
        if (fd2 < 0)
            tpar__worker_die(EXIT_PROTOCOL, "out of fds");
        setup_signals(1);
        tpar__worker_take_fds(fd, fd2, -1, -1);
        dup2(STDERR_FILENO, STDOUT_FILENO);
    } else {
        setup_signals(o.pdeathsig);
        setup_fds(o.zygote, o.keep_stdout);
    }
    if (embedded)
        start_python(&o, argv[0]);
    tpar__worker_setup(&o);
    if (o.zygote)
        tpar__zygote_serve(&o);
    tpar__worker_trim_heap(); /* what start-up left free */
    tpar__worker_work(&o);
}


/* tpar._worker._main(): runs the worker inside this interpreter, with
 * sys.argv[2:] as its options (the launcher's `python -c LOADER CORE
 * OPTIONS...`).  Never returns. */
static PyObject *module_main(PyObject *self, PyObject *unused)
{
    PyObject *sys_argv = PySys_GetObject("argv"); /* borrowed */
    Py_ssize_t n = sys_argv && PyList_Check(sys_argv) ? PyList_GET_SIZE(sys_argv) : 0;
    if (n < 2) {
        PyErr_SetString(PyExc_RuntimeError, "tpar._worker: started without a launcher");
        return NULL;
    }
    char **argv = calloc((size_t)n, sizeof *argv);
    if (!argv)
        return PyErr_NoMemory();
    int argc = 0;
    argv[argc++] = "tpar-worker";
    for (Py_ssize_t i = 2; i < n; i++) {
        const char *a = PyUnicode_AsUTF8(PyList_GET_ITEM(sys_argv, i));
        if (!a || !(argv[argc++] = strdup(a)))
            return a ? PyErr_NoMemory() : NULL;
    }
    /* `python -c` put the current directory first in sys.path; an
     * embedded worker does not have it (--cwd-path adds it on purpose). */
    PyObject *path = PySys_GetObject("path");
    if (path && PyList_Check(path) && PyList_GET_SIZE(path) > 0) {
        PyObject *first = PyList_GET_ITEM(path, 0);
        if (PyUnicode_Check(first) && PyUnicode_GET_LENGTH(first) == 0 &&
            PySequence_DelItem(path, 0) < 0)
            return NULL;
    }
    PyObject *one = Py_BuildValue("[s]", "-c");
    if (!one || PySys_SetObject("argv", one) < 0)
        return NULL;
    Py_DECREF(one);
    tpar_worker_main(argc, argv);
    return NULL; /* not reached */
}

static PyMethodDef worker_methods[] = {
    {"_main", module_main, METH_NOARGS, "Runs a tpar worker in this process (for tpar-worker)."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef worker_module = {
    PyModuleDef_HEAD_INIT, "tpar._worker",
    "The tpar worker core: the job loop, for tpar-worker to run in this interpreter.",
    -1, worker_methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__worker(void);
PyMODINIT_FUNC PyInit__worker(void)
{
    return PyModule_Create(&worker_module);
}
