"""WorkerType.FORK: workers forked from this very process."""

import os
import signal

import pytest
import trio

import _jobs
import tpar as trio_parallel
from test_run_sync import counts, gone

FORK = trio_parallel.WorkerType.FORK


async def test_fork_runs_jobs_from_trio():
    async with trio_parallel.open_worker_context(worker_type=FORK) as ctx:
        pid = await ctx.run_sync(_jobs.pid)
        assert pid != os.getpid()
        assert await ctx.run_sync(_jobs.pid) == pid
        local = 5
        assert await ctx.run_sync(lambda: local + 1) == 6
        with pytest.raises(ValueError):
            await ctx.run_sync(int, "x")
    assert gone(pid)


async def test_fork_segfault_and_cancel():
    async with trio_parallel.open_worker_context(worker_type=FORK) as ctx:
        with pytest.raises(trio_parallel.BrokenWorkerError, match="SIGSEGV"):
            await ctx.run_sync(_jobs.kill_self, signal.SIGSEGV)
        with trio.move_on_after(0.2) as scope:
            await ctx.run_sync(_jobs.sleep_pid, 30, kill_on_cancel=True)
        assert scope.cancelled_caught and counts(ctx) == (0, 0)
        assert await ctx.run_sync(_jobs.add, 2, 3) == 5


async def test_fork_single_use_workers():
    async with trio_parallel.open_worker_context(worker_type=FORK,
                                                 retire=_jobs.always_retire) as ctx:
        pids = [await ctx.run_sync(_jobs.pid) for _ in range(4)]
    assert len(set(pids)) == 4 and all(gone(p) for p in pids)


async def test_fork_children_do_not_hold_other_workers_pipes():
    # A forked worker inherits this process's fds; if it kept the pipe of a
    # worker made earlier, that worker would never see end of file when
    # its context closes, and would be killed after the grace period
    # (BrokenWorkerError) instead of exiting cleanly.
    async with trio_parallel.open_worker_context(worker_type=FORK) as fork_ctx:
        async with trio_parallel.open_worker_context(grace_period=5) as spawn_ctx:
            spawned = await spawn_ctx.run_sync(_jobs.pid)
            forked = await fork_ctx.run_sync(_jobs.pid)
        assert gone(spawned)
        assert await fork_ctx.run_sync(_jobs.pid) == forked


def _read_stdin():
    import os
    return os.readlink("/proc/self/fd/0"), os.read(0, 100)


def test_a_fork_workers_stdin_is_dev_null_not_the_callers(tmp_path):
    import subprocess
    import sys
    import textwrap

    from conftest import subprocess_env
    script = tmp_path / "prog.py"
    script.write_text(textwrap.dedent("""
        import sys, trio, tpar
        import test_fork

        async def main():
            async with tpar.open_worker_context(worker_type=tpar.WorkerType.FORK) as ctx:
                print(await ctx.run_sync(test_fork._read_stdin))
            print(sys.stdin.read(), end="")

        if __name__ == "__main__":
            trio.run(main)
    """))
    env = subprocess_env()
    env["PYTHONPATH"] += ":" + str(__import__("pathlib").Path(__file__).parent)
    proc = subprocess.run([sys.executable, str(script)], input="the caller's input\n",
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.stdout.splitlines() == ["('/dev/null', b'')", "the caller's input"], proc.stderr


async def test_fork_context_inside_a_job():
    # A job in a worker opens a FORK context of its own: the forked child
    # starts its own flusher with fresh state, not the state of the outer
    # job's flusher (which may hold its lock at the fork).
    async with trio_parallel.open_worker_context() as ctx:
        for _ in range(3):
            out, pids = await ctx.run_sync(_jobs.nested_fork_calls, 50)
            assert out == [i * i for i in range(50)]
            assert len(pids) == 1 and pids[0] != os.getpid()
            assert gone(pids[0])
