"""One repetition of the Trio-package cases for one implementation, in a
fresh process (so the first call is really cold).  Started by the harness:

    trio_case.py IMPL TYPE CASES SIZES_JSON

IMPL: tpar | trio_parallel | ppe (concurrent.futures.ProcessPoolExecutor)
      | anyio (anyio.to_process) | to_thread (trio.to_thread, loops only)
TYPE: SPAWN | FORKSERVER | FORK | - ;  CASES: comma-separated names.
Prints one JSON object: case -> value, or case -> {"skip": reason}.
Values: seconds, except rss/uss (bytes) and loops ({"rates", "balance"}).
"""
import json
import os
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # bfuncs, importable by name in every worker

import bfuncs  # noqa: E402

NCPU = os.cpu_count()


class Skip(Exception):
    pass


def import_impl(impl):
    if impl == "tpar":
        sys.path.insert(0, str(Path(os.environ.get(
            "TPAR_BUILD_DIR", "/work/main/build")) / "python"))
        try:
            import tpar
        except ImportError as e:
            raise Skip(f"tpar package not importable: {e}")
        return tpar
    if impl == "trio_parallel":
        deps = os.environ.get("TPAR_BENCH_DEPS")
        if deps:
            sys.path.append(deps)  # last: the deps' own trio never wins
        try:
            import trio_parallel
        except ImportError as e:
            raise Skip(f"trio-parallel not installed: {e}")
        return trio_parallel
    return None


def worker_type(mod, name):
    wt = getattr(mod, "WorkerType", None)
    if wt is None or not hasattr(wt, name):
        raise Skip(f"{mod.__name__}.WorkerType has no {name}")
    return getattr(wt, name)


def rss_of(pid):
    import psutil
    p = psutil.Process(pid)
    try:
        full = p.memory_full_info()
        return full.rss, full.uss
    except psutil.AccessDenied:
        return p.memory_info().rss, None


# ---------------------------------------------------------------- trio side

async def trio_cases(mod, wtype, cases, sz, out):
    import trio
    wt = worker_type(mod, wtype)
    t0 = time.perf_counter()
    async with mod.open_worker_context(worker_type=wt) as ctx:
        await ctx.run_sync(bool)
        out["cold"] = time.perf_counter() - t0
        await trio_warm_cases(trio, ctx.run_sync, cases, sz, out)
    if "single_use" in cases:
        async with mod.open_worker_context(
                worker_type=wt, retire=bfuncs.always_true) as ctx:
            n = sz["single_n"]
            t0 = time.perf_counter()
            for _ in range(n):
                await ctx.run_sync(bool)
            out["single_use"] = (time.perf_counter() - t0) / n


async def trio_warm_cases(trio, run_sync, cases, sz, out):
    if "warm" in cases:
        for _ in range(min(50, sz["warm_n"])):
            await run_sync(bool)
        n = sz["warm_n"]
        t0 = time.perf_counter()
        for _ in range(n):
            await run_sync(bool)
        out["warm"] = (time.perf_counter() - t0) / n
    if "warm_busy" in cases:
        out["warm_busy"], out["warm_busy_first"] = await warm_beside_hogs(
            run_sync, sz["warm_n"])
    if "idle_rss" in cases:
        pid = await run_sync(os.getpid)
        await trio.sleep(0.2)
        out["idle_rss"], out["idle_uss"] = rss_of(pid)
    if "throughput" in cases:
        n = sz["tput_n"]

        async def one():
            await run_sync(bool)
        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(n):
                nursery.start_soon(one)
        out["throughput"] = n / (time.perf_counter() - t0)
    if "bigdata" in cases:
        payload = b"x" * (sz["big_mb"] * 1_000_000)
        times = []
        for _ in range(sz["big_reps"]):
            t0 = time.perf_counter()
            back = await run_sync(bytes, payload)
            times.append(time.perf_counter() - t0)
            if len(back) != len(payload):
                raise RuntimeError("100 MB round trip lost bytes")
            del back
        out["bigdata"] = min(times) * 100 / sz["big_mb"]
    if "loops" in cases:
        out["loops"] = await trio_loops(trio, run_sync, sz["loops_s"])


HOGS = 2  # CPU-bound processes beside the warm calls
FIRST = 20  # warm_busy_first: the calls right after the hogs start


async def warm_beside_hogs(run_sync, n):
    """Mean latency of n sequential run_sync(bool) calls to a warm worker
    while HOGS CPU-bound processes run beside, from the first call after
    they start (a spin that adapts is measured while it adapts), and the
    mean of the first FIRST of them alone (before anything adapts)."""
    import subprocess
    await run_sync(bool)  # the worker is there
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range(HOGS)]
    try:
        time.sleep(0.2)  # they run
        t0 = time.perf_counter()
        for _ in range(FIRST):
            await run_sync(bool)
        first = (time.perf_counter() - t0) / FIRST
        for _ in range(n - FIRST):
            await run_sync(bool)
        return (time.perf_counter() - t0) / max(n, FIRST), first
    finally:
        for h in hogs:
            h.kill()
            h.wait()


async def trio_loops(trio, run_sync, seconds):
    counts = []

    async def one():
        counts.append(await run_sync(bfuncs.loop, seconds))
    async with trio.open_nursery() as nursery:
        for _ in range(NCPU):
            nursery.start_soon(one)
    rates = [c / seconds for c in counts]
    return {"rates": rates, "balance": min(rates) / max(rates)}


async def anyio_cases(cases, sz, out):
    import trio
    import anyio.to_process
    t0 = time.perf_counter()
    await anyio.to_process.run_sync(bool)
    out["cold"] = time.perf_counter() - t0
    await trio_warm_cases(trio, anyio.to_process.run_sync, cases, sz, out)
    if "single_use" in cases:
        out["single_use"] = {"skip": "anyio.to_process has no retire option"}


async def to_thread_cases(cases, sz, out):
    import trio
    if "loops" in cases:  # threads are only the peer of parallel_loops
        out["loops"] = await trio_loops(trio, trio.to_thread.run_sync,
                                        sz["loops_s"])


# ----------------------------------------------------------- ProcessPoolExecutor

def ppe_cases(wtype, cases, sz, out):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, wait
    mpctx = multiprocessing.get_context(wtype.lower())
    t0 = time.perf_counter()
    with ProcessPoolExecutor(NCPU, mp_context=mpctx) as ex:
        ex.submit(bool).result()
        out["cold"] = time.perf_counter() - t0
        if "warm" in cases:
            for _ in range(min(50, sz["warm_n"])):
                ex.submit(bool).result()
            n = sz["warm_n"]
            t0 = time.perf_counter()
            for _ in range(n):
                ex.submit(bool).result()
            out["warm"] = (time.perf_counter() - t0) / n
        if "warm_busy" in cases:
            out["warm_busy"] = out["warm_busy_first"] = {
                "skip": "not measured for ProcessPoolExecutor (a Trio-package row)"}
        if "idle_rss" in cases:
            pid = ex.submit(os.getpid).result()
            time.sleep(0.2)
            out["idle_rss"], out["idle_uss"] = rss_of(pid)
        if "throughput" in cases:
            n = sz["tput_n"]
            t0 = time.perf_counter()
            wait([ex.submit(bool) for _ in range(n)])
            out["throughput"] = n / (time.perf_counter() - t0)
        if "bigdata" in cases:
            payload = b"x" * (sz["big_mb"] * 1_000_000)
            times = []
            for _ in range(sz["big_reps"]):
                t0 = time.perf_counter()
                back = ex.submit(bytes, payload).result()
                times.append(time.perf_counter() - t0)
                assert len(back) == len(payload)
                del back
            out["bigdata"] = min(times) * 100 / sz["big_mb"]
        if "loops" in cases:
            s = sz["loops_s"]
            counts = [f.result() for f in
                      [ex.submit(bfuncs.loop, s) for _ in range(NCPU)]]
            rates = [c / s for c in counts]
            out["loops"] = {"rates": rates,
                            "balance": min(rates) / max(rates)}
    if "single_use" in cases:
        if wtype == "FORK":
            out["single_use"] = {
                "skip": "max_tasks_per_child is incompatible with fork"}
            return
        with ProcessPoolExecutor(NCPU, mp_context=mpctx,
                                 max_tasks_per_child=1) as ex:
            n = sz["single_n"]
            t0 = time.perf_counter()
            for _ in range(n):
                ex.submit(bool).result()
            out["single_use"] = (time.perf_counter() - t0) / n


# ---------------------------------------------------------------------- main

def main():
    impl, wtype, cases, sz = sys.argv[1], sys.argv[2], \
        sys.argv[3].split(","), json.loads(sys.argv[4])
    out = {}
    try:
        if impl in ("tpar", "trio_parallel"):
            import trio
            mod = import_impl(impl)
            trio.run(trio_cases, mod, wtype, cases, sz, out)
        elif impl == "anyio":
            import trio
            trio.run(anyio_cases, cases, sz, out)
        elif impl == "to_thread":
            import trio
            trio.run(to_thread_cases, cases, sz, out)
        elif impl == "ppe":
            ppe_cases(wtype, cases, sz, out)
        else:
            raise Skip(f"unknown implementation {impl}")
    except Skip as e:
        out = {c: {"skip": str(e)} for c in cases + ["cold", "idle_uss"]}
    except BaseException as e:  # report, never crash the harness
        tb = traceback.format_exc().strip().splitlines()
        msg = f"{type(e).__name__}: {e}"[:300]
        print("\n".join(tb[-15:]), file=sys.stderr)
        for c in cases + ["cold", "idle_uss"]:
            out.setdefault(c, {"skip": f"failed: {msg}"})
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
