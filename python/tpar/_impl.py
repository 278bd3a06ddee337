"""The Trio side of tpar: worker contexts, run_sync and the default cache.

The model is trio.to_thread.run_sync.  Each job borrows a worker from a
context's LIFO cache of tpar-worker processes (_cache), writes one
JOB_PICKLE frame and reads one RESULT frame (docs/protocol.md).  The
extension (_core) does the reads, writes and frame decoding without
blocking, spinning a few microseconds for a quick answer; otherwise the
run path waits with trio.lowlevel.wait_readable / wait_writable (_proc), so
no thread is involved.  Layers: _abc (shared types, pickling) <- _proc
(launching and stopping workers) <- _cache (a context's workers) <- this
module (the run path, shutdown, the default context, the public API).
"""

import atexit
import math
import os
import sys
import threading
import time
import weakref
from contextlib import asynccontextmanager
from numbers import Real

import trio
from trio.lowlevel import (
    RunVar,
    cancel_shielded_checkpoint,
    checkpoint,
    checkpoint_if_cancelled,
    current_task as _current_task,
    enable_ki_protection,
)

from . import _cache, _core, _proc
from ._abc import (
    NO_KWARGS as _NO_KWARGS,
    RETIRING as _RETIRING,
    STATUS_MASK as _STATUS_MASK,
    OK as _OK,
    RETIRED as _RETIRED,
    BrokenWorkerError,
    WorkerContextStatistics,
    WorkerType,
    broken as _broken_error,
    note as _note,
    outcome as _outcome,
    pickle_into as _pickle_into,
    why as _why,
)
from ._cache import WorkerCache
from ._locate import main_path, worker_argv  # noqa: F401 - worker_argv: tests
from ._proc import YIELD_SPIN_S as _YIELD_SPIN_S, bury as _bury, collect as _collect, finish as _finish

_JOB = _core.FRAME_JOB_PICKLE
_MP_PROCESS = "multiprocessing.process"
_modules = sys.modules
SPIN_US = 50.0  # how long recv() polls for a quick answer before epoll
# A spin that took this long lost a time slice to another process (the
# threshold in core/tpar.h, TPAR_LOST_YIELD_S), beyond the spin itself.
_SPIN_LOST_S = _core.LOST_YIELD_S + SPIN_US * 1e-6
_NO_SPIN_S = 0.5  # ... and then no spin (nor yield-spin) for this long
_perf = time.perf_counter
# A worker killed by a signal before READY (the OOM killer, an operator,
# its forkserver dying under it) never ran the job it was sent: the call
# goes to a fresh worker.  Only this many such starts in a row (no call
# answered between them) make calls raise BrokenWorkerError.  A worker
# that exits before READY (a failed init, exit 70) is the user's to fix.
MAX_FAILED_STARTS = 64
_monotonic = time.monotonic


# CapacityLimiter.acquire_on_behalf_of, inline in run_sync (_run_sync_for):
# the same steps on the same private attributes (unchanged from trio 0.23 to
# 0.35), without its coroutine layer, and parked outside its `except
# WouldBlock:`, which keeps the exception, two tracebacks and a frame alive
# while the task waits.  20,000 waiting calls are 20,000 x 5 objects fewer
# for each full collection of the cyclic GC to walk.  A Trio without them
# gets the call.
_probe = trio.CapacityLimiter(1)
_PARK_IN_LIMITER = isinstance(getattr(_probe, "_pending_borrowers", None), dict) and \
    hasattr(getattr(_probe, "_lot", None), "park")
del _probe

_HELD = object()  # run_sync's limiter: the caller holds one of another kind
_COLD = object()  # _wait_fast: no spin of any kind; wait in epoll


def _wait_fast(w, cache, spin):
    """How a call waits for w's answer, decided without awaiting: the
    answer itself (a spin in C caught it), a float (the deadline of a
    yield-spin, for a warm worker with the whole job sent), None (finish()
    flushes the rest of the job first, or the spin in C missed), or _COLD
    (no spin of any kind)."""
    # Spin only when no other job of ours could use the time, and not for a
    # worker still starting (no READY yet; a FORK child starts at once): it
    # will not answer within a spin, and the CPU is better left to it.  Nor
    # while the CPUs are oversubscribed: a spin's sched_yield() then hands
    # the CPU to another process for a whole time slice, where blocking in
    # epoll would have been woken at once.
    if not ((w.ready or cache.starts_at_once) and _perf() >= cache.no_spin_until):
        return _COLD
    if spin and cache.running == 1:
        if _oversubscribed():
            return _COLD  # straight to epoll
        t0 = _perf()
        res = w.recv(SPIN_US)
        if _perf() - t0 > _SPIN_LOST_S:  # a yield lost the CPU
            cache.no_spin_until = _perf() + _NO_SPIN_S
        if res is not None:
            return res
    if w.pending:
        return None  # finish() writes the rest, then yield-spins
    return _perf() + _YIELD_SPIN_S


# ---------------------------------------------------------------- checks

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



def _check_params(idle_timeout, init, retire, grace_period, worker_type):
    for name, value in (("idle_timeout", idle_timeout), ("grace_period", grace_period)):
        if not isinstance(value, Real) or isinstance(value, bool):
            raise TypeError(f"{name} must be a number of seconds, got {value!r}")
        if math.isnan(value) or value < 0:
            raise ValueError(f"{name} must be non-negative, got {value!r}")
    for name, value in (("init", init), ("retire", retire)):
        if not callable(value):
            raise TypeError(f"{name} must be callable, got {value!r}")
    return _worker_type(worker_type)


def _worker_type(value):
    """A WorkerType, or its value ("spawn"...) -> the WorkerType."""
    if isinstance(value, WorkerType):
        return value
    if isinstance(value, str):
        try:
            return WorkerType(value)
        except ValueError:
            pass
    raise ValueError(f"worker_type must be a member of WorkerType (or its value: "
                     f"{', '.join(repr(t.value) for t in WorkerType)}), got {value!r}")



# --------------------------------------------------------------- load

# True when more tasks are runnable on this machine than it has CPUs (this
# one included): the workers' own check (core/util.c), read at most every
# 5 ms.  A spin then loses the CPU for a time slice at its first yield;
# blocking in epoll is woken at once.
_oversubscribed = _core.cpus_oversubscribed


# ------------------------------------------------------------------ context

def _run_sync_for(ref, doc):
    """A run_sync coroutine function: of the context ref() (a weak reference:
    the function is the context's own, and must not keep it alive), or with
    ref None, of the caller's cache_scope or the default context (tpar's
    run_sync).  Its one coroutine is the whole call, from the limiter to the
    outcome; only the rare paths await helpers.  Every coroutine layer costs
    each resume of the task (3.11 enters the eval loop once per layer), and
    each call waiting for the limiter holds its layers for every full
    collection of the cyclic GC to walk (docs/design.md, "Throughput of tiny
    calls")."""

    async def run_sync(sync_fn, *args, cancellable=False, kill_on_cancel=False, limiter=None):
        if ref is None:
            ctx = (_scopes and _scoped_context()) or _default_ctx or _get_default_context()
        else:
            ctx = ref()
            if ctx is None:  # only its run_sync was kept
                raise trio.ClosedResourceError("this worker context is closed")
        kill_on_cancel = kill_on_cancel or cancellable
        if limiter is None:
            limiter = current_default_worker_limiter()
        if type(limiter) is trio.CapacityLimiter:
            # What `async with limiter` does, two coroutine layers cheaper;
            # its acquire is the entry checkpoint.
            task = _current_task()
            if _PARK_IN_LIMITER:
                # acquire_on_behalf_of, inline (see _PARK_IN_LIMITER).
                await checkpoint_if_cancelled()
                try:
                    limiter.acquire_on_behalf_of_nowait(task)
                    parked = False
                except trio.WouldBlock:
                    parked = True
                if parked:
                    pending = limiter._pending_borrowers
                    pending[task] = task
                    try:
                        await limiter._lot.park()
                    except trio.Cancelled:
                        pending.pop(task)
                        raise
                else:
                    await cancel_shielded_checkpoint()
            else:
                await limiter.acquire_on_behalf_of(task)
        elif limiter is not _HELD:
            await checkpoint()  # entry is an unconditional checkpoint
            async with limiter:
                return await run_sync(sync_fn, *args, kill_on_cancel=kill_on_cancel,
                                      limiter=_HELD)
        else:
            task = None  # our caller holds another kind of limiter
        try:
            # Spin for the answer only when no task queues behind us.
            spin = task is not None and (limiter.borrowed_tokens < limiter.total_tokens
                                         or not _tasks_waiting(limiter))
            while True:  # a call that never reached its worker goes to another
                cache = ctx._cache
                try:
                    if ctx._closing:
                        raise trio.ClosedResourceError("this worker context is closed")
                    w = cache.acquire()
                except trio.ClosedResourceError:
                    if not ctx._replaced:
                        raise
                    # configure_default_context replaced this default while
                    # the call waited for its limiter: the new default runs it.
                    ctx = _get_default_context()
                    continue
                if cache.unchecked and w in cache.unchecked:
                    await ctx._await_preload(w)
                if cache.keyless and _MP_PROCESS in _modules and w in cache.keyless:
                    cache.send_authkey(w)  # multiprocessing was imported after w started
                try:
                    # Pickled straight into the worker's frame (a large job
                    # into shared memory); a job that will not pickle leaves
                    # the worker untouched and usable.
                    _pickle_into(w.send_pickled, _JOB, (sync_fn, args, _NO_KWARGS),
                                 ctx._by_ref)
                except BrokenPipeError:
                    if w.ready:
                        # It died (or retired) while idle, and the job never
                        # reached it: replaced silently, as the cache's reaper
                        # replaces one it finds dead.  (The cache does not
                        # look before handing out a worker: a read a call
                        # saved.)
                        cache.release_dead(w)
                        continue
                    # Before READY: the read below sees the EOF (a broken start).
                except BaseException:
                    # An unpicklable job leaves it untouched; one that failed
                    # half sent (no memory for the rest) has had it killed.
                    cache.release(w, w.alive())
                    raise
                try:
                    res = _wait_fast(w, cache, spin)
                    warm = res is None  # finish() writes the rest, then yield-spins
                    if res is _COLD:
                        res = None
                    elif type(res) is float:
                        # Warm, all sent: finish()'s yield-spin, inline (a
                        # coroutine layer fewer at each of its yields).  Its
                        # yields are not cancel points; a cancellation is
                        # seen in finish's wait_readable, at most
                        # YIELD_SPIN_S late.
                        deadline, res = res, None
                        while _perf() < deadline:
                            await cancel_shielded_checkpoint()
                            res = w.recv(0.0)
                            if res is not None:
                                break
                    if res is None:
                        try:
                            res = await _finish(w, warm)
                        except trio.Cancelled:
                            if kill_on_cancel:
                                raise
                            # As trio.to_thread.run_sync: the job runs to its
                            # end and the cancellation, still pending, lands
                            # at the caller's next checkpoint.  (Cheaper than
                            # a shielded scope on every call.)
                            with trio.CancelScope(shield=True):
                                res = await _finish(w, warm)
                except BaseException:
                    # Cancelled (kill_on_cancel), KeyboardInterrupt, a protocol
                    # error: the worker is in an unknown state, so it goes.
                    cache.release_killed(w)
                    raise
                if res is False:
                    if not w.ready and await ctx._broken(w, start=True):
                        continue
                    await ctx._broken(w)
                if ctx._failed_starts:
                    ctx._failed_starts = 0
                status, _, body = res
                if status == _RETIRED:
                    # w's retire() said yes after its last result, before
                    # this job: it was not run.  Another worker runs it.
                    cache.release(w, False)
                    continue
                if type(body) is memoryview:
                    # A large value, still in the worker's up lane: decode it
                    # before the worker goes back to the cache and may need
                    # the lane.
                    try:
                        return _outcome(status, body)
                    finally:
                        body.release()
                        w.lane_done()
                        cache.release(w, not status & _RETIRING)
                cache.release(w, not status & _RETIRING)
                return _outcome(status, body)
        finally:
            if task is not None:
                limiter.release_on_behalf_of(task)

    run_sync.__doc__ = doc
    run_sync.__qualname__ = name = "run_sync" if ref is None else "WorkerContext.run_sync"
    protected = enable_ki_protection(run_sync)
    if protected is run_sync:  # Trio marks the code object
        return run_sync
    # An older Trio wraps a coroutine function in a plain function, which
    # inspect would no longer call a coroutine function: the wrapper goes
    # inside, one layer down.

    async def run_sync(sync_fn, *args, cancellable=False, kill_on_cancel=False, limiter=None):
        return await protected(sync_fn, *args, cancellable=cancellable,
                               kill_on_cancel=kill_on_cancel, limiter=limiter)
    run_sync.__doc__, run_sync.__qualname__ = doc, name
    return run_sync


class _OwnRunSync:
    """WorkerContext.run_sync: on a context, the function made for it
    (_run_sync_for), so that a call is one coroutine; on the class, the
    documented method, which goes through it."""

    def __init__(self, method):
        self.method = method
        self.__doc__ = method.__doc__

    def __get__(self, ctx, cls=None):
        return self.method if ctx is None else ctx._run


class WorkerContext:
    """A context for running synchronous functions in an isolated cache of
    worker processes.  Made by `open_worker_context`, never directly."""

    __slots__ = ("_idle_timeout", "_init", "_retire", "_grace_period", "_worker_type",
                 "_preload", "_cache", "_by_ref", "_closing", "_replaced", "_failed_starts",
                 "_run", "__weakref__")

    # Read-only, as trio-parallel's (a frozen attrs class).
    idle_timeout = property(lambda self: self._idle_timeout,
                            doc="Seconds an idle worker waits for a job.")
    init = property(lambda self: self._init, doc="Called in each worker before its first job.")
    retire = property(lambda self: self._retire,
                      doc="Called in the worker after each job; true retires it.")
    grace_period = property(lambda self: self._grace_period,
                            doc="Seconds workers get to exit cleanly at close.")
    worker_type = property(lambda self: self._worker_type, doc="The WorkerType.")
    preload = property(lambda self: self._preload,
                       doc="Modules every worker imports before its first job.")

    def __init__(self, *args, **kwargs):
        raise TypeError("WorkerContext has no public constructor: use tpar.open_worker_context()")

    @classmethod
    def _create(cls, idle_timeout=600.0, init=bool, retire=bool, grace_period=30.0,
                worker_type=WorkerType.SPAWN, preload=()):
        worker_type = _check_params(idle_timeout, init, retire, grace_period, worker_type)
        preload = _check_preload(preload)
        self = object.__new__(cls)
        self._idle_timeout = float(idle_timeout)
        self._init = init
        self._retire = retire
        self._grace_period = float(grace_period)
        self._worker_type = worker_type
        self._preload = preload
        self._by_ref = main_path() is not None
        self._cache = WorkerCache(worker_type, self._idle_timeout, preload, init, retire,
                                  self._by_ref)
        self._closing = False  # no new call is taken (closing, or closed)
        self._failed_starts = 0  # workers in a row killed before READY
        self._replaced = False  # a default context replaced by configure_default_context
        self._run = _run_sync_for(weakref.ref(self), cls.run_sync.__doc__)  # its run_sync
        _live_contexts.add(self)
        return self

    def __repr__(self):
        return (f"<WorkerContext idle_timeout={self.idle_timeout} grace_period="
                f"{self.grace_period} worker_type={self.worker_type.name}"
                + (f" preload={self.preload!r}" if self.preload else "") + ">")

    def statistics(self):
        """Return the number of idle and running workers in this context."""
        return self._cache.statistics()

    def _prestart(self, n):
        self._cache.prestart(n)

    # -------------------------------------------------------------- run_sync

    async def run_sync(self, sync_fn, *args, cancellable=False, kill_on_cancel=False,
                       limiter=None):
        """Run ``sync_fn(*args)`` in a worker process of this context and
        return or raise its outcome.  See `tpar.run_sync` for the details.

        Raises:
          trio.ClosedResourceError: the context is closed, or closing (its
            ``async with`` block has ended and it waits for running jobs)."""
        return await self._run(sync_fn, *args, cancellable=cancellable,
                               kill_on_cancel=kill_on_cancel, limiter=limiter)

    run_sync = _OwnRunSync(run_sync)


    async def _await_preload(self, w):
        """Reads the answer to w's preload job; raises its import error (w
        goes) or BrokenWorkerError, else w is ready for jobs."""
        cache = self._cache
        try:
            res = w.recv(0.0)
            if res is None:
                res = await _finish(w, False)
        except trio.Cancelled:
            cache.release(w, True)  # still unchecked: read on its next use
            raise
        except BaseException:
            cache.release_killed(w)
            raise
        if res is False:
            try:
                await self._broken(w)
            except BrokenWorkerError as exc:
                _note(exc, f"tpar: it died while importing preload={self.preload!r}")
                raise
        cache.unchecked.discard(w)
        status, _, body = res
        if status & _STATUS_MASK != _OK:
            cache.release(w, False)
            try:
                _outcome(status, body)
            except BaseException as exc:
                _note(exc, f"tpar: worker process {w.pid} could not import "
                           f"preload={self.preload!r}")
                raise

    async def _broken(self, w, start=False):
        """The worker's pipe ended mid-job: collect why, then raise.  With
        start=True (it never said READY): True when it was killed by a
        signal, a broken start the caller retries, within the bound."""
        if w.status is not None:  # collected already (start=True)
            self._cache.release(w, False)
            raise _broken_error(f"worker process {w.pid} died unexpectedly: "
                                f"{_core.describe_status(w.status)}{_why(w.status)}",
                                w.pid, w.status)
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
            if not start:
                self._cache.release(w, False)
        if start:
            if os.WIFSIGNALED(w.status) and self._failed_starts < MAX_FAILED_STARTS:
                self._failed_starts += 1
                self._cache.release(w, False)
                return True
            return False
        err = _broken_error(f"worker process {w.pid} died unexpectedly: "
                            f"{_core.describe_status(w.status)}{_why(w.status)}", w.pid,
                            w.status)
        raise err

    # ------------------------------------------------------------- shutdown

    def _close_idle(self):
        return self._cache.close_idle()

    @enable_ki_protection
    async def _aclose(self):
        self._closing = True  # calls from now on are refused
        cache = self._cache
        with trio.CancelScope(shield=True):
            while cache.running:  # "wait for running workers to become idle"
                await trio.sleep(0.001)
            workers, dying = cache.close_idle()
            t = cache.prestarter
            while t is not None and t.is_alive():  # at most one fork in flight
                await trio.sleep(0.001)
            late, late_dying = cache.close_idle()
            workers += late
            dying += late_dying
            deadline = _monotonic() + self.grace_period
            while not _collect(workers + dying, deadline):
                await trio.sleep(0.001)
            cache.launcher.stop(park=True)  # every worker of ours is gone
            for w in dying:
                cache.check_reaped(w)
            _proc.raise_if_unclean(workers)
            if cache.failures:
                raise cache.failures[0]

    def _shutdown_sync(self, grace_period, kill_busy):
        """Closes the context at exit; returns its idle workers, reaped."""
        cache = self._cache
        workers, dying = cache.close_idle()
        t = cache.prestarter
        if t is not None:
            t.join(1.0)
            late, late_dying = cache.close_idle()
            workers += late
            dying += late_dying
        if kill_busy:
            with cache.lock:
                busy = list(cache.busy)
            for w in busy:
                w.kill()
            dying += busy
        deadline = _monotonic() + grace_period
        while not _collect(workers + dying, deadline):
            time.sleep(0.001)
        cache.launcher.stop()
        return workers


# ---------------------------------------------------- the default context

_live_contexts = weakref.WeakSet()
_default_lock = threading.Lock()
_default_ctx = None
_default_params = {"idle_timeout": 600.0, "init": bool, "retire": bool,
                   "grace_period": 30.0, "worker_type": WorkerType.SPAWN, "preload": ()}
_default_prestart = 0
_limiter_var = RunVar("tpar_default_worker_limiter")

# cache_scope is a tree variable, as trio-parallel's: a task sees the scope
# that was open where its nursery was opened, not where it was spawned
# from.  _scopes maps a task to the scopes open in it (innermost last),
# each with the nurseries the task had open before that scope began: a
# nursery of that task not among them was opened inside the scope.


class _Scope:
    __slots__ = ("ctx", "before")

    def __init__(self, ctx, before):
        self.ctx = ctx
        self.before = before


_scopes = {}  # trio Task -> [_Scope]


def _scoped_context():
    """The context of the innermost cache_scope this task is in, or None."""
    if not _scopes:
        return None
    try:
        task = _current_task()
    except RuntimeError:  # not in a Trio task
        return None
    own = _scopes.get(task)
    if own:
        return own[-1].ctx
    nursery = task.parent_nursery
    while nursery is not None:
        parent = nursery.parent_task
        for scope in reversed(_scopes.get(parent, ())):
            if nursery not in scope.before:
                return scope.ctx  # the nursery was opened inside this scope
        # opened before any scope of the parent's: what the parent inherits
        nursery = parent.parent_nursery
    return None


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


run_sync = _run_sync_for(None, """\
Run ``sync_fn(*args)`` in a separate process and return/raise its outcome.

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
    """)


@asynccontextmanager
async def open_worker_context(idle_timeout=600.0, init=bool, retire=bool, grace_period=30.0,
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
async def cache_scope(idle_timeout=600.0, init=bool, retire=bool, grace_period=30.0,
                      worker_type=WorkerType.SPAWN, preload=(), prestart=0):
    """Override the configuration of `tpar.run_sync` in this task and in the
    tasks of the nurseries opened inside the scope: they use a fresh cache
    with these parameters (see `open_worker_context`, preload and prestart
    included), closed when the scope exits.  The scope follows the task
    tree, as trio-parallel's: a task spawned (by any task) into a nursery
    opened inside the scope uses it; a task spawned from inside the scope
    into a nursery opened outside it does not."""
    prestart = _check_prestart(prestart)
    ctx = WorkerContext._create(idle_timeout, init, retire, grace_period, worker_type,
                                preload)
    task = _current_task()
    scope = _Scope(ctx, frozenset(task.child_nurseries))
    _scopes.setdefault(task, []).append(scope)
    try:
        ctx._prestart(prestart)
        yield
    finally:
        own = _scopes[task]
        own.remove(scope)
        if not own:
            del _scopes[task]
        await ctx._aclose()


def configure_default_context(idle_timeout=600.0, init=bool, retire=bool, grace_period=30.0,
                              worker_type=WorkerType.SPAWN, preload=(), prestart=0):
    """Configure the default context used by `tpar.run_sync` (the arguments
    are those of `open_worker_context`).  Meant to be called once, before
    the first job: idle workers made with the old configuration are shut
    down, running ones retire when their job ends.  With ``prestart=N``
    the new default cache is made now and N workers start in the
    background (also outside `trio.run`); without it, on the first call.

    Raises:
      RuntimeError: called from a thread other than the main thread.
      ValueError | TypeError: for an invalid argument."""
    global _default_ctx, _default_prestart
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("configure_default_context must be called from the main thread")
    worker_type = _check_params(idle_timeout, init, retire, grace_period, worker_type)
    preload = _check_preload(preload)
    prestart = _check_prestart(prestart)
    with _default_lock:
        _default_params.update(idle_timeout=float(idle_timeout), init=init, retire=retire,
                               grace_period=float(grace_period), worker_type=worker_type,
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
    if not isinstance(grace_period, Real) or isinstance(grace_period, bool) or math.isnan(
            grace_period):
        raise TypeError(f"grace_period must be a number of seconds, got {grace_period!r}")
    with _default_lock:
        if grace_period >= 0:
            _default_params["grace_period"] = float(grace_period)
            if _default_ctx is not None:
                _default_ctx._grace_period = float(grace_period)
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
    with _proc.graveyard_lock:
        rest = list(_proc.graveyard)
        _proc.graveyard.clear()
    deadline = _monotonic() + (default.grace_period if default else 30)
    while not _collect(rest, deadline):
        time.sleep(0.001)
    _proc.stop_parked()
    if default is not None:
        workers = default._shutdown_sync(default.grace_period, kill_busy=True)
        _proc.raise_if_unclean(workers)


def _after_fork_in_child():
    global _default_ctx, _owner_pid
    # The parent's workers are not ours (WorkerCache.forget).  No lock is
    # taken: one may have been held by another thread at the fork.
    for ctx in list(_live_contexts):
        ctx._cache.forget()
    _cache.forget_all()
    _proc.forget_parked()
    _owner_pid = os.getpid()
    _default_ctx = None
    _live_contexts.clear()
    _proc.graveyard.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
