"""The Trio side of tpar: worker contexts, run_sync and the default cache.

The model is trio.to_thread.run_sync.  Each job borrows a worker from a
context's LIFO cache of tpar-worker processes, writes one JOB_PICKLE frame
and reads one RESULT frame (docs/protocol.md).  The extension (_core) does
the reads, writes and frame decoding without blocking, spinning a few
microseconds for a quick answer; otherwise this module waits with
trio.lowlevel.wait_readable / wait_writable, so no thread is involved.
"""

import atexit
import contextvars
import enum
import importlib
import math
import os
import pickle
import sys
import threading
import time
import weakref
from contextlib import asynccontextmanager
from dataclasses import dataclass
from numbers import Real

import trio
from trio.lowlevel import (
    RunVar,
    checkpoint,
    current_task as _current_task,
    enable_ki_protection,
    wait_readable,
    wait_writable,
)

from . import _core
from ._locate import main_path, worker_argv

try:
    import cloudpickle
except ImportError:  # pragma: no cover - cloudpickle is optional
    cloudpickle = None

_JOB = _core.FRAME_JOB_PICKLE
_RETIRING = _core.RESULT_RETIRING
_OK = _core.RESULT_OK
_NO_KWARGS = {}
SPIN_US = 50.0  # how long recv() polls for a quick answer before epoll
YIELD_SPIN_S = float(os.environ.get("TPAR_YIELD_SPIN_US", 50)) * 1e-6
_monotonic = time.monotonic
_perf = time.perf_counter
_loads = pickle.loads
_dumps = pickle.dumps
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


# ------------------------------------------------------------------ pickling

def _pickle_job(obj, by_ref):
    """pickle first when objects pickled by reference can be found in the
    worker (it re-imports our __main__ script), cloudpickle otherwise or when
    pickle refuses (lambdas, closures)."""
    if by_ref or cloudpickle is None:
        try:
            return _dumps(obj, 5)
        except Exception:
            if cloudpickle is None:
                raise
    return cloudpickle.dumps(obj, 5)


def _outcome(status, body):
    if status & 0x7F == _OK:
        return _loads(body)
    exc, type_name, message, tb = _loads(body)
    if exc is None:
        exc = RuntimeError(f"{type_name}: {message} (the exception itself could not be sent back: it would not pickle, or was too large)")
    try:
        raise exc from RemoteTraceback(tb)
    finally:
        del exc


# --------------------------------------------------------------- graveyard
# Workers of a default context replaced by configure_default_context, whose
# exit status has not been collected yet (a context keeps its own in
# _dying).  Reaped without blocking on the next acquire, and for good at
# exit: no zombie is left behind.

_graveyard = []
_graveyard_lock = threading.Lock()


def _bury(w):
    w.close()
    if w.reap(False) is None:
        with _graveyard_lock:
            _graveyard.append(w)


def _reap_graveyard():
    with _graveyard_lock:
        _graveyard[:] = [w for w in _graveyard if w.reap(False) is None]


def _kill(w):
    w.kill()
    w.reap(True)
    w.close()


# ------------------------------------------------------------------ context

def _refuse_while_bootstrapping():
    """A worker re-imports the parent's script as __mp_main__.  A script
    that starts jobs at import time (no `if __name__ == "__main__":` guard)
    would have every worker start more workers, without end; stop that as
    multiprocessing does.  tpar-worker's helper module says when it is
    importing the script."""
    helper = sys.modules.get("_tpar_worker")
    if helper is not None and getattr(helper, "bootstrapping", False):
        raise RuntimeError(
            "tpar: a worker process is importing your script as __main__, and the "
            "script started jobs while being imported.  Guard the script's entry "
            "point with `if __name__ == \"__main__\":`.")


def _check_preload(preload):
    """preload= -> a tuple of distinct module names, in order."""
    if isinstance(preload, str):
        names = (preload,)
    elif isinstance(preload, (bytes, bytearray, memoryview)):
        raise TypeError(f"preload must be a module name (str) or an iterable of "
                        f"module names, got {preload!r}")
    else:
        try:
            names = tuple(preload)
        except TypeError:
            raise TypeError(f"preload must be a module name (str) or an iterable of "
                            f"module names, got {preload!r}") from None
    out = []
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"preload: module names must be str, got {name!r}")
        if not name or not all(part.isidentifier() for part in name.split(".")):
            raise ValueError(f"preload: {name!r} is not an absolute module name "
                             f"(such as 'numpy' or 'package.module')")
        if name not in out:
            out.append(name)
    return tuple(out)


def _check_prestart(prestart):
    if not isinstance(prestart, int) or isinstance(prestart, bool):
        raise TypeError(f"prestart must be a number of workers (int), got {prestart!r}")
    if prestart < 0:
        raise ValueError(f"prestart must be non-negative, got {prestart!r}")
    return prestart


def _import_all(names):
    """Imports the preload modules here (FORK: in the parent, once)."""
    for name in names:
        try:
            importlib.import_module(name)
        except BaseException as exc:
            _note(exc, f"tpar: preload={names!r}: importing {name!r} failed")
            raise


def _note(exc, text):
    if hasattr(exc, "add_note"):  # 3.11+
        exc.add_note(text)


def _check_params(idle_timeout, init, retire, grace_period, worker_type):
    for name, value in (("idle_timeout", idle_timeout), ("grace_period", grace_period)):
        if not isinstance(value, Real) or isinstance(value, bool):
            raise TypeError(f"{name} must be a number of seconds, got {value!r}")
        if math.isnan(value) or value < 0:
            raise ValueError(f"{name} must be non-negative, got {value!r}")
    for name, value in (("init", init), ("retire", retire)):
        if not callable(value):
            raise TypeError(f"{name} must be callable, got {value!r}")
    if not isinstance(worker_type, WorkerType):
        raise ValueError(f"worker_type must be a member of WorkerType, got {worker_type!r}")


class WorkerContext:
    """A context for running synchronous functions in an isolated cache of
    worker processes.  Made by `open_worker_context`, never directly."""

    __slots__ = ("idle_timeout", "init", "retire", "grace_period", "worker_type",
                 "preload", "_config", "_lock", "_idle", "_busy", "_running",
                 "_closed", "_by_ref", "_dying", "_worker_extra", "_zygote", "_zlock",
                 "_preload_job", "_unchecked", "_fork_preload", "_prestarter",
                 "_idle_cv", "_prestarting", "_zkey", "_forks", "_closing",
                 "_replaced", "__weakref__")

    def __init__(self, *args, **kwargs):
        raise TypeError("WorkerContext has no public constructor: use tpar.open_worker_context()")

    @classmethod
    def _create(cls, idle_timeout=600, init=bool, retire=bool, grace_period=30,
                worker_type=WorkerType.SPAWN, preload=()):
        _check_params(idle_timeout, init, retire, grace_period, worker_type)
        preload = _check_preload(preload)
        self = object.__new__(cls)
        self.idle_timeout = idle_timeout
        self.init = init
        self.retire = retire
        self.grace_period = grace_period
        self.worker_type = worker_type
        self.preload = preload
        self._by_ref = main_path() is not None
        # An idle worker exits by itself a little after we stop using it, so
        # a worker forgotten by an idle program still goes away.
        self._worker_extra = ()
        if math.isfinite(idle_timeout):
            self._worker_extra = ("--idle-timeout", repr(idle_timeout * 1.1 + 0.5))
        # preload: FORK imports in this process before its first fork; SPAWN
        # and FORKSERVER workers get a first job that imports the modules
        # (a FORKSERVER zygote has imported them already, so there it only
        # checks), answered before the worker's first real job is sent: an
        # import error is raised in the caller, not left in a broken worker.
        self._preload_job = None
        self._fork_preload = bool(preload) and worker_type is WorkerType.FORK
        if preload and worker_type is not WorkerType.FORK:
            self._preload_job = _dumps(
                (all, (map(importlib.import_module, preload),), _NO_KWARGS), 5)
        self._unchecked = set()  # workers whose preload answer is not read yet
        self._prestarter = None  # FORKSERVER prestart: the thread asking for forks
        self._forks = worker_type is WorkerType.FORK  # its workers start at once
        self._config = None
        if init is not bool or retire is not bool:
            self._config = _pickle_job(
                (None if init is bool else init, None if retire is bool else retire),
                self._by_ref)
        self._lock = threading.Lock()
        self._idle_cv = threading.Condition(self._lock)  # a prestarted worker came
        self._prestarting = 0  # prestarted workers not yet in the cache
        self._zygote = None  # FORKSERVER: the forkserver, started on demand
        self._zkey = None  # the argv it was started with
        self._zlock = threading.Lock()
        self._idle = []  # (worker, idle since), most recent last: LIFO
        self._busy = set()
        self._dying = []  # retired or replaced, exit status not yet collected
        self._running = 0
        self._closed = False  # no worker is taken or kept any more
        self._closing = False  # no new call is taken (closing, or closed)
        self._replaced = False  # a default context replaced by configure_default_context
        _live_contexts.add(self)
        return self

    def __repr__(self):
        return (f"<WorkerContext idle_timeout={self.idle_timeout} grace_period="
                f"{self.grace_period} worker_type={self.worker_type.name}"
                + (f" preload={self.preload!r}" if self.preload else "") + ">")

    def statistics(self):
        """Return the number of idle and running workers in this context."""
        with self._lock:
            return WorkerContextStatistics(len(self._idle), self._running)

    # ------------------------------------------------------------ the cache

    def _acquire(self):
        """A live worker: the most recently idle one, else a fresh one."""
        if _graveyard:
            _reap_graveyard()
        if self._dying:
            self._reap_dying()
        with self._lock:
            if self._closing or self._closed:
                raise trio.ClosedResourceError("this worker context is closed")
            self._running += 1
            idle = self._idle
            # Stale idle workers are retired here; the workers' own idle
            # exit comes later (see _worker_extra), so we win that race.
            horizon = _monotonic() - self.idle_timeout
            while idle:
                w, since = idle.pop()
                if since >= horizon and w.alive():
                    self._busy.add(w)
                    return w
                self._bury(w, locked=True)  # died while idle, or stale: replaced silently
                if since < horizon:
                    for old, _ in idle:
                        self._bury(old, locked=True)
                    idle.clear()
        try:
            _refuse_while_bootstrapping()
            w = self._wait_prestarted() if self._prestarting else None
            if w is None:
                w = self._start_worker()
        except BaseException:
            with self._lock:
                self._running -= 1
            raise
        with self._lock:
            self._busy.add(w)
        return w

    def _wait_prestarted(self):
        """A prestarted worker is on its way (FORKSERVER: the zygote is
        still starting): take it rather than start one more."""
        with self._idle_cv:
            while self._prestarting and not self._idle and not self._closed:
                self._idle_cv.wait(0.05)
            while self._idle:
                w, _ = self._idle.pop()
                if w.alive():
                    return w
                self._bury(w, locked=True)
        return None

    def _start_worker(self):
        """A new worker, its preload job and CONFIG sent (not awaited)."""
        w = self._new_worker()
        try:
            if self._preload_job is not None:
                self._unchecked.add(w)
                w.send(_JOB, self._preload_job)
            if self._config is not None:
                w.send(_core.FRAME_CONFIG, self._config)
        except BrokenPipeError:
            pass  # it died already: its first job finds out why
        return w

    def _zygote_argv(self):
        extra = self._worker_extra + ("--zygote",)
        if self.preload:
            extra += ("--preload", ",".join(self.preload))
        return worker_argv(extra)

    def _new_worker(self):
        if self.worker_type is WorkerType.SPAWN:
            return _core.spawn(worker_argv(self._worker_extra))
        if self.worker_type is WorkerType.FORK:
            if self._fork_preload:
                _import_all(self.preload)
                self._fork_preload = False
            idle = float(self._worker_extra[1]) if self._worker_extra else 0.0
            return _core.fork_worker(
                threading.current_thread() is threading.main_thread(), idle)
        with self._zlock:
            for attempt in (1, 2):
                if self._closed:
                    raise trio.ClosedResourceError("this worker context is closed")
                if self._zygote is None:
                    self._zkey = tuple(self._zygote_argv())
                    self._zygote = _start_zygote(self._zkey)
                try:
                    return self._zygote.fork()
                except BrokenPipeError:  # it died: the next one takes over
                    self._zygote.stop()
                    self._zygote = None
                    if attempt == 2:
                        raise

    # ------------------------------------------------------------- prestart

    def _prestart(self, n):
        """Starts n workers without waiting for them to be ready, and puts
        them in the idle cache.  SPAWN: n posix_spawns (their READY is read
        when they are first used); FORK: n forks; FORKSERVER: the zygote is
        spawned here and a thread asks it for the n workers, so the caller
        never waits for the zygote's start-up.  Best effort: an error stops
        the prestart, and the first call that needs a worker raises it."""
        if n <= 0:
            return
        self._prestarting = n
        try:
            _refuse_while_bootstrapping()
            if self.worker_type is WorkerType.FORKSERVER:
                with self._zlock:
                    if self._zygote is None and not self._closed:
                        self._zkey = tuple(self._zygote_argv())
                        self._zygote = _start_zygote(self._zkey)
                t = threading.Thread(target=self._prestart_some, args=(n,),
                                     name="tpar-prestart", daemon=True)
                self._prestarter = t
                t.start()
            else:
                self._prestart_some(n)
        except Exception:
            self._prestarting = 0

    def _prestart_some(self, n):
        try:
            for _ in range(n):
                if self._closed:
                    return
                try:
                    w = self._start_worker()
                except Exception:
                    return
                with self._lock:
                    self._prestarting -= 1
                    if not self._closed:
                        self._idle.append((w, _monotonic()))
                        self._idle_cv.notify_all()
                        continue
                self._bury(w)
        finally:
            with self._lock:
                self._prestarting = 0
                self._idle_cv.notify_all()

    def _stop_zygote(self, park=False):
        """Stops the forkserver, or with park=True keeps it for the next
        context of the same configuration (_park_zygote)."""
        with self._zlock:
            z, self._zygote = self._zygote, None
        if z is not None:
            if park:
                _park_zygote(z, self._zkey)
            else:
                z.stop()

    def _release(self, w, keep):
        with self._lock:
            self._running -= 1
            self._busy.discard(w)
            if keep and not self._closed:
                self._idle.append((w, _monotonic()))
                return
        self._bury(w)

    def _bury(self, w, locked=False):
        """Lets w go: its pipes close (it exits at end of file) and its exit
        status is collected now or by a later _reap_dying / close."""
        self._unchecked.discard(w)
        w.close()
        if w.reap(False) is None:
            if locked:
                self._dying.append(w)
            else:
                with self._lock:
                    self._dying.append(w)

    def _reap_dying(self):
        with self._lock:
            self._dying[:] = [w for w in self._dying if w.reap(False) is None]

    def _release_killed(self, w):
        self._unchecked.discard(w)
        _kill(w)
        self._release(w, False)

    async def _await_preload(self, w):
        """Reads the answer to w's preload job; raises its import error (w
        goes) or BrokenWorkerError, else w is ready for jobs."""
        try:
            res = w.recv(0.0)
            if res is None:
                res = await _finish(w, False)
        except trio.Cancelled:
            self._release(w, True)  # still unchecked: read on its next use
            raise
        except BaseException:
            self._release_killed(w)
            raise
        if res is False:
            try:
                await self._broken(w)
            except BrokenWorkerError as exc:
                _note(exc, f"tpar: it died while importing preload={self.preload!r}")
                raise
        self._unchecked.discard(w)
        status, _, body = res
        if status & 0x7F != _OK:
            self._release(w, False)
            try:
                _outcome(status, body)
            except BaseException as exc:
                _note(exc, f"tpar: worker process {w.pid} could not import "
                           f"preload={self.preload!r}")
                raise

    # -------------------------------------------------------------- run_sync

    async def run_sync(self, sync_fn, *args, cancellable=False, kill_on_cancel=False,
                       limiter=None):
        """Run ``sync_fn(*args)`` in a worker process of this context and
        return or raise its outcome.  See `tpar.run_sync` for the details.

        Raises:
          trio.ClosedResourceError: the context is closed, or closing (its
            ``async with`` block has ended and it waits for running jobs)."""
        return await self._run_sync(sync_fn, args, kill_on_cancel or cancellable, limiter)

    @enable_ki_protection
    async def _run_sync(self, fn, args, kill_on_cancel, limiter):
        if limiter is None:
            limiter = current_default_worker_limiter()
        if type(limiter) is not trio.CapacityLimiter:
            await checkpoint()  # entry is an unconditional checkpoint
            async with limiter:
                return await self._run(fn, args, kill_on_cancel, False)
        # What `async with limiter` does, two coroutine layers cheaper; its
        # acquire is the entry checkpoint.
        task = _current_task()
        await limiter.acquire_on_behalf_of(task)
        try:
            # Spin for the answer only when no task queues behind us.
            return await self._run(fn, args, kill_on_cancel,
                                   limiter.borrowed_tokens < limiter.total_tokens
                                   or not _tasks_waiting(limiter))
        finally:
            limiter.release_on_behalf_of(task)

    async def _run(self, fn, args, kill_on_cancel, spin):
        try:
            w = self._acquire()
        except trio.ClosedResourceError:
            if not self._replaced:
                raise
            # configure_default_context replaced this default while the
            # call waited for its limiter: the new default runs it.
            return await _get_default_context()._run(fn, args, kill_on_cancel, spin)
        if self._unchecked and w in self._unchecked:
            await self._await_preload(w)
        try:
            # Pickled straight into the worker's frame (a large job into
            # shared memory); a job that will not pickle leaves the worker
            # untouched and usable.
            self._send_job(w, (fn, args, _NO_KWARGS))
        except BrokenPipeError:  # it died: the read below sees the EOF
            pass
        except BaseException:
            # An unpicklable job leaves it untouched; one that failed half
            # sent (no memory for the rest) has had it killed.
            self._release(w, w.alive())
            raise
        try:
            # Spin only when no other job of ours could use the time, and
            # not for a worker still starting (no READY yet; a FORK child
            # starts at once): it will not answer within a spin, and the
            # CPU is better left to it.
            warm = w.ready or self._forks
            res = w.recv(SPIN_US) if spin and warm and self._running == 1 else None
            if res is None:
                try:
                    res = await _finish(w, warm)
                except trio.Cancelled:
                    if kill_on_cancel:
                        raise
                    # As trio.to_thread.run_sync: the job runs to its end and
                    # the cancellation, still pending, lands at the caller's
                    # next checkpoint.  (Cheaper than a shielded scope on
                    # every call.)
                    with trio.CancelScope(shield=True):
                        res = await _finish(w, warm)
        except BaseException:
            # Cancelled (kill_on_cancel), KeyboardInterrupt, a protocol error:
            # the worker is in an unknown state, so it goes.
            self._release_killed(w)
            raise
        if res is False:
            await self._broken(w)
        status, _, body = res
        if type(body) is memoryview:
            # A large value, still in the worker's up lane: decode it before
            # the worker goes back to the cache and may need the lane.
            try:
                return _outcome(status, body)
            finally:
                body.release()
                w.lane_done()
                self._release(w, not status & _RETIRING)
        self._release(w, not status & _RETIRING)
        return _outcome(status, body)

    def _send_job(self, w, job):
        """pickle first when objects pickled by reference can be found in the
        worker (it re-imports our __main__ script), cloudpickle otherwise or
        when pickle refuses (lambdas, closures)."""
        if self._by_ref or cloudpickle is None:
            try:
                w.send_pickled(_JOB, _dump, job)
                return
            except Exception:
                if cloudpickle is None:
                    raise
        w.send_pickled(_JOB, cloudpickle.dump, job)

    async def _broken(self, w):
        """The worker's pipe ended mid-job: collect why, then raise."""
        try:
            with trio.CancelScope(shield=True):
                for i in range(200):  # EOF comes a moment before the exit status
                    if w.reap(False) is not None:
                        break
                    await trio.sleep(0.0005 * min(i + 1, 20))
                else:
                    w.kill()
                    w.reap(True)
        finally:  # a KeyboardInterrupt in the sleep too: the worker goes
            self._release(w, False)
        raise BrokenWorkerError(
            f"worker process {w.pid} died unexpectedly: {_core.describe_status(w.status)}")

    # ------------------------------------------------------------- shutdown

    def _close_idle(self):
        """Marks the context closed; returns its idle workers, pipes closed
        (end of file tells a worker to exit 0), and those already leaving."""
        with self._lock:
            self._closed = True
            workers = [w for w, _ in self._idle]
            self._idle.clear()
            dying, self._dying = self._dying, []
            for w in workers:
                self._unchecked.discard(w)
        for w in workers:
            w.close()
        return workers, dying

    @enable_ki_protection
    async def _aclose(self):
        self._closing = True  # calls from now on are refused
        with trio.CancelScope(shield=True):
            while self._running:  # "wait for running workers to become idle"
                await trio.sleep(0.001)
            workers, dying = self._close_idle()
            t = self._prestarter
            while t is not None and t.is_alive():  # at most one fork in flight
                await trio.sleep(0.001)
            late, late_dying = self._close_idle()
            workers += late
            dying += late_dying
            deadline = _monotonic() + self.grace_period
            while not _collect(workers + dying, deadline):
                await trio.sleep(0.001)
            self._stop_zygote(park=True)  # every worker of ours is gone
            _raise_if_unclean(workers)

    def _shutdown_sync(self, grace_period, kill_busy):
        """Closes the context at exit; returns its idle workers, reaped."""
        workers, dying = self._close_idle()
        t = self._prestarter
        if t is not None:
            t.join(1.0)
            late, late_dying = self._close_idle()
            workers += late
            dying += late_dying
        if kill_busy:
            with self._lock:
                busy = list(self._busy)
            for w in busy:
                w.kill()
            dying += busy
        deadline = _monotonic() + grace_period
        while not _collect(workers + dying, deadline):
            time.sleep(0.001)
        self._stop_zygote()
        return workers


# ------------------------------------------------------------ forkservers
# A FORKSERVER context that closes leaves its zygote here (all its workers
# are gone by then), and the next context that would start a zygote with
# the same command line (sys.path, __main__, preload, idle timeout) takes
# it instead: opening and closing contexts does not pay for a zygote's
# start-up (~60 ms) each time, as multiprocessing's forkserver, which lives
# as long as the process, does not either.  One is kept, the most recently
# parked; the rest stop.  Stopped at exit; a forked child forgets them.

_parked_lock = threading.Lock()
_parked = {}  # zygote argv (tuple) -> Zygote


def _start_zygote(argv):
    """A parked zygote started with this argv, else a new one."""
    with _parked_lock:
        z = _parked.pop(tuple(argv), None)
    if z is not None:
        if z.pid > 0:
            return z
        z.stop()
    return _core.zygote_start(argv)


def _park_zygote(z, key):
    if z.pid <= 0:
        z.stop()
        return
    with _parked_lock:
        old = [o for k, o in _parked.items() if k != key] + (
            [_parked[key]] if key in _parked else [])
        _parked.clear()
        _parked[key] = z
    for o in old:
        o.stop()


def _stop_parked():
    with _parked_lock:
        zs = list(_parked.values())
        _parked.clear()
    for z in zs:
        z.stop()


def _collect(workers, deadline):
    """One pass of reaping; past the deadline the rest are killed.  True
    when every worker has been reaped."""
    late = _monotonic() >= deadline
    done = True
    for w in workers:
        if w.status is None and w.reap(False) is None:
            if late:
                w.kill()
                w.reap(True)
            else:
                done = False
    return done


def _raise_if_unclean(workers):
    bad = [w for w in workers if w.status != 0]
    if bad:
        raise BrokenWorkerError(
            f"graceful shutdown failed: {len(bad)} worker(s) did not exit cleanly ("
            + ", ".join(f"{w.pid} {_core.describe_status(w.status)}" for w in bad) + ")")


async def _finish(w, warm=True):
    """Writes what is left of the job, then waits for its result (yielding
    to other tasks and polling for a while first when the worker is warm)."""
    try:
        while w.pending:
            await wait_writable(w.to_fd)
            w.flush()
    except BrokenPipeError:
        pass
    # While other tasks have work, yielding to them and polling again keeps
    # this process awake: cheaper than sleeping in epoll and being woken.
    # Not for a worker still starting up: it needs the CPU more than we do.
    deadline = _perf() + YIELD_SPIN_S if warm else 0.0
    while True:
        res = w.recv(0.0)
        if res is not None:
            return res
        if _perf() < deadline:
            await checkpoint()
        else:
            await wait_readable(w.from_fd)


# ---------------------------------------------------- the default context

_live_contexts = weakref.WeakSet()
_default_lock = threading.Lock()
_default_ctx = None
_default_params = {"idle_timeout": 600, "init": bool, "retire": bool,
                   "grace_period": 30, "worker_type": WorkerType.SPAWN, "preload": ()}
_default_prestart = 0
_scope = contextvars.ContextVar("tpar_cache_scope", default=None)
_limiter_var = RunVar("tpar_default_worker_limiter")


def _scoped_context():
    """The innermost cache_scope's context, or None.  A task started from
    inside a scope into a nursery outside it can outlive the scope: once
    the scope's context is closing, such a task gets the default context,
    as with trio-parallel (whose scope is a tree variable)."""
    ctx = _scope.get()
    if ctx is None or ctx._closing:
        return None
    return ctx


def _get_default_context():
    global _default_ctx
    ctx = _default_ctx
    if ctx is None:
        prestart = 0
        with _default_lock:
            if _default_ctx is None:
                _default_ctx = WorkerContext._create(**_default_params)
                prestart = _default_prestart
            ctx = _default_ctx
        # Outside the lock: a FORK prestart forks, and its children must not
        # inherit the lock held.
        ctx._prestart(prestart)
    return ctx


def _tasks_waiting(limiter):
    """limiter.statistics().tasks_waiting, without building the statistics
    (and the list of borrowers) on every call."""
    lot = getattr(limiter, "_lot", None)
    if lot is not None:
        return len(lot)
    return limiter.statistics().tasks_waiting


def current_default_worker_limiter():
    """Get the default `~trio.CapacityLimiter` used by `tpar.run_sync`.

    The most common reason to call this is to adjust its
    ``total_tokens``.  There is one per `trio.run`; it starts with
    ``os.cpu_count()`` tokens."""
    try:
        return _limiter_var.get()
    except LookupError:
        limiter = trio.CapacityLimiter(os.cpu_count() or 1)
        _limiter_var.set(limiter)
        return limiter


async def run_sync(sync_fn, *args, cancellable=False, kill_on_cancel=False, limiter=None):
    """Run ``sync_fn(*args)`` in a separate process and return/raise its outcome.

    This function is intended to enable the following:

    - Circumventing the GIL to run CPU-bound functions in parallel
    - Making blocking APIs or infinite loops truly cancellable through
      SIGKILL without leaking resources
    - Protecting the main process from unstable/crashy code

    It follows the API of `trio.to_thread.run_sync`.  Workers come from the
    default cache (or the innermost `cache_scope`), are reused LIFO, and keep
    no guaranteed state between calls.

    Args:
      sync_fn: An importable or pickleable synchronous callable.  Functions of
        the calling script's ``__main__`` work; lambdas and closures work when
        cloudpickle is installed.
      *args: Positional arguments to pass to sync_fn.  If you need keyword
        arguments, use `functools.partial`.
      kill_on_cancel (bool): Whether to allow cancellation of this operation.
        Cancellation always involves abrupt termination of the worker process
        with SIGKILL.  SIGINT is ignored in workers.
      cancellable (bool): Alias for ``kill_on_cancel``.
      limiter (None, or async context manager): An object used to limit the
        number of simultaneous processes.  Most commonly a
        `~trio.CapacityLimiter`, but any async context manager will do.

    Returns:
      Any: Whatever ``sync_fn(*args)`` returns.

    Raises:
      BaseException: Whatever ``sync_fn(*args)`` raises, with the worker's
        traceback as its ``__cause__``.
      BrokenWorkerError: The worker died unexpectedly.
    """
    ctx = _scope.get()
    if ctx is None or ctx._closing:  # see _scoped_context
        ctx = _default_ctx or _get_default_context()
    return await ctx._run_sync(sync_fn, args, kill_on_cancel or cancellable, limiter)


@asynccontextmanager
async def open_worker_context(idle_timeout=600, init=bool, retire=bool, grace_period=30,
                              worker_type=WorkerType.SPAWN, preload=(), prestart=0):
    """Create a new, customized worker context with isolated workers.

    The context waits for any running workers to become idle when exiting the
    scope.  Since this wait cannot be cancelled, pass the context object only
    to tasks that cannot outlive the scope, for example through a nursery.

    Args:
      idle_timeout (float): The time in seconds an idle worker waits for a
        job before shutting down and releasing its resources.  Non-negative.
      init (Callable[[], Any]): Called in each worker before its first job.
      retire (Callable[[], bool]): Called in the worker after each job; a
        true value retires (shuts down) that worker.  By default workers are
        never retired.  The worker's global state is stable between calls.
      grace_period (float): Seconds to wait on exit for workers to exit
        cleanly before killing them.  Non-negative.
      worker_type (WorkerType): The kind of worker to create.
      preload (str | Iterable[str]): Modules every worker has imported before
        its first job (tpar's addition).  SPAWN: each worker imports them;
        FORKSERVER: the zygote imports them once and its workers inherit
        them; FORK: this process imports them once, before its first fork.
        A module that fails to import makes each call that needs a new
        worker raise the import's exception (``ModuleNotFoundError``, or
        whatever the module raised, with the worker's traceback as
        ``__cause__``).
      prestart (int): Workers to start at once, in the background (tpar's
        addition): the caller does not wait for them, and the first calls
        find them in the cache.  SPAWN spawns them here without waiting for
        their start-up; FORKSERVER spawns its zygote here and a thread asks
        it for the workers; FORK forks them here.  If a start fails, the
        first call that needs a worker raises the error.

    Raises:
      ValueError | TypeError: for an invalid argument, such as a negative
        timeout, a non-callable init or a preload that is not module names.
      BrokenWorkerError: if a worker does not shut down cleanly on exit.
    """
    prestart = _check_prestart(prestart)
    ctx = WorkerContext._create(idle_timeout, init, retire, grace_period, worker_type,
                                preload)
    try:
        ctx._prestart(prestart)
        yield ctx
    finally:
        await ctx._aclose()


@asynccontextmanager
async def cache_scope(idle_timeout=600, init=bool, retire=bool, grace_period=30,
                      worker_type=WorkerType.SPAWN, preload=(), prestart=0):
    """Override the configuration of `tpar.run_sync` in this task and all the
    tasks it starts: they use a fresh cache with these parameters (see
    `open_worker_context`, preload and prestart included), closed when the
    scope exits.  A task started from inside the scope into a nursery
    outside it uses the default context once the scope has exited."""
    prestart = _check_prestart(prestart)
    ctx = WorkerContext._create(idle_timeout, init, retire, grace_period, worker_type,
                                preload)
    token = _scope.set(ctx)
    try:
        ctx._prestart(prestart)
        yield
    finally:
        _scope.reset(token)
        await ctx._aclose()


def configure_default_context(idle_timeout=600, init=bool, retire=bool, grace_period=30,
                              worker_type=WorkerType.SPAWN, preload=(), prestart=0):
    """Configure the default context used by `tpar.run_sync` (the arguments
    are those of `open_worker_context`).  Meant to be called once, before
    the first job: idle workers made with the old configuration are shut
    down, running ones retire when their job ends.  With ``prestart=N``
    the new default cache is made now and N workers start in the
    background (also outside `trio.run`); without it, on the first call."""
    global _default_ctx, _default_prestart
    _check_params(idle_timeout, init, retire, grace_period, worker_type)
    preload = _check_preload(preload)
    prestart = _check_prestart(prestart)
    with _default_lock:
        _default_params.update(idle_timeout=idle_timeout, init=init, retire=retire,
                               grace_period=grace_period, worker_type=worker_type,
                               preload=preload)
        _default_prestart = prestart
        old, _default_ctx = _default_ctx, None
    if old is not None:
        old._replaced = True  # calls waiting for their limiter go to the new one
        workers, dying = old._close_idle()
        for w in workers + dying:
            _bury(w)  # a prestart in flight sees the context closed and stops
    if prestart:
        _get_default_context()


def atexit_shutdown_grace_period(grace_period=-1.0):
    """Return and optionally set the default worker cache shutdown grace period.

    At exit, idle workers of the default cache get this long (in seconds) to
    exit cleanly before they are killed with SIGKILL and `BrokenWorkerError`
    is raised.  Pass ``math.inf`` to wait forever; pass a negative value (the
    default) to only read the current value."""
    with _default_lock:
        if grace_period >= 0:
            _default_params["grace_period"] = grace_period
            if _default_ctx is not None:
                _default_ctx.grace_period = grace_period
        return _default_params["grace_period"]


def default_context_statistics():
    """Return the statistics of the default context: ``idle_workers`` and
    ``running_workers``."""
    ctx = _scoped_context() or _default_ctx
    if ctx is None:
        return WorkerContextStatistics(0, 0)
    return ctx.statistics()


# ------------------------------------------------------------------- exit

_owner_pid = os.getpid()


@atexit.register
def _atexit_shutdown():
    """No worker outlives this process: the default cache's idle workers get
    the grace period, everything else is killed."""
    if os.getpid() != _owner_pid:
        return
    default = _default_ctx
    others = [c for c in list(_live_contexts) if c is not default]
    for ctx in others:
        ctx._shutdown_sync(0.0, kill_busy=True)
    with _graveyard_lock:
        rest = list(_graveyard)
        _graveyard.clear()
    deadline = _monotonic() + (default.grace_period if default else 30)
    while not _collect(rest, deadline):
        time.sleep(0.001)
    _stop_parked()
    if default is not None:
        workers = default._shutdown_sync(default.grace_period, kill_busy=True)
        _raise_if_unclean(workers)


def _after_fork_in_child():
    global _default_ctx, _owner_pid
    # The parent's workers are not ours: forget them without touching them
    # (a Worker only kills and reaps in the process that spawned it), but
    # close our copies of their pipes: a worker must see end of file when
    # the parent closes its end, whatever children the parent forked (a
    # FORK worker among them).  No lock is taken: one may have been held
    # by another thread at the fork.
    for ctx in list(_live_contexts):
        for w in [w for w, _ in list(ctx._idle)] + list(ctx._busy) + list(ctx._dying):
            w.close()
        if ctx._zygote is not None:
            ctx._zygote.stop()  # in a child: closes the socket, kills nothing
    for z in list(_parked.values()):
        z.stop()
    _parked.clear()
    _owner_pid = os.getpid()
    _default_ctx = None
    _live_contexts.clear()
    _graveyard.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
