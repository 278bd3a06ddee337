"""A context's life at its edges: calls refused once it closes, calls that
wait while the default is replaced, tasks that outlive their cache_scope,
Ctrl-C while a dead worker is being reported, and a FORK prestart."""

import pytest
import trio

import _jobs
import tpar as trio_parallel
from test_process import run_script


async def test_a_closing_context_refuses_new_calls_and_finishes_running_ones():
    box, done = [], []

    async def owner(nursery):
        async with trio_parallel.open_worker_context() as ctx:
            box.append(ctx)

            async def job():
                done.append(await ctx.run_sync(_jobs.sleep_pid, 0.5))
            nursery.start_soon(job)
            await trio.sleep(0.2)
        # here only once the job has ended

    async with trio.open_nursery() as n:
        n.start_soon(owner, n)
        await trio.sleep(0.35)  # owner is closing the context, the job runs
        with pytest.raises(trio.ClosedResourceError):
            await box[0].run_sync(bool)
        assert not done
    assert len(done) == 1


async def test_a_task_that_outlives_its_cache_scope_uses_the_default_context():
    results = []

    async def later():
        await trio.sleep(0.2)
        results.append(await trio_parallel.run_sync(int, "5"))
        results.append(trio_parallel.default_context_statistics().running_workers)

    async with trio.open_nursery() as outer:
        async with trio_parallel.cache_scope():
            outer.start_soon(later)
            assert trio_parallel.default_context_statistics().idle_workers == 0
    assert results == [5, 0]


def test_a_call_waiting_for_its_limiter_runs_in_the_replaced_default(tmp_path):
    proc = run_script(tmp_path, """
        import time, trio
        import tpar as trio_parallel

        def slow(x):
            time.sleep(0.5)
            return x

        async def main():
            limiter = trio.CapacityLimiter(1)
            results = {}

            async def job(i):
                results[i] = await trio_parallel.run_sync(slow, i, limiter=limiter)
            async with trio.open_nursery() as n:
                n.start_soon(job, 1)
                await trio.sleep(0.05)
                n.start_soon(job, 2)  # waits for the limiter
                await trio.sleep(0.05)
                trio_parallel.configure_default_context(idle_timeout=100)
            print(results)

        if __name__ == "__main__":
            trio.run(main)
    """)
    assert proc.stdout.strip() == "{1: 1, 2: 2}"


def test_ctrl_c_while_a_dead_worker_is_reported_leaves_no_running_worker(tmp_path):
    """The worker closes its pipes (the parent sees it die) but its exit
    status comes late; Ctrl-C lands while the parent waits for it."""
    proc = run_script(tmp_path, """
        import os, signal, threading, time, trio
        import tpar as trio_parallel

        def close_pipes_and_linger():
            os.closerange(3, 4096)
            time.sleep(1.5)

        async def main():
            threading.Timer(0.4, os.kill, (os.getpid(), signal.SIGINT)).start()
            async with trio_parallel.open_worker_context() as ctx:
                try:
                    await ctx.run_sync(close_pipes_and_linger)
                except KeyboardInterrupt:
                    print("interrupted", ctx.statistics().running_workers, flush=True)
                    raise

        if __name__ == "__main__":
            try:
                trio.run(main)
            except KeyboardInterrupt:
                print("exited", flush=True)
    """, timeout=30)
    assert proc.stdout.split() == ["interrupted", "0", "exited"]


def test_fork_workers_prestarted_by_the_default_context_can_use_tpar(tmp_path):
    """The prestart forks outside the default context's lock: a child that
    inherited it held would deadlock on tpar's default-context API."""
    proc = run_script(tmp_path, """
        import trio
        import tpar as trio_parallel

        def job():
            return trio_parallel.atexit_shutdown_grace_period()

        async def main():
            with trio.fail_after(10):
                print(await trio_parallel.run_sync(job, kill_on_cancel=True))

        if __name__ == "__main__":
            trio_parallel.configure_default_context(
                worker_type=trio_parallel.WorkerType.FORK, prestart=1)
            trio.run(main)
    """, timeout=30)
    assert proc.stdout.strip() == "30.0"
