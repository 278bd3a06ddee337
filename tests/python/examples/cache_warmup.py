"""A cold call pays for starting a worker; warm calls reuse the cached
workers and cost far less.  Threads shown for comparison."""
import os
import time

import trio

import tpar as trio_parallel

ROUNDS = int(os.environ.get("EXAMPLE_ROUNDS", 5))


def timed(t0):
    return time.perf_counter() - t0


async def amain():
    for name, run_sync in (("process", trio_parallel.run_sync),
                           ("thread", trio.to_thread.run_sync)):
        for i in range(ROUNDS):
            t0 = time.perf_counter()
            await run_sync(bool)
            print(f"{name} call {i} ({'cold' if i == 0 else 'warm'}): {timed(t0) * 1e6:.0f} us")
    stats = trio_parallel.default_context_statistics()
    print(f"idle workers: {stats.idle_workers}")


if __name__ == "__main__":
    trio.run(amain)
