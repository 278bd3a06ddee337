"""Large arguments and results go through the workers' lanes (shared
memory), not the pipe: they must come back whole, of the right type, with
errors and fallbacks as for small ones, and leave no memory behind."""

import os
import threading

import pytest
import trio

import _jobs
import tpar as trio_parallel

TYPES = [trio_parallel.WorkerType.SPAWN, trio_parallel.WorkerType.FORKSERVER,
         trio_parallel.WorkerType.FORK]
MB = 1_000_000


def pattern(n):
    """n bytes that are not all alike: a shifted or truncated copy would show."""
    block = bytes(range(251))
    return (block * (n // len(block) + 1))[:n]


@pytest.mark.parametrize("wtype", TYPES, ids=lambda t: t.name)
async def test_every_worker_type_has_its_two_lanes(wtype):
    """Two workers at once (for FORKSERVER the second is the zygote's spare):
    each holds exactly its own two lanes, moved out of user code's way."""
    found = []
    two = trio.CapacityLimiter(2)  # two workers even on a one-CPU machine

    async def one():
        found.append(await ctx.run_sync(_jobs.sleep_lanes, 0.3, limiter=two))

    async with trio_parallel.open_worker_context(worker_type=wtype) as ctx:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(one)
            nursery.start_soon(one)
    assert len({pid for pid, _ in found}) == 2
    for _, fds in found:
        assert len(fds) == 2 and min(fds) >= 100, fds


@pytest.mark.parametrize("wtype", TYPES, ids=lambda t: t.name)
async def test_100mb_round_trip_identical(wtype):
    payload = pattern(100 * MB)
    async with trio_parallel.open_worker_context(worker_type=wtype) as ctx:
        for _ in range(2):  # the second time the lanes are warm
            back = await ctx.run_sync(bytes, payload)
            assert type(back) is bytes and back == payload
            del back
        arr = await ctx.run_sync(bytearray, 10 ** 8)
        assert type(arr) is bytearray and len(arr) == 10 ** 8 and not any(arr[::4096])
        del arr
        assert await ctx.run_sync(len, payload) == 100 * MB
        assert await ctx.run_sync(_jobs.add, 2, 3) == 5  # small jobs unaffected


async def test_many_sizes_around_the_threshold():
    async with trio_parallel.open_worker_context() as ctx:
        for n in (1, 65535, 65536, 262143, 262144, 262145, 1 << 20, 3 * MB + 7):
            data = pattern(n)
            assert await ctx.run_sync(bytes, data) == data
            assert await ctx.run_sync(_jobs.add, data, b"!") == data + b"!"


async def test_unpicklable_large_values_leave_the_worker_usable():
    async with trio_parallel.open_worker_context() as ctx:
        pid = await ctx.run_sync(os.getpid)
        # The argument: its first MB is already in the lane when pickling fails.
        with pytest.raises(TypeError, match="lock"):
            await ctx.run_sync(len, (b"x" * MB, threading.Lock()))
        # The result: likewise in the worker.
        with pytest.raises(TypeError, match="lock"):
            await ctx.run_sync(_jobs.big_with_lock, 2 * MB)
        data = pattern(5 * MB)
        assert await ctx.run_sync(bytes, data) == data
        assert await ctx.run_sync(os.getpid) == pid


async def test_large_exception_comes_back():
    async with trio_parallel.open_worker_context() as ctx:
        with pytest.raises(ValueError) as info:
            await ctx.run_sync(_jobs.raise_big, 3 * MB)
        assert info.value.args == (b"e" * (3 * MB),)
        assert await ctx.run_sync(_jobs.add, 1, 1) == 2


async def test_idle_worker_gives_large_memory_back():
    async with trio_parallel.open_worker_context() as ctx:
        pid = await ctx.run_sync(os.getpid)
        base = _jobs.rss_kb(pid)
        back = await ctx.run_sync(bytes, pattern(100 * MB))
        del back
        assert _jobs.rss_kb(pid) > base + 50_000  # lanes and heap hold it now
        with trio.move_on_after(10):
            while _jobs.rss_kb(pid) > base + 20_000:
                await trio.sleep(0.1)
        assert _jobs.rss_kb(pid) <= base + 20_000
        assert await ctx.run_sync(os.getpid) == pid


HALF_SENT = r"""
import operator, pickle, resource
from tpar import _core, _impl

def main():
    w = _core.spawn(_impl.worker_argv(()))
    payload = b"\0" * (8 << 20)  # more than a pipe takes at once
    with open("/proc/self/status") as f:
        vm = next(int(l.split()[1]) for l in f if l.startswith("VmSize:")) * 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    # 4 MB of address space to spare: the 8 MB lane cannot be mapped, so the
    # payload would go inline, and the frame cannot be queued whole.
    resource.setrlimit(resource.RLIMIT_AS, (vm + (4 << 20), hard))
    try:
        w.send(_core.FRAME_JOB_PICKLE, payload)
        print("sent")
    except MemoryError:
        print("MemoryError")
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    w.send(_core.FRAME_JOB_PICKLE, pickle.dumps((operator.add, (1, 2), {}), 5))
    res = None
    while res is None:
        res = w.recv(1e6)
    print(w.alive(), res[0], pickle.loads(res[2]))
    w.kill()
    w.reap(True)

if __name__ == "__main__":  # the worker imports this script too
    main()
"""


def test_a_frame_that_cannot_be_queued_whole_is_not_sent(tmp_path):
    """No memory to queue the frame: nothing of it goes (the link queues a
    frame whole or not at all), so the worker never reads half a frame and
    takes the next job as if nothing happened."""
    import subprocess
    import sys

    from conftest import subprocess_env
    script = tmp_path / "half.py"
    script.write_text(HALF_SENT)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True,
                          text=True, env=subprocess_env(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["MemoryError", "True 0 3"]
