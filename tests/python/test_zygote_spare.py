"""The forkserver's spare: the zygote keeps one worker forked ahead of the
next request (pyworker/main.c), and hands it out when a request comes."""

import os
import signal

import trio

import _jobs
import tpar as trio_parallel
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
        zygote = ctx._zygote.pid
        spare = await spare_of(zygote, [first])
        assert await ctx.run_sync(_jobs.pid) == spare
        assert await spare_of(zygote, [first, spare]) not in (first, spare)
    assert gone(zygote) and gone(spare)


async def test_a_dead_spare_is_replaced_and_never_reported():
    async with trio_parallel.open_worker_context(worker_type=FORKSERVER) as ctx:
        first = await ctx.run_sync(_jobs.pid)
        zygote = ctx._zygote.pid
        spare = await spare_of(zygote, [first])
        os.kill(spare, signal.SIGKILL)
        while not gone(spare):  # the zygote reaps it
            await trio.sleep(0.005)
        async with trio.open_nursery() as n:  # needs a second worker
            n.start_soon(ctx.run_sync, _jobs.sleep_pid, 0.5)
            await trio.sleep(0.1)
            second = await ctx.run_sync(_jobs.pid)
        assert second not in (first, spare)
        assert ctx._zygote.pid == zygote  # still the same zygote
        assert await spare_of(zygote, [first, second]) != spare
    assert gone(zygote)
