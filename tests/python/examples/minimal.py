"""Dispatch one CPU-bound function to a worker process and get its result."""
import os

import trio

import tpar as trio_parallel

LOOPS = int(os.environ.get("EXAMPLE_LOOPS", 10_000_000))


def hard_work(n, x):
    total = 0.0
    for _ in range(n):
        total += x
    return total


async def amain():
    t0 = trio.current_time()
    result = await trio_parallel.run_sync(hard_work, LOOPS, 3.14)
    print("result:", result)
    print(f"took {trio.current_time() - t0:.3f} s")


if __name__ == "__main__":
    trio.run(amain)
