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
import pickle
from dataclasses import dataclass

from . import _core

try:
    import cloudpickle
except ImportError:  # pragma: no cover - cloudpickle is optional
    cloudpickle = None

OK = _core.RESULT_OK
RETIRING = _core.RESULT_RETIRING
STATUS_MASK = 0x7F  # a RESULT's status without the RETIRING bit
NO_KWARGS = {}
_loads = pickle.loads
_dump = pickle.dump


class BrokenWorkerError(RuntimeError):
    """Raised when a worker process fails or dies unexpectedly.

    This error is not typically encountered in normal use, and indicates a
    severe failure of either tpar or the code that was executing in the
    worker.  The message names the worker's pid and the signal that killed
    it or its exit code."""


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker, attached as the
    ``__cause__`` of the exception re-raised in the caller."""

    def __init__(self, tb):
        super().__init__(tb)
        self.tb = tb

    def __str__(self):
        return self.tb


class WorkerType(enum.Enum):
    """The kind of worker process a context starts.

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
    if hasattr(exc, "add_note"):  # 3.11+
        exc.add_note(text)


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
        except Exception:
            if cloudpickle is None:
                raise
    return send(kind, cloudpickle.dump, obj)


def as_bytes(kind, dump, obj):
    """A `pickle_into` sink that keeps the pickle, for a frame sent later
    (and to several workers): a context's init and retire."""
    f = io.BytesIO()
    dump(obj, f, 5)
    return f.getvalue()


def outcome(status, body):
    """A RESULT's value, or its exception raised with the worker's
    traceback as the cause."""
    if status & STATUS_MASK == OK:
        return _loads(body)
    exc, type_name, message, tb = _loads(body)
    if exc is None:
        exc = RuntimeError(f"{type_name}: {message} (the exception itself could not be sent back: it would not pickle, or was too large)")
    try:
        raise exc from RemoteTraceback(tb)
    finally:
        del exc
