"""WorkerType.FORKSERVER: workers forked from a zygote tpar-worker."""

import os
import signal

import pytest
import trio

import _jobs
import tpar as trio_parallel
from test_run_sync import counts, gone

FORKSERVER = trio_parallel.WorkerType.FORKSERVER


async def test_forkserver_runs_jobs_and_reuses_workers():
    async with trio_parallel.open_worker_context(worker_type=FORKSERVER) as ctx:
        pid = await ctx.run_sync(_jobs.pid)
        assert pid != os.getpid()
        assert await ctx.run_sync(_jobs.pid) == pid
        assert await ctx.run_sync(lambda: 6 * 7) == 42
    assert gone(pid)  # the zygote is kept for the next context: test_zygote.py


async def test_forkserver_segfault_is_broken_worker_error():
    async with trio_parallel.open_worker_context(worker_type=FORKSERVER) as ctx:
        with pytest.raises(trio_parallel.BrokenWorkerError, match="SIGSEGV") as info:
            await ctx.run_sync(_jobs.kill_self, signal.SIGSEGV)
        pid = int(str(info.value).split("worker process ")[1].split()[0])
        assert gone(pid)
        assert await ctx.run_sync(_jobs.add, 1, 2) == 3


async def test_forkserver_survives_its_zygote_being_killed():
    async with trio_parallel.open_worker_context(worker_type=FORKSERVER) as ctx:
        first = await ctx.run_sync(_jobs.pid)
        zygote = ctx._zygote.pid
        os.kill(zygote, signal.SIGKILL)
        while os.path.exists(f"/proc/{first}"):  # its workers die with it
            await trio.sleep(0.01)
        second = await ctx.run_sync(_jobs.pid)
        assert second != first
        assert ctx._zygote.pid != zygote


async def test_forkserver_init_retire_and_kill_on_cancel():
    async with trio_parallel.open_worker_context(
            worker_type=FORKSERVER, init=_jobs.init_state, retire=_jobs.always_retire) as ctx:
        pids = []
        for _ in range(3):
            pid = await ctx.run_sync(_jobs.pid)
            pids.append(pid)
        assert len(set(pids)) == 3
        assert await ctx.run_sync(_jobs.state_get, "init") is not None
        with trio.move_on_after(0.2) as scope:
            await ctx.run_sync(_jobs.sleep_pid, 30, kill_on_cancel=True)
        assert scope.cancelled_caught
        assert counts(ctx) == (0, 0)
