"""The event loop keeps ticking while a worker process does the hard work."""
import os
import time

import trio

import tpar as trio_parallel

SECONDS = float(os.environ.get("EXAMPLE_SECONDS", 1.0))


def busy_for(seconds):
    """Pure-Python spinning: holds a CPU (and, in a thread, the GIL)."""
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        n += 1
    return n


async def ticker(period, out):
    t0 = trio.current_time()
    while True:
        await trio.sleep(period)
        out.append(trio.current_time() - t0)
        print(f"tick {trio.current_time() - t0:.2f}")


async def amain():
    ticks = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker, SECONDS / 10, ticks)
        loops = await trio_parallel.run_sync(busy_for, SECONDS)
        nursery.cancel_scope.cancel()
    print(f"worker loops: {loops}")
    print(f"ticks while it ran: {len(ticks)}")


if __name__ == "__main__":
    trio.run(amain)
