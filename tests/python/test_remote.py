"""open_remote_context with a launcher that starts `tpar-worker --connect`
on this machine: the workers dial back over loopback TCP and authenticate.
(tests/slurm runs the same under srun.)"""
import os
import signal
import sys
import time

import pytest
import trio

import tpar
import _jobs

def launcher(n=2):
    return f"{{worker}} --workers {n}"


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


async def gone(pid, secs=5):
    with trio.move_on_after(secs):
        while alive(pid):
            await trio.sleep(0.02)
    return not alive(pid)


def env_secret():
    return os.environ.get("TPAR_SECRET")


async def test_run_sync_on_remote_workers():
    async with tpar.open_remote_context(launcher(2), workers=2) as ctx:
        assert await ctx.run_sync(_jobs.add, 40, 2) == 42
        pids = set()
        async with trio.open_nursery() as n:
            async def one():
                pids.add(await ctx.run_sync(_jobs.sleep_pid, 0.3))
            for _ in range(4):
                n.start_soon(one)
        assert len(pids) == 2 and os.getpid() not in pids
        # The secret never reaches a job.
        assert await ctx.run_sync(env_secret) is None
        with pytest.raises(ZeroDivisionError):
            await ctx.run_sync(_jobs.raise_, ZeroDivisionError("x"))
        big = b"y" * (3 << 20)
        assert await ctx.run_sync(bytes, big) == big
    for p in pids:
        assert await gone(p)


async def test_broken_worker_and_its_replacement():
    async with tpar.open_remote_context(launcher(1), workers=1) as ctx:
        first = await ctx.run_sync(_jobs.pid)
        with pytest.raises(tpar.BrokenWorkerError, match="died unexpectedly"):
            await ctx.run_sync(_jobs.kill_self, signal.SIGKILL)
        with pytest.raises(tpar.BrokenWorkerError):
            await ctx.run_sync(_jobs.exit_, 3)
        second = await ctx.run_sync(_jobs.pid)  # its supervisor connected another
        assert second != first


async def test_kill_on_cancel_kills_the_remote_job():
    async with tpar.open_remote_context(launcher(1), workers=1) as ctx:
        victim = await ctx.run_sync(_jobs.pid)
        t0 = time.monotonic()
        with trio.move_on_after(0.3):
            await ctx.run_sync(_jobs.sleep_pid, 60, kill_on_cancel=True)
        assert time.monotonic() - t0 < 5
        assert await gone(victim)
        assert await ctx.run_sync(_jobs.add, 1, 1) == 2  # a fresh worker


async def test_every_worker_gone_raises_rather_than_hangs():
    with trio.fail_after(20):
        async with tpar.open_remote_context("sh -c 'exit 3' {addr}") as ctx:
            with pytest.raises(tpar.BrokenWorkerError, match="every remote worker is gone"):
                await ctx.run_sync(_jobs.add, 1, 1)


async def test_bad_arguments():
    with pytest.raises(ValueError, match="addr"):
        async with tpar.open_remote_context("ssh node7 tpar-worker --connect"):
            pass
    with pytest.raises(ValueError, match="launcher"):
        async with tpar.open_remote_context():
            pass
    env = dict(os.environ)
    os.environ.pop("SLURM_JOB_ID", None)
    try:
        with pytest.raises(RuntimeError, match="Slurm allocation"):
            async with tpar.open_remote_context(slurm=True):
                pass
    finally:
        os.environ.clear()
        os.environ.update(env)
