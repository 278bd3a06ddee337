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
        zygote = ctx._cache.launcher.zygote.pid
        os.kill(zygote, signal.SIGKILL)
        while os.path.exists(f"/proc/{first}"):  # its workers die with it
            await trio.sleep(0.01)
        second = await ctx.run_sync(_jobs.pid)
        assert second != first
        assert ctx._cache.launcher.zygote.pid != zygote


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


ZYGOTE_RACE = r"""
import sys, threading, time
import trio
import tpar

def always():
    return True

def nap():
    time.sleep(10)

done = {"fork": 0, "kill": 0}
stop = False

def forking():  # a fresh fork of the zygote for every job
    async def main():
        while not stop:
            await tpar.run_sync(int)
            done["fork"] += 1
    trio.run(main)

def killing():  # kill_on_cancel: Worker.kill() reads the zygote's reports
    async def main():
        while not stop:
            with trio.move_on_after(0.003):
                await tpar.run_sync(nap, kill_on_cancel=True)
            done["kill"] += 1
    trio.run(main)

if __name__ == "__main__":
    tpar.configure_default_context(worker_type=tpar.WorkerType.FORKSERVER,
                                   retire=always, grace_period=1)
    for t in (forking, killing):
        threading.Thread(target=t, daemon=True).start()
    last, end = dict(done), time.monotonic() + float(sys.argv[1])
    while time.monotonic() < end:
        time.sleep(2)
        if done == last or 0 in done.values():
            print("stalled", done, flush=True)
            sys.exit(3)
        last = dict(done)
    stop = True
    print("ok", flush=True)
"""


def test_kills_and_forks_from_two_threads_never_stall(tmp_path):
    """A kill reads the zygote's exit reports: done without the zygote's
    lock, it could swallow the reply a fork in another thread waits for,
    and that thread (and every later fork) would wait forever."""
    import subprocess
    import sys

    from conftest import subprocess_env
    script = tmp_path / "race.py"
    script.write_text(ZYGOTE_RACE)
    try:
        proc = subprocess.run([sys.executable, str(script), "6"], capture_output=True,
                              text=True, env=subprocess_env(), timeout=60)
    except subprocess.TimeoutExpired:
        raise AssertionError("the program hung")
    assert proc.stdout.strip().splitlines()[-1:] == ["ok"], proc.stdout + proc.stderr
