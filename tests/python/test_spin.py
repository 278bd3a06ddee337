"""The spin before blocking: none on a machine with more runnable tasks
than CPUs (issue 17: a spin's yield there loses the CPU for a time slice,
so the first calls after a load starts were slower than trio-parallel's)."""

import os
import subprocess
import sys
import time

import trio

import tpar as trio_parallel
from tpar import _impl


def test_the_runnable_count_is_read_from_loadavg_text():
    assert _impl._runnable_now(b"0.20 0.18 0.12 3/80 11206\n") == 3
    assert _impl._runnable_now(b"1.00 1.00 1.00 17/1024 5\n") == 17
    assert _impl._runnable_now(b"") == -1
    assert _impl._runnable_now(b"0.20 0.18 0.12 x/80 1\n") == -1


def _fds():
    return len(os.listdir("/proc/self/fd"))


def test_more_runnable_tasks_than_cpus_is_seen():
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range(_impl._CPUS)]
    try:
        fds = _fds()
        seen = False
        deadline = time.monotonic() + 10
        while not seen and time.monotonic() < deadline:
            _impl._load_next = 0.0  # a fresh reading
            seen = _impl._oversubscribed()
            time.sleep(0.01)
        assert seen
        assert _fds() == fds  # nothing left open
        # Within _LOAD_CHECK_S of a reading its answer stands, unread.
        _impl._load_next = time.perf_counter() + 60
        for h in hogs:
            h.kill()
            h.wait()
        assert _impl._oversubscribed()
    finally:
        _impl._load_next = 0.0
        for h in hogs:
            h.kill()
            h.wait()


async def test_a_warm_call_on_an_oversubscribed_machine_blocks_at_once(monkeypatch):
    calls = []
    finish = _impl._finish

    async def recording_finish(w, warm=True):
        calls.append(warm)
        return await finish(w, warm)

    monkeypatch.setattr(_impl, "_finish", recording_finish)
    async with trio_parallel.open_worker_context() as ctx:
        await ctx.run_sync(bool)  # warm from now on
        calls.clear()
        monkeypatch.setattr(_impl, "_oversubscribed", lambda: True)
        for _ in range(5):
            assert await ctx.run_sync(int, "7") == 7
        # Neither the spin in recv() nor the yield-spin: every call waited
        # for its answer in epoll.
        assert calls == [False] * 5
