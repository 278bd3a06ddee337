"""The Trio package's remote workers beside local ones, in one run:
warm latency (a tiny call, median of N) and a 10 MB bytes round trip
(median of R; MB/s counts the payload once each way), for a local SPAWN
context, a remote worker over loopback TCP (open_remote_context, `tpar-worker --connect` on
this machine) and, with --srun, one started by srun.

    TPAR_BUILD_DIR=build python3 bench/remote_trio.py [--n 500] [--reps 7] [--srun]

Not part of the pass/fail tests (timings are noisy here)."""
import argparse
import os
import statistics
import sys
import time

BUILD = os.path.abspath(os.environ.get("TPAR_BUILD_DIR", "build"))
sys.path.insert(0, os.path.join(BUILD, "python"))
os.environ.setdefault("TPAR_WORKER", os.path.join(BUILD, "pyworker", "tpar-worker"))
os.environ["PYTHONPATH"] = os.pathsep.join(
    [os.path.join(BUILD, "python")] + [p for p in [os.environ.get("PYTHONPATH")] if p])

import trio  # noqa: E402

import tpar  # noqa: E402

WORKER = os.environ["TPAR_WORKER"]
MB = 10 * 1000 * 1000


async def measure(ctx, n, reps):
    for _ in range(20):  # warm: the worker is up, the code paths hot
        await ctx.run_sync(int)
    lat = []
    for _ in range(n):
        t = time.perf_counter()
        await ctx.run_sync(int)
        lat.append(time.perf_counter() - t)
    data = os.urandom(MB)
    assert await ctx.run_sync(bytes, data) == data
    big = []
    for _ in range(reps):
        t = time.perf_counter()
        await ctx.run_sync(bytes, data)
        big.append(time.perf_counter() - t)
    return statistics.median(lat), statistics.median(big)


async def main(args):
    local = tpar.open_worker_context
    remote = tpar.open_remote_context
    subjects = [("local SPAWN (pipes + lanes)", local, {}),
                ("remote, loopback TCP", remote, dict(launcher="{worker}",
                                                      listen="127.0.0.1:0"))]
    if args.srun:
        subjects.append(("remote, srun (loopback)", remote,
                         dict(launcher="srun --ntasks=1 --quiet {worker}")))
    rows = {name: ([], []) for name, _, _ in subjects}
    for _ in range(args.rounds):  # interleaved: a noisy moment hits all
        for name, opener, kw in subjects:
            async with opener(**kw) as ctx:
                lat, big = await measure(ctx, args.n, args.reps)
            rows[name][0].append(lat)
            rows[name][1].append(big)
    print(f"{'subject':32} {'warm latency':>14} {'10 MB round trip':>18} {'MB/s':>8}")
    for name, (lat, big) in rows.items():
        lat, big = statistics.median(lat), statistics.median(big)
        print(f"{name:32} {lat * 1e6:11.1f} us {big * 1e3:15.1f} ms {2 * MB / big / 1e6:8.0f}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--srun", action="store_true")
    trio.run(main, ap.parse_args())
