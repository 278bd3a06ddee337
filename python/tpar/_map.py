"""tpar.map: fn applied to every item of an iterable in worker processes,
results as they come (or in order), with a bounded number of inputs taken
and not yet handed back: the loop that trio-parallel's docs leave to each
program (parallel_map, async_parallel_pipeline), as an API."""

import math
from contextlib import asynccontextmanager

import trio

try:
    BaseExceptionGroup
except NameError:  # Python 3.10: Trio's backport
    from exceptiongroup import BaseExceptionGroup

from ._impl import current_default_worker_limiter, run_sync


class _Results:
    """The async iterator `tpar.map` yields: each result, or the exception
    its job raised, raised here at its turn."""

    def __init__(self, ordered, slots):
        self._ordered = ordered
        self._slots = slots
        self._send, self._recv = trio.open_memory_channel(math.inf)  # bounded by slots
        self._held = {}  # ordered: index -> outcome, waiting for their turn
        self._next = 0  # ordered: the index whose turn it is

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self._ordered:
            while self._next not in self._held:
                index, result = await self._receive()
                self._held[index] = result
            result = self._held.pop(self._next)
            self._next += 1
        else:
            _, result = await self._receive()
        self._slots.release()
        ok, value = result
        if ok:
            return value
        try:
            raise value
        finally:
            del value, result

    async def _receive(self):
        try:
            return await self._recv.receive()
        except trio.EndOfChannel:  # the inputs ran out: every result is in
            raise StopAsyncIteration from None


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value!r}")
    return value


@asynccontextmanager
async def map(fn, iterable, *, ordered=False, max_pending=None, kill_on_cancel=False,
              limiter=None, context=None):
    """Run ``fn(item)`` in worker processes for every item of ``iterable``
    (a sync or an async iterable), and iterate over the results::

        async with tpar.map(fn, items, max_pending=8) as results:
            async for value in results:
                ...

    Results come as the jobs finish, or in the order of the inputs with
    ``ordered=True``.  A job's exception is raised by the iteration, at that
    job's turn; leaving the block (``break``, an exception) cancels the rest.

    Args:
      fn: as for `tpar.run_sync`, called with one item.
      iterable: the inputs.  Items are taken only as there is room: at most
        ``max_pending`` inputs are taken and not yet handed back as results
        (running, waiting for a worker, or done and not yet consumed), so a
        slow consumer slows the taking, and an endless async generator is
        fine.  A sync iterable is iterated in the event loop: it must not
        block.
      ordered (bool): results in the order of their inputs.  With a slow
        first job, the others wait for it (within ``max_pending``).
      max_pending (int): see above; default: twice the limiter's tokens.
      kill_on_cancel (bool): on leaving the block early (or cancellation),
        kill the jobs still running (their workers get SIGKILL); without
        it, the block's exit waits for them to finish, as `run_sync` does.
      limiter: as for `tpar.run_sync`: how many jobs run at once (default:
        `current_default_worker_limiter`).
      context (WorkerContext): run in this context rather than the default
        (or the current `cache_scope`).
    """
    if limiter is None:
        limiter = current_default_worker_limiter()
    if max_pending is None:
        tokens = getattr(limiter, "total_tokens", None)
        max_pending = 2 * int(tokens) if isinstance(tokens, int) and tokens > 0 else 2
    max_pending = _positive_int("max_pending", max_pending)
    run = run_sync if context is None else context.run_sync
    slots = trio.Semaphore(max_pending)
    results = _Results(ordered, slots)
    send = results._send

    async def one(index, item, send):
        async with send:  # each job holds a clone: the results end after the last
            try:
                value = await run(fn, item, kill_on_cancel=kill_on_cancel, limiter=limiter)
            except Exception as exc:
                result = (False, exc)
            else:
                result = (True, value)
            send.send_nowait((index, result))

    async def feed(nursery):
        index = 0
        async with send:
            if hasattr(iterable, "__aiter__"):
                items = iterable.__aiter__()
                try:
                    while True:
                        await slots.acquire()
                        try:
                            item = await items.__anext__()
                        except StopAsyncIteration:
                            break
                        nursery.start_soon(one, index, item, send.clone())
                        index += 1
                finally:
                    aclose = getattr(items, "aclose", None)
                    if aclose is not None:
                        await aclose()
            else:
                for item in iterable:
                    await slots.acquire()
                    nursery.start_soon(one, index, item, send.clone())
                    index += 1

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(feed, nursery)
            try:
                yield results
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # One error (a job's, raised in the block, or the iterable's): as
        # itself, not in a group of one, with its own __context__.
        if len(group.exceptions) != 1:
            raise
        exc = group.exceptions[0]
        context = exc.__context__
        try:
            raise exc
        finally:
            exc.__context__ = context
            del exc, context, group
