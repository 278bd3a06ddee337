"""One Trio measurement for cases_remote.py, in a fresh process:

    python3 remote_case.py KIND MB N

KIND: local (a SPAWN context: lanes) or tcp (open_remote_context with a
tpar-worker --connect launched here, loopback TCP).  After a warm-up call,
times N round trips of run_sync(bytes, MB MB payload) and prints the rate
in MB/s (2 x MB per call) as the last line, JSON."""
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(os.environ.get("TPAR_BUILD_DIR", "/work/main/build")) / "python"))

import trio  # noqa: E402

import tpar  # noqa: E402


async def measure(ctx, mb, n):
    payload = b"x" * (mb * 1000 * 1000)
    assert await ctx.run_sync(bytes, payload) == payload  # warm: pages, worker
    t0 = time.perf_counter()
    for _ in range(n):
        await ctx.run_sync(bytes, payload)
    return n * 2 * mb / (time.perf_counter() - t0)


async def main(kind, mb, n):
    if kind == "local":
        async with tpar.open_worker_context() as ctx:
            return await measure(ctx, mb, n)
    async with tpar.open_remote_context("{worker}", workers=1) as ctx:
        return await measure(ctx, mb, n)


if __name__ == "__main__":
    kind, mb, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    print(json.dumps({"rate": trio.run(main, kind, mb, n)}))
