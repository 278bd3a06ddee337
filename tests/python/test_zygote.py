"""The forkserver: the spare, one worker the zygote keeps forked ahead of
the next request (pyworker/main.c); the zygote of a closed context, kept
for the next context of the same configuration (python/tpar/_proc.py)."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import trio

import _jobs
import tpar as trio_parallel
from conftest import subprocess_env
from test_run_sync import gone

FORKSERVER = trio_parallel.WorkerType.FORKSERVER


def children(pid):
    kids = set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        kids.add(int(d))
            except (FileNotFoundError, ProcessLookupError):
                pass
    return kids


async def spare_of(zygote, workers):
    with trio.fail_after(30):
        while True:
            spares = children(zygote) - set(workers)
            if spares:
                (spare,) = spares
                return spare
            await trio.sleep(0.005)


async def test_the_next_worker_is_the_spare():
    async with trio_parallel.open_worker_context(
            worker_type=FORKSERVER, retire=_jobs.always_retire) as ctx:
        first = await ctx.run_sync(_jobs.pid)
        zygote = ctx._cache.launcher.zygote.pid
        spare = await spare_of(zygote, [first])
        assert await ctx.run_sync(_jobs.pid) == spare
        assert await spare_of(zygote, [first, spare]) not in (first, spare)
    assert gone(first) and gone(spare)


async def test_a_dead_spare_is_replaced_and_never_reported():
    async with trio_parallel.open_worker_context(worker_type=FORKSERVER) as ctx:
        first = await ctx.run_sync(_jobs.pid)
        zygote = ctx._cache.launcher.zygote.pid
        spare = await spare_of(zygote, [first])
        os.kill(spare, signal.SIGKILL)
        while not gone(spare):  # the zygote reaps it
            await trio.sleep(0.005)
        async with trio.open_nursery() as n:  # needs a second worker
            n.start_soon(ctx.run_sync, _jobs.sleep_pid, 0.5)
            await trio.sleep(0.1)
            second = await ctx.run_sync(_jobs.pid)
        assert second not in (first, spare)
        assert ctx._cache.launcher.zygote.pid == zygote  # still the same zygote
        assert await spare_of(zygote, [first, second]) != spare
    assert gone(first) and gone(second)


# --------------------------------------------------------- parked zygotes

async def test_a_closed_contexts_zygote_serves_the_next_context():
    async with trio_parallel.open_worker_context(worker_type=FORKSERVER) as ctx:
        first = await ctx.run_sync(_jobs.pid)
        zygote = ctx._cache.launcher.zygote.pid
    assert gone(first) and not gone(zygote)
    async with trio_parallel.open_worker_context(worker_type=FORKSERVER) as ctx:
        second = await ctx.run_sync(_jobs.pid)
        assert ctx._cache.launcher.zygote.pid == zygote
        assert second != first
    # Another configuration gets its own zygote; one zygote is kept.
    async with trio_parallel.open_worker_context(worker_type=FORKSERVER,
                                                 idle_timeout=100) as ctx:
        await ctx.run_sync(_jobs.pid)
        other = ctx._cache.launcher.zygote.pid
        assert other != zygote
    with trio.fail_after(10):
        while not gone(zygote):
            await trio.sleep(0.005)
    assert not gone(other)


async def test_a_parked_zygote_that_died_is_replaced():
    async with trio_parallel.open_worker_context(worker_type=FORKSERVER) as ctx:
        await ctx.run_sync(_jobs.pid)
        zygote = ctx._cache.launcher.zygote.pid
    os.kill(zygote, signal.SIGKILL)
    async with trio_parallel.open_worker_context(worker_type=FORKSERVER) as ctx:
        assert await ctx.run_sync(_jobs.add, 1, 2) == 3
        assert ctx._cache.launcher.zygote.pid != zygote


def test_a_parked_zygote_stops_at_exit(tmp_path):
    script = tmp_path / "prog.py"
    script.write_text(textwrap.dedent("""
        import trio
        import tpar as trio_parallel

        async def main():
            async with trio_parallel.open_worker_context(
                    worker_type=trio_parallel.WorkerType.FORKSERVER) as ctx:
                await ctx.run_sync(bool)
                print(ctx._cache.launcher.zygote.pid, flush=True)

        if __name__ == "__main__":
            trio.run(main)
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env=subprocess_env(), timeout=60, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert gone(int(proc.stdout))


THREAD_AT_IMPORT = r"""
import os, threading, time
# A library that starts a thread when imported: the zygote imports this
# script too, and that thread must not take the zygote's SIGCHLD.
threading.Thread(target=time.sleep, args=(1000,), daemon=True).start()

def retire():
    return True

def zombies_of(pid):
    out = 0
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            state, ppid = open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[:2]
        except OSError:
            continue
        out += int(ppid) == pid and state == "Z"
    return out

if __name__ == "__main__":
    import trio, tpar

    async def main():
        async with tpar.open_worker_context(worker_type=tpar.WorkerType.FORKSERVER,
                                            retire=retire) as ctx:
            seen = 0
            for _ in range(3):  # the loss is a race: three chances to show
                for _ in range(30):
                    await ctx.run_sync(os.getpid)
                await trio.sleep(0.3)
                seen += zombies_of(ctx._cache.launcher.zygote.pid)
            print(seen, flush=True)
        print("closed", flush=True)  # a lost exit: the close waits forever

    trio.run(main)
"""


def test_a_thread_started_by_the_script_does_not_hide_workers_exits(tmp_path):
    import subprocess
    import sys

    from conftest import subprocess_env
    script = tmp_path / "prog.py"
    script.write_text(THREAD_AT_IMPORT)
    try:
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                              env=subprocess_env(), timeout=30, cwd=str(tmp_path))
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"the context never closed: {e.stdout!r}")
    assert proc.stdout.split() == ["0", "closed"], proc.stdout + proc.stderr


def test_an_exit_report_goes_to_its_own_worker_when_its_pid_is_reused():
    """The zygote reaps a worker at once and reports its exit later; by then
    the pid may be a new worker's.  Reports are matched by the fork
    request's tag, not by pid.  (ns_last_pid stands in for pid wrap.)"""
    import signal
    import time

    from tpar import _core
    from tpar._locate import worker_argv
    last_pid = "/proc/sys/kernel/ns_last_pid"
    if not os.access(last_pid, os.W_OK):
        pytest.skip("cannot set the next pid here")

    def ready(w):
        for _ in range(2000):
            w.recv(0.0)
            if w.ready:
                return
            time.sleep(0.005)
        raise AssertionError("worker never ready")

    def children(pid):
        out = set()
        for d in filter(str.isdigit, os.listdir("/proc")):
            try:
                if int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1]) == pid:
                    out.add(int(d))
            except OSError:
                pass
        return out

    z = _core.zygote_start(worker_argv(("--zygote",)))
    try:
        a = z.fork()
        ready(a)
        pid = a.pid
        for _ in range(200):  # the zygote forks its spare after answering
            spares = children(z.pid) - {pid}
            if spares:
                break
            time.sleep(0.01)
        a.close()  # exits at EOF: the zygote reaps it, its report waits
        for s in spares:  # so that the next worker is a fresh fork
            os.kill(s, signal.SIGKILL)
        while os.path.exists(f"/proc/{pid}") or any(os.path.exists(f"/proc/{s}") for s in spares):
            time.sleep(0.01)
        with open(last_pid, "w") as f:
            f.write(str(pid - 1))
        b = z.fork()
        ready(b)
        if b.pid != pid:
            pytest.skip("another process took the pid first")
        assert b.reap(False) is None and b.alive()  # not a's exit
        assert a.reap(True) == 0
        b.close()
        assert b.reap(True) == 0
    finally:
        z.stop()
