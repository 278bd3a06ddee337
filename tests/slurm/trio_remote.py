"""The Trio package on srun workers (run inside an allocation of at least
3 tasks by tests/slurm/slurm.bats): run_sync on several tasks, kill_on_cancel
killing the remote job, BrokenWorkerError when a remote worker dies, and
nothing of the step left once the context has closed.  Prints OK."""
import os
import signal
import sys

import trio

import tpar
import _jobs


def where(seconds):
    import time
    time.sleep(seconds)
    return os.getpid(), os.environ.get("SLURM_PROCID"), os.environ.get("SLURM_STEP_ID")


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def main():
    with trio.fail_after(60):
        await check()


async def check():
    async with tpar.open_remote_context(slurm=True) as ctx:
        assert ctx.limiter.total_tokens == int(os.environ["SLURM_NTASKS"])
        got = []
        async with trio.open_nursery() as n:
            async def one():
                got.append(await ctx.run_sync(where, 0.5))
            for _ in range(6):
                n.start_soon(one)
        tasks = {procid for _, procid, _ in got}
        assert len(tasks) >= 2, got  # several srun tasks ran jobs at once
        assert all(step is not None for _, _, step in got), got
        assert os.getpid() not in {p for p, _, _ in got}

        victim = await ctx.run_sync(_jobs.pid)
        with trio.move_on_after(0.5):
            await ctx.run_sync(_jobs.sleep_pid, 60, kill_on_cancel=True)
        with trio.move_on_after(5):
            while alive(victim):
                await trio.sleep(0.05)
        assert not alive(victim), "kill_on_cancel left the remote job running"

        try:
            await ctx.run_sync(_jobs.kill_self, signal.SIGKILL)
        except tpar.BrokenWorkerError as exc:
            assert "died unexpectedly" in str(exc), exc
        else:
            raise AssertionError("no BrokenWorkerError")
        assert await ctx.run_sync(_jobs.add, 2, 3) == 5  # the slot reconnected
    print("OK")


if __name__ == "__main__":
    trio.run(main)
