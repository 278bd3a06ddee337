"""A/B: the hot-path rows of the bench for two builds, in one run.

    python3 bench/ab.py [--reps N] [--tiny N] [--warm N] [--big-mb N] A_BUILD B_BUILD

Rows: CLI tiny jobs/s (`tpar -jNCPU` over N operator:add lines), Trio warm
latency (run_sync(bool), SPAWN), 100 MB round trip (run_sync(bytes),
SPAWN; scaled to 100 MB).  The builds alternate within each repetition, so
a noisy moment hits both; medians are printed, with B/A.  For a change to
the hot path: A = /work/baseline/build (or main's), B = yours."""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import PYTHON  # noqa: E402


def tiny_file(n):
    d = Path(os.environ.get("TMPDIR", "/tmp")) / "tpar-ab"
    d.mkdir(exist_ok=True)
    p = d / f"add_{n}.jsonl"
    if not p.exists():
        with open(p, "w") as f:
            for i in range(n):
                f.write('{"id":%d,"fn":"operator:add","args":[%d,1]}\n' % (i, i))
    return p


def cli_tiny(build, path, n):
    t0 = time.perf_counter()
    cp = subprocess.run([str(Path(build) / "cmd" / "tpar"), f"-j{os.cpu_count()}", str(path)],
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=600)
    dt = time.perf_counter() - t0
    lines = cp.stdout.count(b"\n")
    if cp.returncode or lines != n:
        raise SystemExit(f"{build}: tpar exited {cp.returncode}, {lines} records for {n}")
    return n / dt


def trio_rows(build, warm_n, big_mb):
    sz = dict(warm_n=warm_n, big_mb=big_mb, big_reps=2, timeout=300)
    env = dict(os.environ, TPAR_BUILD_DIR=str(build))
    cp = subprocess.run([PYTHON, str(HERE / "trio_case.py"), "tpar", "SPAWN", "warm,bigdata",
                         json.dumps(sz)], capture_output=True, env=env, cwd=str(HERE),
                        timeout=600)
    try:
        out = json.loads(cp.stdout.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise SystemExit(f"{build}: trio_case failed: {cp.stderr.decode()[-500:]}")
    return out["warm"] * 1e6, out["bigdata"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--tiny", type=int, default=100_000)
    ap.add_argument("--warm", type=int, default=2000)
    ap.add_argument("--big-mb", type=int, default=100)
    a = ap.parse_args()
    path = tiny_file(a.tiny)
    rows = {b: {"tiny": [], "warm": [], "big": []} for b in (a.a, a.b)}
    for rep in range(a.reps):
        order = (a.a, a.b) if rep % 2 == 0 else (a.b, a.a)
        for b in order:
            rows[b]["tiny"].append(cli_tiny(b, path, a.tiny))
            w, big = trio_rows(b, a.warm, a.big_mb)
            rows[b]["warm"].append(w)
            rows[b]["big"].append(big)
        print(f"rep {rep + 1}/{a.reps}", file=sys.stderr)
    names = {"tiny": "CLI tiny jobs/s (higher is better)",
             "warm": "warm latency, us (lower is better)",
             "big": "100 MB round trip, s (lower is better)"}
    print(f"A = {a.a}\nB = {a.b}\n{a.reps} reps, medians (all values)")
    for k, title in names.items():
        ma, mb = statistics.median(rows[a.a][k]), statistics.median(rows[a.b][k])
        fmt = (lambda v: f"{v:,.0f}") if k == "tiny" else (lambda v: f"{v:.4g}")
        print(f"{title}: A {fmt(ma)}  B {fmt(mb)}  B/A {mb / ma:.3f}")
        print(f"    A {[fmt(v) for v in rows[a.a][k]]}\n    B {[fmt(v) for v in rows[a.b][k]]}")


if __name__ == "__main__":
    main()
