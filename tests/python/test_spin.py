"""The spin before blocking: none on a machine with more runnable tasks
than CPUs (issue 17: a spin's yield there loses the CPU for a time slice,
so the first calls after a load starts were slower than trio-parallel's)."""

import os
import subprocess
import sys
import time

import trio

import tpar as trio_parallel
from tpar import _core, _impl


def _fds():
    return len(os.listdir("/proc/self/fd"))


def test_more_runnable_tasks_than_cpus_is_seen():
    # The package asks core/util.c's check (tests/unit/test_util.c tests
    # its reading of /proc/loadavg), through _core, as the workers do.
    assert _impl._oversubscribed is _core.cpus_oversubscribed
    cpus = os.sysconf("SC_NPROCESSORS_ONLN")
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range(cpus)]
    try:
        fds = _fds()
        seen = False
        now = time.monotonic()
        deadline = now + 10
        while not seen and time.monotonic() < deadline:
            now = max(now, time.monotonic()) + 0.01  # past the last reading's age
            seen = _core.cpus_oversubscribed(now)
            time.sleep(0.01)
        assert seen
        assert _fds() == fds  # nothing left open
        # Within 5 ms of a reading its answer stands, unread.
        for h in hogs:
            h.kill()
            h.wait()
        assert _core.cpus_oversubscribed(now + 0.0025)
    finally:
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
