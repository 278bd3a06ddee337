"""The scheduling table: how close tpar's makespan comes to the ideal when
job durations change or vary, beside multiprocessing Pool.imap_unordered
with chunksize=1 (pool_baseline.py --unordered), which never queues a job
behind another.  Ideal: the larger of (total work / j) and the longest job.

The jobs are bfuncs.wait(seconds): a spin under 2 ms, a sleep above, so
the figure measures where the jobs ran, not how busy the CPUs were."""
import json
import math
import os
import random

from cases_cli import check_output, measure, out_file, tpar_stream
from common import BENCH_DIR, PYTHON, bench_build_dir, run_timed
from model import Case

NCPU = os.cpu_count()

SIZES = {
    "smoke": dict(steps=(100, 4, 0.05), mix=(200, 0.05, 0.02),
                  lognormal=(60, 0.002, 1.2, 0.3), timeout=60),
    "quick": dict(steps=(1000, 20, 0.2), mix=(2000, 0.05, 0.05),
                  lognormal=(400, 0.005, 1.5, 1.5), timeout=120),
    "full": dict(steps=(1000, 20, 0.2), mix=(2000, 0.05, 0.05),
                 lognormal=(400, 0.005, 1.5, 1.5), timeout=300),
}


def write_jobs(name, durations):
    d = bench_build_dir() / "data"
    d.mkdir(exist_ok=True)
    path = d / f"sched_{name}.jsonl"
    with open(path, "w") as f:
        for i, s in enumerate(durations):
            f.write(json.dumps({"id": i, "fn": "bfuncs:wait", "args": [s]}))
            f.write("\n")
    return path


def rows(sz):
    """(key, title, durations, j) for each row of the table."""
    out = []
    n, k, long = sz["steps"]
    steps = [0.0] * n + [long] * k
    for j in sorted({2, 4} if NCPU >= 4 else {2}):
        out.append((f"sched.steps_j{j}", f"{n:,} instant jobs, then {k} × "
                    f"{long:g} s, -j{j}", steps, j))
    n, p, long = sz["mix"]
    rng = random.Random(13)
    mix = [long if rng.random() < p else 1e-6 for _ in range(n)]
    out.append(("sched.mix", f"{n:,} jobs: 1 µs, or {long * 1e3:g} ms with "
                f"p={p:g}, -j2", mix, 2))
    n, median, sigma, cap = sz["lognormal"]
    rng = random.Random(17)
    logn = [min(cap, rng.lognormvariate(math.log(median), sigma))
            for _ in range(n)]
    out.append(("sched.lognormal", f"{n:,} lognormal jobs (median "
                f"{median * 1e3:g} ms, σ={sigma:g}, capped at {cap:g} s), -j2",
                logn, 2))
    return out


def time_tpar(path, n, j, timeout):
    out = out_file()
    with open(out, "wb") as f:
        dt, _ = run_timed([str(tpar_stream()), f"-j{j}", str(path)],
                          stdout=f, cwd=str(BENCH_DIR), timeout=timeout)
    check_output(out, n, "tpar")
    return dt


def time_pool(path, n, j, timeout):
    out = out_file()
    argv = [PYTHON, str(BENCH_DIR / "pool_baseline.py"), "-j", str(j),
            "--chunksize", "1", "--unordered", str(path)]
    with open(out, "wb") as f:
        dt, _ = run_timed(argv, stdout=f, cwd=str(BENCH_DIR), timeout=timeout)
    check_output(out, n, "pool_baseline.py")
    return dt


def run(mode, reps, log):
    sz = SIZES[mode]
    cases = []
    for key, title, durations, j in rows(sz):
        pool = f"Pool.imap_unordered(chunksize=1) -j{j}"
        tpar = f"tpar -j{j}"
        ideal = max(sum(durations) / j, max(durations))
        c = Case("sched", key, title, "s", baseline="ideal",
                 note=f"ideal {ideal:.3f} s = max(total work / j, longest "
                 "job); makespan from start to exit, worker start-up "
                 "included for both")
        c.subject(tpar)
        c.subject(pool)
        c.subject("ideal")
        c.ratio_to[tpar] = "ideal"
        c.ratio_to[pool] = "ideal"
        path = write_jobs(key.split(".")[1], durations)
        n = len(durations)
        for rep in range(reps):
            log(f"sched {key} rep {rep + 1}/{reps}")
            measure(c, tpar, lambda: time_tpar(path, n, j, sz["timeout"]))
            measure(c, pool, lambda: time_pool(path, n, j, sz["timeout"]))
            c.add("ideal", ideal)
        c.extra[tpar] = {"vs_pool": pool}
        cases.append(c)
    return cases
