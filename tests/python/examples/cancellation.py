"""A runaway call is cancelled by killing its worker; the next call gets a
fresh one."""
import os
import time

import trio

import tpar as trio_parallel

TIMEOUT = float(os.environ.get("EXAMPLE_SECONDS", 0.5))


def forever():
    while True:
        time.sleep(0.01)


async def amain():
    t0 = trio.current_time()
    with trio.move_on_after(TIMEOUT) as scope:
        await trio_parallel.run_sync(forever, kill_on_cancel=True)
    print(f"cancelled: {scope.cancelled_caught} after {trio.current_time() - t0:.2f} s")
    print("next call:", await trio_parallel.run_sync(sum, [1, 2, 3]))


if __name__ == "__main__":
    trio.run(amain)
