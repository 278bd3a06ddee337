"""Trio's own cost in the throughput case, with no worker at all: N tasks
started at once, each taking the default limiter's CapacityLimiter
(os.cpu_count() tokens) and yielding once while holding it ("one yield"),
or not at all ("no yield").  run_sync must do at least the first (it holds
the limiter while it waits for its worker), so this is a ceiling on any
implementation's calls per second here.

    python3 bench/trio_floor.py N      -> {"one yield": calls/s, "no yield": calls/s}
"""
import json
import os
import sys
import time

import trio
from trio.lowlevel import cancel_shielded_checkpoint, current_task


async def holder(limiter, yields):
    task = current_task()
    await limiter.acquire_on_behalf_of(task)
    try:
        for _ in range(yields):
            await cancel_shielded_checkpoint()
    finally:
        limiter.release_on_behalf_of(task)


async def rate(n, yields):
    limiter = trio.CapacityLimiter(os.cpu_count() or 1)
    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(holder, limiter, yields)
    return n / (time.perf_counter() - t0)


if __name__ == "__main__":
    n = int(sys.argv[1])
    print(json.dumps({"one yield": trio.run(rate, n, 1),
                      "no yield": trio.run(rate, n, 0)}))
