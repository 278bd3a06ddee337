"""What every layer of the Trio package shares: its errors, WorkerType,
the statistics record, and the one pickling path (a job or a context's
init/retire going to a worker, an outcome coming back).

Layers, each importing only those above it:
  _abc    this file
  _proc   starting each kind of worker, waiting on one, stopping them
  _cache  one context's workers: the LIFO idle cache, prestart, burial
  _impl   WorkerContext (the run path, shutdown), the default context,
          the public functions, exit
"""

import enum
import io
import os
import pickle
import sys
from dataclasses import dataclass

from . import _core

try:
    import cloudpickle
except ImportError:  # pragma: no cover - cloudpickle is optional
    cloudpickle = None

OK = _core.RESULT_OK
RETIRING = _core.RESULT_RETIRING
STATUS_MASK = _core.RESULT_STATUS_MASK  # a RESULT's status without the RETIRING bit
RETIRED = _core.RESULT_RETIRED | _core.RESULT_RETIRING  # a RETIRED notice's status
NO_KWARGS = {}
# The worker's exit codes (pyworker/loop.h) that the package explains.
EXIT_RETIRE_FAILED = 75  # retire() raised
EXIT_UNGUARDED_MAIN = 76  # our script, imported as __main__ there, started jobs
_loads = pickle.loads
_dump = pickle.dump


class BrokenWorkerError(RuntimeError):
    """Raised when a worker process fails or dies unexpectedly.

    This error is not typically encountered in normal use, and indicates a
    severe failure of either tpar or the code that was executing in the
    worker.

    Attributes (None where unknown; for a failed shutdown of several
    workers, those of the first):
      pid (int): the worker's process id.
      exitcode (int): its exit code, when it exited.
      signal (int): the signal that killed it, when one did."""

    pid = exitcode = signal = None

    def _set_status(self, pid, status):
        self.pid = pid
        if status is not None:
            if os.WIFEXITED(status):
                self.exitcode = os.WEXITSTATUS(status)
            elif os.WIFSIGNALED(status):
                self.signal = os.WTERMSIG(status)
        return self


def why(status):
    """What a worker's exit status means, beyond its number: a
    "; ..." suffix for the exit codes the package explains, else ""."""
    if status is None or not os.WIFEXITED(status):
        return ""
    return {EXIT_RETIRE_FAILED: ": its retire() raised (the traceback is on stderr)",
            EXIT_UNGUARDED_MAIN: ": it imported your script as __main__, and the script "
                                 "started jobs: guard the script's entry point with "
                                 "`if __name__ == \"__main__\":`",
            }.get(os.WEXITSTATUS(status), "")


def broken(message, pid, status):
    """A BrokenWorkerError for the worker pid that ended with the wait
    status given."""
    return BrokenWorkerError(message)._set_status(pid, status)


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker: on Python 3.10,
    which shows no notes, the cause at the end of the re-raised
    exception's chain."""

    def __init__(self, tb):
        super().__init__(tb)
        self.tb = tb

    def __str__(self):
        return self.tb


class WorkerType(str, enum.Enum):
    """The kind of worker process a context starts (a `str` enum, as
    trio-parallel's: ``WorkerType.SPAWN == "spawn"``).

    ``SPAWN``: a fresh ``tpar-worker`` process (CPython embedded in a C
    program) per worker, with this process's ``sys.path`` and ``__main__``.
    ``preload`` modules are imported in each worker before its first job.

    ``FORKSERVER``: one ``tpar-worker --zygote`` per context initialises
    Python (and imports our ``__main__``) once, then forks a ready worker
    per request: a new worker costs about a fork.  If the zygote dies, the
    next request starts another.  ``preload`` modules are imported once, in
    the zygote, so its workers start with them.  A closed context's zygote
    is kept for the next context of the same configuration (one is kept,
    until exit).

    ``FORK``: fork this process; the child runs the worker's job loop.  The
    cheapest start, and the worker sees everything this process has
    imported or defined (no pickling of functions by reference needed).
    Caveats, as with ``os.fork``: the child has only the forking thread, so
    a lock another thread held at the fork stays held in it (logging,
    imports, a C library's); the child inherits this process's memory and
    open files; Trio's state in the child is never used.  POSIX only.
    ``preload`` modules are imported in this process, once, before the
    context's first fork."""

    SPAWN = "spawn"
    FORKSERVER = "forkserver"
    FORK = "fork"


@dataclass(frozen=True)
class WorkerContextStatistics:
    idle_workers: int
    running_workers: int


def note(exc, text):
    """exc.add_note(text); on 3.10 the note is kept in __notes__ too,
    where Python does not show it."""
    if hasattr(exc, "add_note"):  # 3.11+
        exc.add_note(text)
    else:
        try:
            exc.__notes__ = list(getattr(exc, "__notes__", ())) + [text]
        except Exception:
            pass


# ------------------------------------------------------------------ pickling

def pickle_into(send, kind, obj, by_ref):
    """The one pickling path to a worker: ``send(kind, dump, obj)`` with
    pickle's dump first when objects pickled by reference can be found in
    the worker (it re-imports our __main__ script), cloudpickle's otherwise
    or when pickle refuses (lambdas, closures).  ``send`` is a worker's
    send_pickled (straight into its frame), or `as_bytes`."""
    if by_ref or cloudpickle is None:
        try:
            return send(kind, _dump, obj)
        except Exception as exc:
            if cloudpickle is None:
                _hint_cloudpickle(exc)
                raise
    return send(kind, cloudpickle.dump, obj)


_BY_VALUE_ONLY = ("local object", "<lambda>", "lambda", "closure")


def _hint_cloudpickle(exc):
    """pickle refused what cloudpickle would take by value: say so."""
    text = str(exc)
    if isinstance(exc, (pickle.PicklingError, AttributeError, TypeError)) and any(
            w in text for w in _BY_VALUE_ONLY):
        hint = ("tpar: lambdas, closures and functions defined inside functions "
                "pickle only with cloudpickle, which is not installed here: "
                "`pip install cloudpickle` makes them work")
        if sys.version_info >= (3, 11):
            exc.add_note(hint)
        else:
            raise pickle.PicklingError(f"{text}\n{hint}") from exc


def as_bytes(kind, dump, obj):
    """A `pickle_into` sink that keeps the pickle, for a frame sent later
    (and to several workers): a context's init and retire."""
    f = io.BytesIO()
    dump(obj, f, 5)
    return f.getvalue()


def outcome(status, body):
    """A RESULT's value, or its exception raised: with its own chain
    (__cause__, __context__, as it was in the worker) and the worker's
    traceback text as a note (3.11+), or as a RemoteTraceback at the end of
    its chain (3.10, which shows no notes)."""
    if status & STATUS_MASK == OK:
        return _loads(body)
    exc, type_name, message, tb, *chain = _loads(body)
    if exc is None:
        exc = RuntimeError(f"{type_name}: {message} (the exception itself could not be sent back: it would not pickle, or was too large)")
    elif chain and chain[0] is not None:
        nodes, links = chain
        for e, (cause, context, suppress) in zip(nodes, links):
            e.__cause__ = nodes[cause] if cause >= 0 else None
            e.__context__ = nodes[context] if context >= 0 else None
            e.__suppress_context__ = suppress
    _attach_traceback(exc, tb)
    context = exc.__context__
    try:
        raise exc
    finally:
        # Raised inside an except block, exc would get the exception being
        # handled as its __context__, in place of its own.
        exc.__context__ = context
        del exc, context


def _attach_traceback(exc, tb):
    if not tb:
        return
    if hasattr(exc, "add_note"):
        exc.add_note("\ntpar: raised in a worker process; its traceback:\n" + tb.rstrip("\n"))
        return
    end, seen = exc, {id(exc)}
    while True:
        nxt = end.__cause__ or (None if end.__suppress_context__ else end.__context__)
        if nxt is None or id(nxt) in seen:
            break
        seen.add(id(nxt))
        end = nxt
    end.__cause__ = RemoteTraceback(tb)
