"""Quick figures for the Trio package (not a test; the real harness is
scripts/bench): warm latency of run_sync(bool), mean over N sequential
calls, and the throughput of M concurrent tiny calls; median of 3 runs.

    python3 tests/python/bench_latency.py [tpar|trio_parallel|floor] [N] [M]

`floor`: the same M tasks taking a trio.CapacityLimiter(cpu_count) and
yielding once while holding it, with no worker at all: Trio's own cost,
an upper bound for any implementation of the throughput case.

With TPAR_BUILD_DIR set, the tpar of that build dir is measured.
"""
import importlib
import os
import statistics
import sys
import time

import trio


def floor(m):
    from trio.lowlevel import cancel_shielded_checkpoint, current_task

    async def one(lim):
        task = current_task()
        await lim.acquire_on_behalf_of(task)
        try:
            await cancel_shielded_checkpoint()
        finally:
            lim.release_on_behalf_of(task)

    async def run():
        lim = trio.CapacityLimiter(os.cpu_count() or 1)
        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(m):
                nursery.start_soon(one, lim)
        return m / (time.perf_counter() - t0)

    r = [trio.run(run) for _ in range(3)]
    print(f"trio floor: {statistics.median(r):.0f} calls/s (runs {', '.join(f'{x:.0f}' for x in r)})")


def main():
    # e.g. the bench harness's build-bench/deps, appended so its packages
    # never shadow the installed trio
    build = os.environ.get("TPAR_BUILD_DIR")
    if build:
        sys.path.insert(0, os.path.join(os.path.abspath(build), "python"))
        os.environ.setdefault("TPAR_WORKER", os.path.join(os.path.abspath(build), "pyworker", "tpar-worker"))
    for extra in filter(None, os.environ.get("BENCH_APPEND_PATH", "").split(os.pathsep)):
        sys.path.append(os.path.abspath(extra))
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    m = int(sys.argv[3]) if len(sys.argv) > 3 else 20000
    if len(sys.argv) > 1 and sys.argv[1] == "floor":
        return floor(m)
    mod = importlib.import_module(sys.argv[1] if len(sys.argv) > 1 else "tpar")

    async def latency():
        for _ in range(200):  # warm: workers started, caches hot
            await mod.run_sync(bool)
        t0 = time.perf_counter()
        for _ in range(n):
            await mod.run_sync(bool)
        return (time.perf_counter() - t0) / n

    async def throughput():
        async with trio.open_nursery() as nursery:  # warm every worker
            for _ in range(8):
                nursery.start_soon(mod.run_sync, bool)
        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(m):
                nursery.start_soon(mod.run_sync, bool)
        return m / (time.perf_counter() - t0)

    lat = [trio.run(latency) for _ in range(3)]
    thr = [trio.run(throughput) for _ in range(3)]
    print(f"{mod.__name__}: warm latency {statistics.median(lat) * 1e6:.1f} us "
          f"(runs {', '.join(f'{x * 1e6:.1f}' for x in lat)}); "
          f"throughput {statistics.median(thr):.0f} calls/s "
          f"(runs {', '.join(f'{x:.0f}' for x in thr)})")


if __name__ == "__main__":
    main()
