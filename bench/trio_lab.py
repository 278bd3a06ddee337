"""A lab for the throughput case (issue 17): variants of a call's path,
measured against Trio's floor in one process, interleaved repetition by
repetition, so that a noisy moment hits them all.  A developer's tool, not
a row of the report: the figure that counts is scripts/bench's.

    python3 bench/trio_lab.py [--n N] [--reps R] [--pin] [VARIANT ...]

Variants (default: all):
  floor    Trio alone: the limiter, then one yield (bench/trio_floor.py's)
  tpar     run_sync(bool) through a worker context, as users call it
  minimal  the least a call can do with the same worker (tpar internals:
           take a worker, pickle the job into its frame, yield and poll
           until the answer, give the worker back, unpickle): what the
           package's own bookkeeping is measured against

--pin puts this process on the first CPU it may use and the workers on
the others.  It is not what users get (the kernel places them), but it
takes the largest noise out: where the kernel puts a spinning worker on
the parent's CPU, a run loses ~15% (docs/design.md, "Throughput of tiny
calls").  Prints each variant's median calls/s and the median, over
repetitions, of its ratio to the floor of the same repetition.  Run it with
the package on sys.path (TPAR_BUILD_DIR=build puts build/python there).
"""
import argparse
import functools
import os
import pickle
import statistics
import sys
import time

if os.environ.get("TPAR_BUILD_DIR"):
    sys.path.insert(0, os.path.join(os.environ["TPAR_BUILD_DIR"], "python"))

import trio  # noqa: E402
from trio.lowlevel import cancel_shielded_checkpoint, current_task  # noqa: E402

import tpar  # noqa: E402
from tpar import _core  # noqa: E402
from trio_floor import holder  # noqa: E402  (beside this file)


def variant(name, ctx):
    """The task function of one variant: one call, holding `limiter`."""
    if name == "floor":
        one = functools.partial(holder, yields=1)  # the bench's floor, as it is
    elif name == "tpar":
        async def one(limiter):
            await ctx.run_sync(bool, limiter=limiter)
    elif name == "minimal":
        cache, dump, loads, job = ctx._cache, pickle.dump, pickle.loads, _core.FRAME_JOB_PICKLE

        async def one(limiter):
            task = current_task()
            await limiter.acquire_on_behalf_of(task)
            try:
                w = cache.acquire()
                w.send_pickled(job, dump, (bool, (), {}))
                while True:
                    await cancel_shielded_checkpoint()
                    res = w.recv(0.0)
                    if res is not None:
                        break
                cache.release(w, True)
                return loads(res[2])
            finally:
                limiter.release_on_behalf_of(task)
    else:
        raise SystemExit(f"trio_lab: no variant {name!r} (floor, tpar, minimal)")
    return one


async def rate(one, n):
    limiter = trio.CapacityLimiter(os.cpu_count() or 1)  # the default limiter's tokens
    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(one, limiter)
    return n / (time.perf_counter() - t0)


async def main(args):
    names = ["floor"] + [v for v in args.variants if v != "floor"]
    async with tpar.open_worker_context() as ctx:
        tokens = os.cpu_count() or 1
        limiter = trio.CapacityLimiter(tokens)
        async with trio.open_nursery() as nursery:  # as many warm workers as tokens
            for _ in range(4 * tokens):
                nursery.start_soon(lambda: ctx.run_sync(bool, limiter=limiter))
        if args.pin:
            cpus = sorted(os.sched_getaffinity(0))
            if len(cpus) < 2:
                raise SystemExit("trio_lab: --pin needs two CPUs")
            for w, _ in ctx._cache.idle:
                os.sched_setaffinity(w.pid, cpus[1:])
            os.sched_setaffinity(0, cpus[:1])
        ones = {name: variant(name, ctx) for name in names}
        runs = {name: [] for name in names}
        for rep in range(args.reps):
            order = names if rep % 2 else names[::-1]
            for name in order:
                runs[name].append(await rate(ones[name], args.n))
    for name in names:
        ratio = statistics.median(a / f for a, f in zip(runs[name], runs["floor"]))
        print(f"{name:8s} {statistics.median(runs[name]):8.0f} calls/s   "
              f"ratio to the floor {ratio:.3f}   ({args.reps} reps of {args.n})")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=5000, help="calls per repetition (default 5000)")
    p.add_argument("--reps", type=int, default=16, help="repetitions (default 16)")
    p.add_argument("--pin", action="store_true", help="this process and the workers on separate CPUs")
    p.add_argument("variants", nargs="*", default=["floor", "tpar", "minimal"])
    trio.run(main, p.parse_args())
