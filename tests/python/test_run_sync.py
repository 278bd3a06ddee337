"""run_sync: results, errors, pickling, checkpoints, cancellation, limiters."""

import enum
import inspect
import os
import signal
import sys
from functools import partial

import pytest
import trio
import trio.testing

import _jobs
from conftest import remote_traceback
import tpar as trio_parallel


def gone(pid):
    """True when pid is neither running nor an unreaped zombie."""
    return not os.path.exists(f"/proc/{pid}")


def counts(ctx):
    s = ctx.statistics()
    return s.idle_workers, s.running_workers


def zombie(pid):
    """True when pid has exited, all its threads too, and awaits reaping."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            leader_done = f.read().rsplit(")", 1)[1].split()[0] == "Z"
        # a zombie leader's files close only when its last thread exits
        return leader_done and len(os.listdir(f"/proc/{pid}/task")) <= 1
    except FileNotFoundError:
        return False


# ------------------------------------------------------------------- API

def test_api_surface():
    for name in ("run_sync", "current_default_worker_limiter", "BrokenWorkerError",
                 "open_worker_context", "WorkerContext", "WorkerType",
                 "atexit_shutdown_grace_period", "default_context_statistics",
                 "configure_default_context", "cache_scope"):
        assert hasattr(trio_parallel, name), name
    assert issubclass(trio_parallel.BrokenWorkerError, RuntimeError)
    assert issubclass(trio_parallel.WorkerType, enum.Enum)
    assert [m.name for m in trio_parallel.WorkerType] == ["SPAWN", "FORKSERVER", "FORK"]
    assert len({m.value for m in trio_parallel.WorkerType}) == 3  # no aliases


def test_worker_context_has_no_public_constructor():
    with pytest.raises(TypeError):
        trio_parallel.WorkerContext()


# -------------------------------------------------------------- results

async def test_returns_value_and_takes_args():
    assert await trio_parallel.run_sync(_jobs.add, 2, 3) == 5
    assert await trio_parallel.run_sync(_jobs.pid) != os.getpid()


async def test_builtin_and_lambda_and_closure():
    assert await trio_parallel.run_sync(bool) is False
    k = 7
    assert await trio_parallel.run_sync(lambda x: x * k, 6) == 42


async def test_large_payload_both_ways():
    data = os.urandom(3 << 20)  # far over a pipe's buffer
    assert await trio_parallel.run_sync(_jobs.echo, data) == data


async def test_exception_type_args_and_remote_traceback():
    with pytest.raises(_jobs.CustomError) as info:
        await trio_parallel.run_sync(_jobs.raise_, _jobs.CustomError(1, "two"))
    assert info.value.args == (1, "two")
    assert (info.value.a, info.value.b) == (1, "two")
    assert "raise_" in remote_traceback(info.value)
    with pytest.raises(ValueError, match="invalid literal"):
        await trio_parallel.run_sync(int, "x")


async def test_unpicklable_argument_raises_in_caller_worker_stays():
    async with trio_parallel.open_worker_context() as ctx:
        before = await ctx.run_sync(_jobs.pid)
        with pytest.raises(TypeError, match="refuses"):
            await ctx.run_sync(_jobs.echo, _jobs.Unpicklable())
        assert ctx.statistics().idle_workers == 1
        assert await ctx.run_sync(_jobs.pid) == before


async def test_unpicklable_result_raises_in_caller_worker_stays():
    async with trio_parallel.open_worker_context() as ctx:
        before = await ctx.run_sync(_jobs.pid)
        with pytest.raises(TypeError):
            await ctx.run_sync(_jobs.return_lock)
        assert await ctx.run_sync(_jobs.pid) == before


async def test_coroutine_function_is_type_error():
    with pytest.raises(TypeError):
        await trio_parallel.run_sync(_jobs.coro_fn)


# ------------------------------------------------------------ dead workers

@pytest.mark.parametrize("job, args, words", [
    (_jobs.exit_, (3,), ["exited with code 3"]),
    (_jobs.kill_self, (signal.SIGSEGV,), ["SIGSEGV"]),
    (_jobs.kill_self, (signal.SIGKILL,), ["SIGKILL"]),
])
async def test_dying_worker_is_broken_worker_error(job, args, words):
    async with trio_parallel.open_worker_context() as ctx:
        with pytest.raises(trio_parallel.BrokenWorkerError) as info:
            await ctx.run_sync(job, *args)
        msg = str(info.value)
        for w in words:
            assert w in msg
        pid = int(msg.split("worker process ")[1].split()[0])
        assert gone(pid)  # reaped: no zombie
        assert counts(ctx) == (0, 0)
        assert await ctx.run_sync(_jobs.add, 1, 1) == 2  # a fresh worker


async def until_dead(pid, poll=0.01):
    """Until pid is dead: a zombie, or already reaped by the context's
    reaper thread (which prunes dead idle workers by itself; waiting for a
    zombie alone hung when the reaper came first)."""
    with trio.fail_after(10):
        while not (zombie(pid) or gone(pid)):
            await trio.sleep(poll)


async def test_worker_killed_while_idle_is_replaced_silently():
    async with trio_parallel.open_worker_context() as ctx:
        pid = await ctx.run_sync(_jobs.pid)
        os.kill(pid, signal.SIGKILL)
        await until_dead(pid)
        new = await ctx.run_sync(_jobs.pid)
        assert new != pid
        assert gone(pid)


def spy_release_dead(monkeypatch):
    """The pids of the workers that calls found dead at the job's send
    (WorkerCache.release_dead), as they come."""
    from tpar import _cache
    seen = []
    real = _cache.WorkerCache.release_dead

    def spy(self, w):
        seen.append(w.pid)
        return real(self, w)
    monkeypatch.setattr(_cache.WorkerCache, "release_dead", spy)
    return seen


async def test_a_worker_found_dead_at_the_send_is_replaced_silently(monkeypatch):
    """The cache hands out an idle worker without reading it first: one
    that died while idle fails the job's send (EPIPE), before the job
    reached it, and the call goes to a fresh worker.  (The reaper thread
    may find it dead first, now and then: tried until this path ran.)"""
    seen = spy_release_dead(monkeypatch)
    async with trio_parallel.open_worker_context() as ctx:
        for _ in range(20):
            pid = await ctx.run_sync(_jobs.pid)
            os.kill(pid, signal.SIGKILL)
            await until_dead(pid, 0.001)
            new = await ctx.run_sync(_jobs.pid)
            assert new != pid
            assert gone(pid)
            if seen:
                break
        assert seen == [pid]


async def test_workers_ignore_sigint():
    async with trio_parallel.open_worker_context() as ctx:
        pid = await ctx.run_sync(_jobs.pid)
        async with trio.open_nursery() as n:
            n.start_soon(ctx.run_sync, _jobs.sleep_pid, 0.3)
            await trio.sleep(0.1)
            os.kill(pid, signal.SIGINT)
        assert await ctx.run_sync(_jobs.pid) == pid


@pytest.mark.parametrize("wtype", list(trio_parallel.WorkerType), ids=lambda t: t.name)
async def test_programs_a_job_starts_do_not_inherit_ignoring_sigint(wtype):
    """Workers ignore SIGINT with a handler, not SIG_IGN, which exec would
    pass on: a job's Python child still stops on SIGINT."""
    async with trio_parallel.open_worker_context(worker_type=wtype) as ctx:
        assert await ctx.run_sync(_jobs.sigint_child) == -signal.SIGINT


# ------------------------------------------------------- checkpoints

async def test_entry_is_a_checkpoint(tmp_path):
    marker = tmp_path / "ran"
    with trio.CancelScope() as scope:
        scope.cancel()
        await trio_parallel.run_sync(_jobs.touch, str(marker))
    assert scope.cancelled_caught
    assert not marker.exists()


async def test_entry_is_a_checkpoint_with_any_limiter(tmp_path):
    class Limiter:
        async def __aenter__(self):
            return self

        async def __aexit__(self, *exc):
            return False

    marker = tmp_path / "ran"
    with trio.CancelScope() as scope:
        scope.cancel()
        await trio_parallel.run_sync(_jobs.touch, str(marker), limiter=Limiter())
    assert scope.cancelled_caught and not marker.exists()


async def test_entry_is_a_cancel_and_schedule_point():
    from trio.testing import assert_checkpoints

    class Limiter:
        async def __aenter__(self):
            pass

        async def __aexit__(self, *exc):
            pass

    for kwargs in ({}, {"limiter": Limiter()}, {"kill_on_cancel": True}):
        with assert_checkpoints():
            await trio_parallel.run_sync(bool, **kwargs)


# -------------------------------------------------------- cancellation

@pytest.mark.parametrize("flag", ["kill_on_cancel", "cancellable"])
async def test_kill_on_cancel_kills_and_reaps(flag):
    async with trio_parallel.open_worker_context() as ctx:
        pid = await ctx.run_sync(_jobs.pid)
        with trio.move_on_after(0.3) as scope:
            await ctx.run_sync(_jobs.sleep_pid, 30, **{flag: True})
        assert scope.cancelled_caught
        assert gone(pid)
        assert counts(ctx) == (0, 0)
        assert await ctx.run_sync(_jobs.pid) != pid


async def test_without_kill_on_cancel_the_call_is_shielded():
    result = None
    with trio.move_on_after(0.1) as scope:
        result = await trio_parallel.run_sync(_jobs.sleep_pid, 0.5)
        await trio.lowlevel.checkpoint()  # the deferred cancel lands here
    assert scope.cancelled_caught
    assert isinstance(result, int)


async def test_run_sync_is_ki_protected():
    seen = []

    class Limiter:
        async def __aenter__(self):
            seen.append(trio.lowlevel.currently_ki_protected())

        async def __aexit__(self, *exc):
            return False

    await trio_parallel.run_sync(bool, limiter=Limiter())
    assert seen == [True]


# ------------------------------------------------------------ limiters

async def test_default_limiter_per_run():
    lim = trio_parallel.current_default_worker_limiter()
    assert isinstance(lim, trio.CapacityLimiter)
    assert lim.total_tokens == os.cpu_count()
    assert trio_parallel.current_default_worker_limiter() is lim
    other = []

    async def get():
        other.append(trio_parallel.current_default_worker_limiter())

    import threading
    t = threading.Thread(target=trio.run, args=(get,))
    t.start()
    t.join()
    assert other[0] is not lim


@pytest.fixture(params=["inline", "trio"])
def park(request, monkeypatch):
    """run_sync waits for a CapacityLimiter's token with acquire_on_behalf_of
    inline ("inline", where this Trio has the internals it uses), or by
    calling it ("trio": any other Trio)."""
    from tpar import _impl
    if request.param == "trio":
        monkeypatch.setattr(_impl, "_PARK_IN_LIMITER", False)
    elif not _impl._PARK_IN_LIMITER:
        pytest.skip("this Trio's CapacityLimiter lacks the internals the inline wait uses")
    return request.param


async def test_limiter_is_held_for_the_whole_job(park):
    lim = trio.CapacityLimiter(1)
    peak = 0
    async with trio_parallel.open_worker_context() as ctx:

        async def watch():
            nonlocal peak
            while True:
                peak = max(peak, ctx.statistics().running_workers)
                assert lim.borrowed_tokens <= 1
                await trio.sleep(0.005)

        async with trio.open_nursery() as n:
            n.start_soon(watch)
            async with trio.open_nursery() as jobs:
                for _ in range(3):
                    jobs.start_soon(lambda: ctx.run_sync(_jobs.sleep_pid, 0.1, limiter=lim))
                await trio.sleep(0.05)
                assert lim.borrowed_tokens == 1
                assert lim.statistics().tasks_waiting == 2
            n.cancel_scope.cancel()
    assert peak == 1


async def test_a_call_cancelled_while_waiting_for_its_limiter_leaves_it_clean(park):
    lim = trio.CapacityLimiter(1)
    async with trio_parallel.open_worker_context() as ctx:
        async with trio.open_nursery() as n:
            n.start_soon(lambda: ctx.run_sync(_jobs.sleep_pid, 0.3, limiter=lim))
            while not lim.borrowed_tokens:
                await trio.sleep(0.005)
            with trio.move_on_after(0.05) as scope:
                await ctx.run_sync(_jobs.pid, limiter=lim)
            assert scope.cancelled_caught
            assert lim.statistics().tasks_waiting == 0
            assert not lim._pending_borrowers  # what the inline wait writes
        assert lim.borrowed_tokens == 0
        assert await ctx.run_sync(_jobs.add, 1, 2, limiter=lim) == 3  # not lost


async def test_calls_waiting_for_the_limiter_each_run_holding_its_token(park):
    lim = trio.CapacityLimiter(2)
    holders = []
    async with trio_parallel.open_worker_context() as ctx:

        async def one(i):
            assert await ctx.run_sync(_jobs.sleep_then, (0.02, i), limiter=lim) == i
            holders.append(trio.lowlevel.current_task() in lim.statistics().borrowers)

        async with trio.open_nursery() as n:
            for i in range(8):
                n.start_soon(one, i)
            await trio.testing.wait_all_tasks_blocked()
            assert lim.statistics().tasks_waiting == 6
    assert holders == [False] * 8  # each gave its token back on return
    assert lim.borrowed_tokens == 0


def test_a_waiting_call_holds_fewer_objects_than_trios_own_waiter(park):
    """Each of 20,000 calls waiting for the default limiter is walked by every
    full collection of the cyclic GC: with Trio's acquire_on_behalf_of, a
    waiting call keeps its coroutine, the WouldBlock it caught, two tracebacks
    and a frame alive, more than a bare Trio task waiting on the same limiter
    (docs/design.md, "Throughput of tiny calls")."""
    import gc

    n = 300

    async def floor(lim):  # bench/trio_floor.py's: the limiter, one yield
        task = trio.lowlevel.current_task()
        await lim.acquire_on_behalf_of(task)
        try:
            await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            lim.release_on_behalf_of(task)

    async def per_waiter(spawn):
        lim = trio.CapacityLimiter(1)
        lim.acquire_on_behalf_of_nowait("the test")
        async with trio.open_nursery() as nursery:
            await trio.testing.wait_all_tasks_blocked()
            gc.collect()
            before = len(gc.get_objects())
            for _ in range(n):
                nursery.start_soon(spawn, lim)
            await trio.testing.wait_all_tasks_blocked()
            assert lim.statistics().tasks_waiting == n
            gc.collect()
            held = (len(gc.get_objects()) - before) / n
            lim.release_on_behalf_of("the test")
        return held

    async def main():
        async with trio_parallel.open_worker_context() as ctx:
            await ctx.run_sync(bool)
            trio_floor = await per_waiter(floor)
            ours = await per_waiter(lambda lim: ctx.run_sync(bool, limiter=lim))
            return trio_floor, ours

    trio_floor, ours = trio.run(main)
    if park == "inline":
        assert ours < trio_floor, (ours, trio_floor)
    else:
        assert ours >= trio_floor, (ours, trio_floor)  # the test can tell


async def test_a_waiting_call_is_one_coroutine_down_to_the_limiter():
    """tpar.run_sync and ctx.run_sync are each one coroutine from the call to
    the limiter's parking lot: a layer more would cost every resume of every
    call, and every full GC walks each waiting call's layers."""
    from tpar import _impl

    def chain(task):
        names, coro = [], task.coro
        while coro is not None and hasattr(coro, "cr_code"):
            names.append(coro.cr_code.co_name)
            coro = coro.cr_await
        return names

    def probe():
        pass

    # An older Trio's enable_ki_protection wraps: one layer more, inside.
    ours = ["run_sync"] if trio.lowlevel.enable_ki_protection(probe) is probe else \
        ["run_sync", "run_sync"]
    if not _impl._PARK_IN_LIMITER:
        ours.append("acquire_on_behalf_of")
    lim = trio.CapacityLimiter(1)
    lim.acquire_on_behalf_of_nowait("the test")
    async with trio_parallel.open_worker_context() as ctx:
        async with trio.open_nursery() as n:
            for run_sync in (trio_parallel.run_sync, ctx.run_sync):
                n.start_soon(partial(run_sync, bool, limiter=lim))
            await trio.testing.wait_all_tasks_blocked()
            tasks = [t for t in n.child_tasks]
            assert len(tasks) == 2
            for t in tasks:
                assert chain(t)[:len(ours) + 1] == ours + ["park"], chain(t)
            lim.release_on_behalf_of("the test")
    assert inspect.iscoroutinefunction(trio_parallel.run_sync)
    assert inspect.iscoroutinefunction(ctx.run_sync)
    assert inspect.iscoroutinefunction(trio_parallel.WorkerContext.run_sync)
    assert ctx.run_sync is ctx.run_sync
    assert str(inspect.signature(ctx.run_sync)) == str(inspect.signature(trio_parallel.run_sync))


async def test_a_kept_run_sync_of_a_closed_context_raises_closed():
    async with trio_parallel.open_worker_context() as ctx:
        run_sync = ctx.run_sync
        assert await run_sync(_jobs.add, 1, 2) == 3
        assert await trio_parallel.WorkerContext.run_sync(ctx, _jobs.add, 2, 2) == 4
    with pytest.raises(trio.ClosedResourceError):
        await run_sync(bool)
    del ctx
    import gc
    gc.collect()  # its own run_sync does not keep it alive
    with pytest.raises(trio.ClosedResourceError):
        await run_sync(bool)


async def test_any_async_context_manager_is_a_limiter():
    events = []

    class Limiter:
        async def __aenter__(self):
            events.append("enter")

        async def __aexit__(self, *exc):
            events.append("exit")

    assert await trio_parallel.run_sync(_jobs.add, 1, 2, limiter=Limiter()) == 3
    assert events == ["enter", "exit"]
