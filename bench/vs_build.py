"""Start-up and hot-path figures of two tpar builds, interleaved in one run
(this machine is noisy: only a peer measured beside is a comparison).

    python bench/vs_build.py [--reps N] [--python PY] BUILD_A BUILD_B [...]

A BUILD may end in `+VAR=VALUE` (repeatable) to run that build with VAR
set: `build+TPAR_LIBPYTHON=` measures the workers run inside the
interpreter's executable rather than embedding its libpython.

Per build and repetition:
  run_ms      `tpar run operator:add` wall time (a worker's start-up and one job)
  cli_jobs_s  20,000 tiny operator:add jobs through `tpar -j2` (jobs/s)
  cli_cpu_ms_per_1k  the CPU time (tpar + workers) of that, per 1,000 jobs
  warm_us     the Trio package's warm run_sync latency (bench/trio_case.py)
  cold_ms     the package's first call (a worker's start)
  idle_rss_mb an idle SPAWN worker's RSS
PY (default: the base interpreter of this one, not a venv) is given to a
build that takes --python/TPAR_PYTHON, so that both builds' workers run the
same interpreter and environment.  Prints medians, one line per build, and
a JSON object with every sample.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def split_spec(spec):
    """BUILD[+VAR=VALUE...] -> (BUILD, {VAR: VALUE})."""
    parts = spec.split("+")
    return parts[0], dict(p.split("=", 1) for p in parts[1:])


def run_ms(tpar, env, k=5):
    xs = []
    for _ in range(k):
        t0 = time.perf_counter()
        subprocess.run([tpar, "run", "operator:add", "--args", "[1, 2]"], env=env,
                       stdout=subprocess.DEVNULL, check=True)
        xs.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(xs)


def cli_jobs_s(tpar, env, path, n):
    """Jobs per second, and CPU seconds (tpar and its workers, user+sys) per
    1,000 jobs: the CPU figure bends less under a loaded machine."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(os.devnull, "wb") as out:
        subprocess.run([tpar, "-j2", path], env=env, stdout=out, check=True)
    dt = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return n / dt, cpu * 1e3 / (n / 1000)


def package(build, env, py):
    sz = dict(warm_n=2000, tput_n=100, single_n=3, single_spawn_n=3, big_mb=1, big_reps=1,
              loops_s=0.1, timeout=120)
    e = dict(env, TPAR_BUILD_DIR=build)
    cp = subprocess.run([py, str(HERE / "trio_case.py"), "tpar", "SPAWN", "warm,idle_rss",
                         json.dumps(sz)], env=e, capture_output=True, cwd=str(HERE),
                        timeout=300)
    out = json.loads(cp.stdout.decode().strip().splitlines()[-1])
    return {"warm_us": out["warm"] * 1e6, "cold_ms": out["cold"] * 1e3,
            "idle_rss_mb": out["idle_rss"] / 1e6}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--python", default=getattr(sys, "_base_executable", sys.executable))
    ap.add_argument("builds", nargs="+")
    a = ap.parse_args()
    n = 20000
    path = os.path.join(tempfile.mkdtemp(), "add.jsonl")
    with open(path, "w") as f:
        for i in range(n):
            f.write('{"fn":"operator:add","args":[%d,1]}\n' % i)
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "TPAR_PYTHON", "TPAR_WORKER", "TPAR_LIBPYTHON",
                        "PYTHONPATH")}
    env["TPAR_PYTHON"] = a.python  # ignored by a build that has no such thing
    samples = {b: {} for b in a.builds}
    for rep in range(a.reps):
        for spec in (a.builds if rep % 2 == 0 else a.builds[::-1]):
            b, extra = split_spec(spec)
            e = dict(env, **extra)
            tpar = os.path.join(b, "cmd", "tpar")
            s = samples[spec]
            s.setdefault("run_ms", []).append(run_ms(tpar, e))
            rate, cpu = cli_jobs_s(tpar, e, path, n)
            s.setdefault("cli_jobs_s", []).append(rate)
            s.setdefault("cli_cpu_ms_per_1k", []).append(cpu)
            for k, v in package(b, e, a.python).items():
                s.setdefault(k, []).append(v)
        print(f"rep {rep + 1}/{a.reps} done", file=sys.stderr)
    keys = ["run_ms", "cli_jobs_s", "cli_cpu_ms_per_1k", "warm_us", "cold_ms", "idle_rss_mb"]
    print("median [min-max]")
    for b in a.builds:
        print(b)
        for k in keys:
            xs = samples[b][k]
            print(f"  {k:12s} {statistics.median(xs):10.2f}  [{min(xs):.2f}-{max(xs):.2f}]")
    print(json.dumps(samples))


if __name__ == "__main__":
    main()
