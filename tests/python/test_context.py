"""Worker contexts: validation, statistics, LIFO reuse, init/retire,
shutdown, the default cache across trio.run calls and threads, cache_scope."""

import math
import os
import signal
import threading
import time

import pytest
import trio

import _jobs
import tpar as trio_parallel
from test_run_sync import counts, gone, zombie


@pytest.mark.parametrize("kwargs, exc", [
    ({"idle_timeout": -1}, ValueError),
    ({"grace_period": -0.5}, ValueError),
    ({"init": 5}, TypeError),
    ({"retire": "no"}, TypeError),
    ({"worker_type": "thread"}, ValueError),
    ({"worker_type": 1}, ValueError),
])
async def test_arguments_are_validated(kwargs, exc):
    with pytest.raises(exc):
        async with trio_parallel.open_worker_context(**kwargs):
            pass  # pragma: no cover
    with pytest.raises(exc):
        trio_parallel.configure_default_context(**kwargs)


async def test_statistics_count_idle_and_running():
    async with trio_parallel.open_worker_context() as ctx:
        assert counts(ctx) == (0, 0)
        async with trio.open_nursery() as n:
            n.start_soon(ctx.run_sync, _jobs.sleep_pid, 0.3)
            await trio.sleep(0.1)
            assert counts(ctx) == (0, 1)
        assert counts(ctx) == (1, 0)


async def test_workers_are_reused_lifo():
    async with trio_parallel.open_worker_context() as ctx:
        pids = {}

        async def job(name, seconds):
            pids[name] = await ctx.run_sync(_jobs.sleep_pid, seconds)

        async with trio.open_nursery() as n:
            n.start_soon(job, "slow", 0.4)
            n.start_soon(job, "fast", 0.0)
        assert pids["slow"] != pids["fast"]
        assert counts(ctx) == (2, 0)
        # the slow one went idle last, so it is the first taken
        assert await ctx.run_sync(_jobs.pid) == pids["slow"]


async def test_init_runs_in_each_worker_before_jobs():
    async with trio_parallel.open_worker_context(init=_jobs.init_state) as ctx:
        pid = await ctx.run_sync(_jobs.pid)
        assert await ctx.run_sync(_jobs.state_get, "init") == pid


async def test_failing_init_is_broken_worker_error():
    async with trio_parallel.open_worker_context(init=_jobs.init_fail) as ctx:
        with pytest.raises(trio_parallel.BrokenWorkerError, match="exited with code 70"):
            await ctx.run_sync(bool)


async def test_retire_true_makes_single_use_workers():
    async with trio_parallel.open_worker_context(retire=_jobs.always_retire) as ctx:
        pids = [await ctx.run_sync(_jobs.pid) for _ in range(3)]
        assert len(set(pids)) == 3
        with trio.fail_after(5):  # it retires after its result went back
            while counts(ctx) != (0, 0):
                await trio.sleep(0.05)
    for p in pids:
        assert gone(p)


async def test_exit_waits_for_running_jobs_and_stops_workers():
    async with trio_parallel.open_worker_context() as ctx:
        done = []

        async def job():
            done.append(await ctx.run_sync(_jobs.sleep_pid, 0.2))

        async with trio.open_nursery() as n:
            n.start_soon(job)
    assert len(done) == 1
    assert gone(done[0])
    with pytest.raises(trio.ClosedResourceError, match="closed"):
        await ctx.run_sync(bool)


async def test_exit_kills_a_worker_that_will_not_stop():
    with pytest.raises(trio_parallel.BrokenWorkerError, match="SIGKILL"):
        async with trio_parallel.open_worker_context(grace_period=0.2) as ctx:
            pid = await ctx.run_sync(_jobs.pid)
            os.kill(pid, signal.SIGSTOP)  # it cannot read its end of file
    assert gone(pid)


async def test_idle_timeout_retires_stale_workers():
    async with trio_parallel.open_worker_context(idle_timeout=0.1) as ctx:
        pid = await ctx.run_sync(_jobs.pid)
        await trio.sleep(0.2)
        assert await ctx.run_sync(_jobs.pid) != pid


async def test_kill_on_cancel_in_a_context_leaves_it_usable():
    async with trio_parallel.open_worker_context() as ctx:
        with trio.move_on_after(0.2):
            await ctx.run_sync(_jobs.sleep_pid, 30, kill_on_cancel=True)
        assert await ctx.run_sync(_jobs.add, 2, 2) == 4


# ------------------------------------------------------- default cache

def test_default_cache_is_shared_by_sequential_runs():
    first = trio.run(trio_parallel.run_sync, _jobs.pid)
    assert trio_parallel.default_context_statistics().idle_workers >= 1
    assert trio.run(trio_parallel.run_sync, _jobs.pid) == first


def test_default_cache_is_shared_by_concurrent_runs_in_threads():
    seen, errors = [], []

    async def many():
        for i in range(30):
            assert await trio_parallel.run_sync(_jobs.add, i, 1) == i + 1
        seen.append(await trio_parallel.run_sync(_jobs.pid))

    def thread_main():
        try:
            trio.run(many)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=thread_main) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    stats = trio_parallel.default_context_statistics()
    assert stats.running_workers == 0
    assert trio.run(trio_parallel.run_sync, _jobs.pid) in seen


async def test_cache_scope_isolates_a_task_subtree():
    outside = await trio_parallel.run_sync(_jobs.pid)
    before = trio_parallel.default_context_statistics()
    inner = []
    async with trio_parallel.cache_scope(retire=_jobs.always_retire):

        async def child():
            inner.append(await trio_parallel.run_sync(_jobs.pid))

        async with trio.open_nursery() as n:
            n.start_soon(child)
            n.start_soon(child)
        inner.append(await trio_parallel.run_sync(_jobs.pid))
    assert len(set(inner)) == 3 and outside not in inner
    assert trio_parallel.default_context_statistics() == before
    assert await trio_parallel.run_sync(_jobs.pid) == outside


def test_atexit_shutdown_grace_period_reads_and_sets():
    old = trio_parallel.atexit_shutdown_grace_period()
    try:
        assert old == 30
        assert trio_parallel.atexit_shutdown_grace_period(5) == 5
        assert trio_parallel.atexit_shutdown_grace_period(-1) == 5
        assert trio_parallel.atexit_shutdown_grace_period() == 5
        assert trio_parallel.atexit_shutdown_grace_period(math.inf) == math.inf
    finally:
        trio_parallel.atexit_shutdown_grace_period(old)


async def test_idle_worker_goes_on_its_idle_timeout():
    async with trio_parallel.open_worker_context(idle_timeout=0.1) as ctx:
        pid = await ctx.run_sync(_jobs.pid)
        with trio.fail_after(20):
            while not gone(pid):  # pruned, exits at end of file, reaped
                await trio.sleep(0.05)
        assert counts(ctx) == (0, 0)
        assert await ctx.run_sync(_jobs.pid) != pid


def test_idle_worker_exits_by_itself(tmp_path):
    """Its own idle timeout: a worker goes even when no parent prunes it
    (here a bare worker outside any cache)."""
    from tpar import _core, _impl
    w = _core.spawn(_impl.worker_argv(("--idle-timeout", "0.3")))
    try:
        deadline = time.monotonic() + 20
        while w.reap(False) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert w.status == 0
    finally:
        w.kill()
        w.reap(True)
        w.close()
