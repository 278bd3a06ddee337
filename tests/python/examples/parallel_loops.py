"""Several CPU-bound loops at once, one per worker: each gets about the
same number of iterations done in the same time, unlike threads under the
GIL."""
import os
import time

import trio

import tpar as trio_parallel

SECONDS = float(os.environ.get("EXAMPLE_SECONDS", 1.0))


def loop_for(seconds):
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        n += 1
    return n


async def amain():
    jobs = os.cpu_count() or 1
    counts = [0] * jobs

    async def one(i):
        counts[i] = await trio_parallel.run_sync(loop_for, SECONDS)

    async with trio.open_nursery() as nursery:
        for i in range(jobs):
            nursery.start_soon(one, i)
    for i, n in enumerate(counts):
        print(f"process {i}: {n} loops")


if __name__ == "__main__":
    trio.run(amain)
