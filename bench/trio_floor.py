"""Trio's own cost in the throughput case, with no worker at all: N tasks
started at once, each taking the default limiter's CapacityLimiter
(os.cpu_count() tokens) and yielding once while holding it ("one yield"),
or not at all ("no yield").  run_sync must do at least the first (it holds
the limiter while it waits for its worker), so this is a ceiling on any
implementation's calls per second here.  "one I/O wait": each task waits
once with trio.lowlevel.wait_readable on a pipe that is already readable
(one pipe per token), as a call that waits for its worker's answer must:
what one I/O wait costs in Trio, before any write, read or pickling.

    python3 bench/trio_floor.py N
      -> {"one yield": calls/s, "no yield": calls/s, "one I/O wait": calls/s}
"""
import json
import os
import sys
import time

import trio
from trio.lowlevel import cancel_shielded_checkpoint, current_task, wait_readable


async def holder(limiter, yields):
    task = current_task()
    await limiter.acquire_on_behalf_of(task)
    try:
        for _ in range(yields):
            await cancel_shielded_checkpoint()
    finally:
        limiter.release_on_behalf_of(task)


async def waiter(limiter, pipes):
    task = current_task()
    await limiter.acquire_on_behalf_of(task)
    try:
        fd = pipes.pop()
        try:
            await wait_readable(fd)
        finally:
            pipes.append(fd)
    finally:
        limiter.release_on_behalf_of(task)


async def rate(n, yields):
    limiter = trio.CapacityLimiter(os.cpu_count() or 1)
    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(holder, limiter, yields)
    return n / (time.perf_counter() - t0)


async def io_rate(n):
    tokens = os.cpu_count() or 1
    limiter = trio.CapacityLimiter(tokens)
    pipes, ends = [], []
    for _ in range(tokens):
        r, w = os.pipe()
        os.write(w, b"x")  # readable from the start, and it stays so
        pipes.append(r)
        ends += [r, w]
    try:
        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(n):
                nursery.start_soon(waiter, limiter, pipes)
        return n / (time.perf_counter() - t0)
    finally:
        for fd in ends:
            os.close(fd)


if __name__ == "__main__":
    n = int(sys.argv[1])
    print(json.dumps({"one yield": trio.run(rate, n, 1),
                      "no yield": trio.run(rate, n, 0),
                      "one I/O wait": trio.run(io_rate, n)}))
