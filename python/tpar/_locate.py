"""Finding tpar-worker and building its command line."""

import os
import shutil
import sys
import sysconfig
import threading

WORKER_NAME = "tpar-worker"


def _executable(path):
    return bool(path) and os.path.isfile(path) and os.access(path, os.X_OK)


def _candidates():
    env = os.environ.get("TPAR_WORKER")
    if env:
        yield env
        return
    # The worker built together with this package speaks its protocol for
    # sure: the build tree's, or an editable install's.  An installed
    # package (a wheel) never looks there: the path is the build machine's.
    here = os.path.dirname(os.path.abspath(__file__))
    if os.path.basename(os.path.dirname(here)) not in ("site-packages", "dist-packages"):
        try:
            from ._buildinfo import BUILD_WORKER
        except ImportError:  # pragma: no cover - only in a source checkout
            BUILD_WORKER = None
        yield BUILD_WORKER
    # pip install puts it in the scripts dir beside the interpreter's.
    for scheme_dir in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
        if scheme_dir:
            yield os.path.join(scheme_dir, WORKER_NAME)
    yield shutil.which(WORKER_NAME)
    # <build>/python/tpar/_locate.py -> <build>/pyworker/tpar-worker
    yield os.path.join(os.path.dirname(os.path.dirname(here)), "pyworker", WORKER_NAME)


def find_worker():
    """The tpar-worker to run: $TPAR_WORKER, else the one built with this
    package if it is still there, else one installed beside this Python
    (scripts dir, PATH)."""
    for path in _candidates():
        if _executable(path):
            return os.path.abspath(path)
    env = os.environ.get("TPAR_WORKER")
    where = f"TPAR_WORKER={env!r} is not an executable" if env else "not found"
    raise FileNotFoundError(f"{WORKER_NAME}: {where}; install tpar (pip install .) or set TPAR_WORKER")


def _libpython():
    """This interpreter's shared libpython, which the worker loads: "" when
    there is none (a static build), and the worker then runs inside this
    interpreter's executable instead (pyworker/launcher.c)."""
    so = sysconfig.get_config_var("INSTSONAME") or ""
    if ".so" not in so:
        return ""
    for d in (sysconfig.get_config_var("LIBDIR"), os.path.join(sys.base_prefix, "lib")):
        if d and os.path.isfile(os.path.join(d, so)):
            return os.path.join(d, so)
    return ""


def _core(worker):
    """The worker core built for this interpreter's ABI: installed beside
    this package, or in the build tree beside tpar-worker; None lets the
    launcher look for it."""
    name = "_worker" + (sysconfig.get_config_var("EXT_SUFFIX") or ".so")
    for d in (os.path.dirname(os.path.abspath(__file__)), os.path.dirname(worker)):
        if os.path.isfile(os.path.join(d, name)):
            return os.path.join(d, name)
    return None


_interp = None


def interpreter_args(worker):
    """--python/--libpython/--core for a worker of this very interpreter:
    its executable (prefix, venv), its libpython, its ABI's core."""
    global _interp
    if _interp is None or _interp[0] != worker:
        args = []
        if sys.executable:
            args += ["--python", sys.executable]
            if os.environ.get("TPAR_LIBPYTHON") is None:
                args += ["--libpython", _libpython()]
        core = _core(worker)
        if core:
            args += ["--core", core]
        _interp = (worker, args)
    return _interp[1]


def main_path():
    """The parent's __main__ script, when functions defined there can be
    found by re-importing it in the worker (as multiprocessing's spawn does)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    name = getattr(spec, "name", None)
    if name is not None and (name == "__main__" or name.endswith(".__main__")):
        return None  # `python -m pkg`: nothing of the user's lives there
    path = getattr(main, "__file__", None)
    if not path or not path.endswith(".py") or not os.path.isfile(path):
        return None
    return os.path.abspath(path)


def worker_argv(extra=(), main_argv=True):
    """argv for a fresh worker that sees what this process sees; with
    main_argv, ending with "-- <our sys.argv>" (its sys.argv)."""
    path = [p or os.getcwd() for p in sys.path]
    worker = find_worker()
    # --keep-stdout: a job's print() goes to our stdout, as trio-parallel's.
    argv = [worker, "--sys-path", os.pathsep.join(path), "--keep-stdout"]
    argv += interpreter_args(worker)
    mp = main_path()
    if mp:
        argv += ["--main-path", mp]
    # PDEATHSIG fires when the spawning *thread* exits, so only the main
    # thread may ask for it.
    if threading.current_thread() is threading.main_thread():
        argv.append("--pdeathsig")
    argv.extend(extra)
    argv.extend(os.environ.get("TPAR_WORKER_ARGS", "").split())  # for experiments
    if main_argv and sys.argv:
        # sys.argv in the worker, set before our __main__ is imported there
        argv += ["--", *sys.argv]
    return argv
