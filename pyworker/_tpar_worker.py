"""The Python half of tpar-worker: resolving job functions, formatting
errors, and the pickle-job path of the Trio package.  Embedded into the
worker binary at build time; the JSON hot path stays in C (loop.c, and
jsonenc.c for the values)."""

import os
import sys

# True while the parent's script is being imported as __mp_main__: a
# script that starts workers at import time (no `if __name__ ==
# "__main__"` guard) would otherwise start workers without end.
bootstrapping = False


def setup_path(cwd_path, extra, sys_path):
    """sys.path as `python -m` builds it: the current directory first
    (unless PYTHONSAFEPATH says not to, as `python -P` does), then the -I
    directories, then what Python put there (PYTHONPATH, the standard
    library, site-packages)."""
    if sys_path is not None:
        sys.path[:] = [p for p in sys_path.split(os.pathsep)]
    for d in reversed(extra):
        sys.path.insert(0, os.path.abspath(d))
    if cwd_path and not getattr(sys.flags, "safe_path", False):
        sys.path.insert(0, os.getcwd())


def set_argv(argv):
    """sys.argv: the parent's, while its script is imported as __main__
    and after, as multiprocessing's spawn arranges it."""
    sys.argv[:] = argv


# The parent's script, imported here as __main__, started jobs (no
# `if __name__ == "__main__":` guard): the worker exits with this code
# (loop.h EXIT_UNGUARDED_MAIN) and the parent raises BrokenWorkerError.
EXIT_UNGUARDED_MAIN = 76
refused = False  # set by the tpar package when it refused to start jobs


def load_main(path):
    """Import the parent's script as __mp_main__ and alias it as __main__, as
    multiprocessing's spawn does, so functions pickled by reference from the
    parent's __main__ resolve here.  The script's `if __name__ == "__main__"`
    block does not run.  (What runpy.run_path does for a .py file, without
    runpy, which imports pkgutil, typing and re: ~1.4 MB of an idle worker.)"""
    import io

    global bootstrapping
    mod = type(sys)("__mp_main__")
    mod.__dict__.update(__file__=path, __cached__=None, __loader__=None,
                        __package__="", __spec__=None)
    sys.modules["__mp_main__"] = mod
    sys.modules["__main__"] = mod
    bootstrapping = True  # the tpar package refuses to start workers now
    try:
        with io.open_code(path) as f:
            code = compile(f.read(), path, "exec")
        exec(code, mod.__dict__)
    except BaseException:
        if refused:
            # As multiprocessing's spawn: the script must guard its entry
            # point, or every worker would run it.  The job fails with
            # BrokenWorkerError, which says so.
            print(f"tpar-worker[{os.getpid()}]: {path}, imported as __main__, started "
                  f"jobs: guard its entry point with `if __name__ == \"__main__\":`",
                  file=sys.stderr, flush=True)
            os._exit(EXIT_UNGUARDED_MAIN)
        # A script that cannot be re-imported still leaves cloudpickle'd and
        # importable functions usable; say why on stderr.
        import traceback

        print(f"tpar-worker: could not import {path} as __main__:", file=sys.stderr)
        traceback.print_exc()
    finally:
        bootstrapping = False


# A module loaded by file path is registered in sys.modules (pickle,
# dataclasses and typing look its classes up there) under a name no import
# can ask for: its file's stem, "@", and a checksum of its absolute path.
# Under its plain stem, shadow/json.py would become "json" for every later
# job on that worker.  The checksum is stable, so every worker names a
# file's classes alike; there is no dot in the name, so __import__ finds it.
FILE_MODULE_MARK = "@"
_file_modules = {}  # absolute path -> module


def file_module_name(path):
    h = 0x811C9DC5  # FNV-1a, 32 bits: no zlib needed
    for b in os.fsencode(path):
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    stem = os.path.splitext(os.path.basename(path))[0]
    return f"{stem}{FILE_MODULE_MARK}{h:08x}"


def _load_file(path):
    import importlib.util

    path = os.path.abspath(path)
    mod = _file_modules.get(path)
    if mod is not None:
        return mod
    name = file_module_name(path)
    if not os.path.exists(path):
        raise ModuleNotFoundError(f"No such file: {path!r}", name=name, path=path)
    if not path.endswith(".py"):
        raise ImportError(f"cannot load {path!r} as a module: a job's module file "
                          f"must end in .py", name=name, path=path)
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        del sys.modules[name]
        raise
    _file_modules[path] = mod
    return mod


def _frame_builtins():
    import builtins

    return {builtins.eval, builtins.exec, builtins.globals, builtins.locals,
            builtins.vars, builtins.dir}


def _in_a_frame(fn):
    """fn called from a Python frame of its own, with fresh globals: the
    builtins that read their caller's frame (eval, exec, globals, vars...)
    have none when the worker calls them from C, and would raise
    SystemError("frame does not exist")."""
    import builtins

    ns = {"__builtins__": builtins, "__name__": "__tpar_job__"}
    exec("def _wrap(fn):\n"
         "    def call(*args, **kwargs):\n"
         "        return fn(*args, **kwargs)\n"
         "    return call\n", ns)
    wrap = ns.pop("_wrap")
    return wrap(fn)


def resolve(spec):
    """'mod:fn', 'pkg.mod:Class.method' or 'path/to/file.py:fn' -> callable."""
    import importlib

    modname, sep, attr = spec.rpartition(":")
    if not sep or not modname or not attr:
        raise ValueError(f"job function must be MODULE:FUNCTION, got {spec!r}")
    if modname.endswith(".py") or os.sep in modname:
        obj = _load_file(modname)
    else:
        obj = importlib.import_module(modname)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{spec} is not callable (it is {type(obj).__name__})")
    if type(obj) is type(len) and obj in _frame_builtins():
        obj = _in_a_frame(obj)
    return obj


def type_name(tp):
    mod = getattr(tp, "__module__", "builtins")
    qual = getattr(tp, "__qualname__", tp.__name__)
    if isinstance(mod, str) and FILE_MODULE_MARK in mod:  # a file's: its stem
        mod = mod.partition(FILE_MODULE_MARK)[0]
    return qual if mod in ("builtins", "__main__", "__mp_main__") else f"{mod}.{qual}"


# An error's message and traceback are cut to this many characters each:
# the record must fit in a frame (FRAME_MAX, set by the C side), and a
# megabyte says what went wrong.
ERROR_TEXT_MAX = 1 << 20
FRAME_MAX = 1 << 30  # TPAR_FRAME_MAX_DEFAULT: load_helper (loop.c) sets it


def _cut(text):
    if len(text) <= ERROR_TEXT_MAX:
        return text
    return f"{text[:ERROR_TEXT_MAX]}... ({len(text) - ERROR_TEXT_MAX} more characters)"


def _internal_frame(filename):
    """A frame of tpar's own code or of importlib, which only says how the
    job's function was found."""
    if filename == "_tpar_worker.py" or filename.startswith("<frozen importlib"):
        return True
    import importlib

    return os.path.dirname(filename) == os.path.dirname(importlib.__file__)


def _trim(te, seen):
    """Drops the internal frames of a TracebackException, its causes,
    contexts and group members."""
    import traceback

    if te is None or id(te) in seen:
        return
    seen.add(id(te))
    if any(_internal_frame(f.filename) for f in te.stack):
        te.stack = traceback.StackSummary.from_list(
            [f for f in te.stack if not _internal_frame(f.filename)])
    _trim(te.__cause__, seen)
    _trim(te.__context__, seen)
    for sub in getattr(te, "exceptions", None) or ():
        _trim(sub, seen)


def format_tb(exc):
    """The traceback text of exc, without tpar's and importlib's frames."""
    import traceback

    te = traceback.TracebackException(type(exc), exc, exc.__traceback__)
    _trim(te, set())
    return "".join(te.format())


def error_info(exc, with_tb=True):
    """The {"type", "message", "traceback"} record of an exception."""
    tb = ""
    if with_tb:
        tb = format_tb(exc)
    try:
        message = str(exc)
    except BaseException:
        message = f"<unprintable {type(exc).__name__}>"
    return {"type": type_name(type(exc)), "message": _cut(message), "traceback": _cut(tb)}


# --------------------------------------------------------------- pickle jobs

# Imported on the first pickle job: the CLI's workers never pay for them.
_pickle = _pickler = None
from time import perf_counter as _now


def _load_picklers():
    """pickle's C half only (pickle.loads and dump are _pickle's): pickle.py
    imports re, and cloudpickle costs ~3 MB of RSS.  A payload that needs
    cloudpickle imports it itself, and results go through _dump.

    _pickle's initialisation imports functools for one name, partial, and
    functools brings collections, types and operator with it: 0.5 MB of an
    idle worker's RSS.  So unless functools is there already, a module
    holding just _functools.partial stands in for it during the import and
    goes right after.  That is the very object functools.partial is, so
    nothing differs, and a job that imports functools gets the real one.
    Not while other threads may run (threading imported: a preload or the
    main script started some): one could import functools meanwhile."""
    global _pickle
    import sys
    if any(m in sys.modules for m in ("functools", "_pickle", "threading")):
        import _pickle
        return
    import _functools
    stand_in = type(sys)("functools")
    stand_in.partial = _functools.partial
    sys.modules["functools"] = stand_in
    try:
        import _pickle
    finally:
        if sys.modules.get("functools") is stand_in:
            del sys.modules["functools"]


def _load_cloudpickle():
    global _pickler
    try:
        import cloudpickle as _pickler
    except ImportError:  # cloudpickle is optional
        import pickle as _pickler


# Values of these exact types pickle to the same bytes with pickle and
# cloudpickle (cloudpickle only changes how classes, functions and a few
# library types are reduced): for them cloudpickle is not imported.
_PLAIN = frozenset((type(None), bool, int, float, complex, str, bytes, bytearray))


def _dump(obj, file):
    if type(obj) in _PLAIN:
        return _pickle.dump(obj, file, 5)
    if _pickler is None:
        _load_cloudpickle()
    return _pickler.dump(obj, file, 5)


def _dumps(obj):
    if type(obj) in _PLAIN:
        return _pickle.dumps(obj, 5)
    if _pickler is None:
        _load_cloudpickle()
    return _pickler.dumps(obj, 5)


_retire = None
_FunctionType = type(_load_picklers)
_BuiltinType = type(len)
_CO_ASYNC = 0x80 | 0x200  # inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR


def _is_coro_fn(fn):
    # inspect costs ~2 MB of RSS.  For a plain function, a builtin or a
    # class without markcoroutinefunction's mark (3.12), inspect's answer is
    # this code flag test: there is no method or partial to unwrap.
    t = type(fn)
    if (t is _FunctionType or t is _BuiltinType or t is type) and not hasattr(
            fn, "_is_coroutine_marker"):
        return t is _FunctionType and bool(fn.__code__.co_flags & _CO_ASYNC)
    import inspect

    return inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)


CHAIN_MAX = 64  # exceptions of a chain sent back, at most


def _chain(exc):
    """Every exception reachable from exc through __cause__ and __context__
    (exc first), and for each the (cause, context) indexes into that list
    (-1: none) and __suppress_context__: pickle keeps neither link."""
    nodes, index, links = [exc], {id(exc): 0}, []
    for e in nodes:
        pair = []
        for nxt in (e.__cause__, e.__context__):
            j = -1
            if nxt is not None:
                j = index.get(id(nxt), -1)
                if j < 0 and len(nodes) < CHAIN_MAX:
                    j = index[id(nxt)] = len(nodes)
                    nodes.append(nxt)
            pair.append(j)
        links.append((pair[0], pair[1], bool(e.__suppress_context__)))
    return nodes, links


def _pickled_error(exc):
    """The error's body: the exception itself with its chain when they
    pickle, unpickle and fit in a frame (with the 8-byte duration); else
    the exception alone; else its record."""
    info = error_info(exc)
    head = (exc, info["type"], info["message"], info["traceback"])
    for body in (head + _chain(exc), head + (None, None)):
        try:
            body = _dumps(body)
            if len(body) > FRAME_MAX - 8:
                raise OverflowError("too large to send")
            _pickle.loads(body)  # an exception that pickles but will not unpickle
            return body
        except BaseException:
            pass
    return _pickle.dumps((None, info["type"], info["message"], info["traceback"]), 5)


class _JSONContext:
    """What _json's C scanner reads from the decoder that makes it: the
    settings of json.decoder.JSONDecoder()."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {"-Infinity": float("-inf"), "Infinity": float("inf"),
                      "NaN": float("nan")}.__getitem__


def json_scanner():
    """json.decoder.JSONDecoder().scan_once, without importing json.decoder:
    it imports re (and enum, functools...), ~5 ms of a CLI worker's first
    job and ~1 MB of its RSS, for patterns the C scanner never uses."""
    import _json
    return _json.make_scanner(_JSONContext())


def warm_for_fork():
    """Imports, once in a zygote, what every forked worker would otherwise
    import on its first pickle job (cloudpickle alone costs ~15 ms)."""
    import inspect  # noqa: F401  (used by _is_coro_fn)

    if _pickle is None:
        _load_picklers()
    if _pickler is None:
        _load_cloudpickle()


def config(payload):
    """Takes the parent's settings (docs/protocol.md, CONFIG): runs its
    init(), keeps its retire(), takes its multiprocessing authkey."""
    global _retire
    if _pickle is None:
        _load_picklers()
    settings = _pickle.loads(payload)
    if "authkey" in settings:
        # Manager proxies authenticate with current_process().authkey: it
        # must be the parent's, as under multiprocessing's spawn.
        from multiprocessing import process

        process.current_process().authkey = settings["authkey"]
    if "retire" in settings:
        _retire = settings["retire"]
    init = settings.get("init")
    if init is not None:
        init()
    return _retire is not None

def run_pickle(payload, sink):
    """-> (ok, duration, body, retiring); body is None when the value was
    pickled into sink (a file-like object: large values go straight into
    shared memory), else the pickled error."""
    if _pickle is None:
        _load_picklers()
    try:
        fn, args, kwargs = _pickle.loads(payload)
    except BaseException as exc:
        return False, 0.0, _pickled_error(exc), False
    t0 = _now()
    try:
        if _is_coro_fn(fn):
            raise TypeError(f"tpar cannot run the coroutine function {fn!r}: pass a sync function")
        result = fn(*args, **kwargs)
        if hasattr(result, "__await__") and hasattr(result, "close"):
            result.close()
            raise TypeError(f"{fn!r} returned a coroutine: pass a sync function")
    except BaseException as exc:
        ok, body = False, _pickled_error(exc)
    else:
        try:
            _dump(result, sink)
            ok, body = True, None
        except BaseException as exc:
            ok, body = False, _pickled_error(exc)
    dt = _now() - t0
    return ok, dt, body, False  # retire() runs after the result has gone back


def retire_now():
    """The parent's retire(), once the job's result has gone back: true
    retires this worker; an exception ends it (EXIT_RETIRE_FAILED)."""
    return bool(_retire())
