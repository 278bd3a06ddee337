"""tpar's benchmark harness; run it as scripts/bench (see --help)."""
import argparse
import os
import datetime
import subprocess
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cases_cli  # noqa: E402
import cases_ref  # noqa: E402
import cases_remote  # noqa: E402
import cases_sched  # noqa: E402
import cases_trio  # noqa: E402
import report  # noqa: E402
from common import (BENCH_DIR, PYTHON, build_dir, deps_dir, git_commit,  # noqa
                    machine_info)

GROUPS = {"reference": cases_ref, "cli": cases_cli, "trio": cases_trio,
          "sched": cases_sched, "remote": cases_remote}
REPS = {"smoke": 1, "quick": 2, "full": 3}


def parse_args():
    ap = argparse.ArgumentParser(
        prog="scripts/bench",
        description="Measure tpar against its peers (trio-parallel, "
        "ProcessPoolExecutor, anyio, GNU parallel, xargs, a Pool script) "
        "in one run; write report.json, report.md and PNG plots.")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--smoke", action="store_const", dest="mode",
                      const="smoke", help="seconds: tiny sizes, checks that "
                      "the harness works (scripts/test runs it)")
    mode.add_argument("--quick", action="store_const", dest="mode",
                      const="quick", help="under 2 minutes, for development")
    ap.add_argument("--reps", type=int, help="repetitions per figure")
    ap.add_argument("--only", default="reference,cli,trio,sched,remote",
                    help="comma-separated groups (reference, cli, trio, "
                    "sched, remote)")
    ap.add_argument("--out", type=Path, help="output dir (default: "
                    "bench/results for the full run, whose report is "
                    "committed; bench/results/tmp/MODE for --smoke/--quick)")
    ap.add_argument("--no-install", action="store_true",
                    help="never pip-install trio-parallel for the run")
    ap.add_argument("--no-build", action="store_true",
                    help="do not (re)build $TPAR_BUILD_DIR first (--smoke "
                    "never builds: scripts/test has just built it)")
    a = ap.parse_args()
    a.mode = a.mode or "full"
    if a.out is None:
        a.out = BENCH_DIR / "results" / ("" if a.mode == "full"
                                         else f"tmp/{a.mode}")
    return a


def ensure_built(log):
    """meson setup (when missing) and ninja in $TPAR_BUILD_DIR, so one
    command measures the current tree.  A failed build is logged; the cases
    that need it are then skipped with the reason."""
    d = build_dir()
    steps = []
    if not (d / "build.ninja").exists():
        steps.append([PYTHON, "-m", "mesonbuild.mesonmain", "setup", str(d),
                      str(BENCH_DIR.parent)])
    steps.append(["ninja", "-C", str(d)])
    for argv in steps:
        log("build: " + " ".join(argv[-3:]))
        cp = subprocess.run(argv, capture_output=True)
        if cp.returncode != 0:
            tail = cp.stdout.decode(errors="replace").strip().splitlines()
            log("build failed: " + " | ".join(tail[-5:]))
            return


def ensure_trio_parallel(install, log):
    """trio-parallel 1.3 for the benchmark only, in the bench build dir
    (added last on sys.path of the cases that use it)."""
    d = deps_dir()
    if (d / "trio_parallel").is_dir():
        return None
    if not install:
        return "trio-parallel not installed (smoke runs never install it)"
    log(f"installing trio-parallel 1.3 into {d}")
    cp = subprocess.run([PYTHON, "-m", "pip", "install", "-q",
                         "--disable-pip-version-check", "--target", str(d),
                         "trio-parallel==1.3.*"], capture_output=True)
    if cp.returncode != 0:
        err = cp.stderr.decode(errors="replace").strip().splitlines()
        return "pip install trio-parallel failed: " + (err[-1] if err else "?")
    return None


def main():
    a = parse_args()
    t_start = time.time()
    load_start = os.getloadavg()

    def log(msg):
        print(f"[bench {time.time() - t_start:6.1f}s] {msg}", file=sys.stderr,
              flush=True)

    reps = a.reps or REPS[a.mode]
    log(f"mode {a.mode}, {reps} repetitions, tpar from {build_dir()}")
    if a.mode != "smoke" and not a.no_build:
        ensure_built(log)
    why = ensure_trio_parallel(a.mode != "smoke" and not a.no_install, log)
    if why:
        log(why)
    cases = []
    for name in a.only.split(","):
        mod = GROUPS[name.strip()]
        try:
            cases += mod.run(a.mode, reps, log)
        except Exception:  # a broken group is reported, the rest still runs
            log(f"group {name} failed:\n{traceback.format_exc()}")
            raise
    doc = {
        "mode": a.mode,
        "mode_flag": {"smoke": " --smoke", "quick": " --quick",
                      "full": ""}[a.mode],
        "date": datetime.datetime.now(datetime.timezone.utc)
        .strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git_commit(),
        "repetitions": reps,
        "tpar_build_dir": str(build_dir()),
        "versions": versions(),
        "machine": dict(machine_info(), loadavg_at_start=load_start),
        "cases": [c.to_json() for c in cases],
        "duration_s": time.time() - t_start,
        "loadavg_at_end": os.getloadavg(),
    }
    if why:
        doc["trio_parallel_missing"] = why
    doc["targets"] = report.evaluate_targets(
        doc["cases"], doc["machine"]["nproc"], a.mode)
    report.write(doc, a.out)
    met = sum(1 for t in doc["targets"] if t["met"])
    log(f"wrote {a.out}/report.json, report.md, {', '.join(doc['plots'])}; "
        f"targets met: {met}/{len(doc['targets'])}")
    bad = harness_errors(doc)
    for b in bad:
        log("harness error: " + b)
    return 1 if bad and a.mode == "smoke" else 0


# A subject may be missing here (not built, not installed, not applicable);
# any other failure of a peer is the harness's own bug.
EXPECTED = ("not installed", "not built", "not importable", "has no ",
            "incompatible", "only a peer", "no retire option",
            "not working yet", "not measured")


def harness_errors(doc):
    bad = []
    for c in doc["cases"]:
        for r in c["results"]:
            why = r.get("skipped") or "; ".join(r.get("failed_reps", []))
            if r["subject"].startswith("tpar") or not why:
                continue
            if not any(e in why for e in EXPECTED):
                bad.append(f"{c['key']} / {r['subject']}: {why}")
    return bad


def versions():
    from importlib.metadata import version, PackageNotFoundError
    out = {"trio-parallel": trio_parallel_version()}
    for name in ("trio", "anyio", "cloudpickle"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def trio_parallel_version():
    d = deps_dir()
    for p in d.glob("trio_parallel-*.dist-info"):
        return p.name[len("trio_parallel-"):-len(".dist-info")]
    return None


if __name__ == "__main__":
    sys.exit(main())
