#!/usr/bin/env python3
"""Out of memory at each allocation of tpar's own code in turn.

usage: oom.py TPAR_FAILALLOC TPAR_WORKER

tpar-failalloc is tpar with its malloc family wrapped (failalloc.c): run N
fails the N-th allocation.  For N = 1, 2, ... until a run makes fewer than
N allocations, each run must either absorb the failure (the same records
as a run without one) or follow the one policy (cmd/alloc.c): exit 255
saying "tpar: out of memory", having written only whole, valid records of
the run's jobs, each once; never crash, never hang, and leave no worker or
zygote behind.  Both worker types, with -k, a joblog, a bad line and an
error, so the record, reorder, retry and zygote paths are on the way."""
import json
import os
import subprocess
import sys
import tempfile
import time

EXE, WORKER = sys.argv[1], sys.argv[2]
LINES = [
    '{"id":"a","fn":"operator:add","args":[1,2]}',
    '{"id":"b","fn":"operator:truediv","args":[1,0]}',
    'not json',
    '{"id":"c","fn":"operator:mul","args":[3,4]}',
    '{"id":"d","fn":"operator:neg","args":[5]}',
    '{"id":"e","fn":"operator:add","args":[1,"y"]}',
]
failures = []


def alive_with(tag):
    """Pids whose environment holds tag (the run's workers, its zygote)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if tag.encode() in f.read().split(b"\0"):
                    found.append(int(pid))
        except OSError:
            pass
    return found


def records(out):
    recs = {}
    for line in out.decode().splitlines():
        r = json.loads(line)  # a half record fails here
        if r.get("type") != "result":
            continue
        key = str(r["id"])
        if key in recs:
            raise AssertionError(f"two records for {key}")
        recs[key] = r["status"]
    return recs


def run(argv, n, tmp):
    count = os.path.join(tmp, "count")
    tag = f"TPAR_OOM_RUN={os.getpid()}.{n}.{time.monotonic_ns()}"
    env = dict(os.environ, TPAR_WORKER=WORKER, TPAR_FAIL_ALLOC=str(n),
               TPAR_FAIL_ALLOC_COUNT=count, ASAN_OPTIONS="detect_leaks=0",
               **{tag.split("=")[0]: tag.split("=")[1]})
    try:
        cp = subprocess.run(argv, capture_output=True, env=env, timeout=60)
    except subprocess.TimeoutExpired as e:
        cp = subprocess.CompletedProcess(argv, "hung", e.stdout or b"", e.stderr or b"")
    try:
        with open(count) as f:
            made = int(f.read())
        os.unlink(count)
    except (OSError, ValueError):
        made = n  # it never got to exit: try the next one
    deadline = time.monotonic() + 5
    while alive_with(tag) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = alive_with(tag)
    return cp, made, left


def scenario(name, extra):
    with tempfile.TemporaryDirectory() as tmp:
        inp = os.path.join(tmp, "in.jsonl")
        with open(inp, "w") as f:
            f.write("\n".join(LINES) + "\n")
        argv = [EXE, "-j2", "-k", "--retries", "1", "--retry-on", "error",
                "--joblog", os.path.join(tmp, "log"), *extra, inp]
        base, total, left = run(argv, 0, tmp)
        want = records(base.stdout)
        assert base.returncode == 3 and len(want) == 6 and not left, (base, left)
        n, oom_exits = 0, 0
        while True:
            n += 1
            cp, made, left = run(argv, n, tmp)
            err = cp.stderr.decode(errors="replace")
            what = f"{name}: allocation {n} of {made}"
            try:
                assert cp.returncode != "hung", "hung for 60 s (killed)"
                assert cp.returncode >= 0, f"killed by signal {-cp.returncode}"
                assert "Sanitizer" not in err and "runtime error" not in err, err[-2000:]
                got = records(cp.stdout)
                if cp.returncode == 255:
                    oom_exits += 1
                    assert "tpar: out of memory" in err, err[-500:]
                    for k, st in got.items():
                        assert want.get(k) == st, f"record {k}: {st}, not {want.get(k)}"
                else:
                    assert cp.returncode == base.returncode, f"exit {cp.returncode}: {err[-500:]}"
                    assert got == want, f"records {got}"
                assert not left, f"processes left behind: {left}"
            except (AssertionError, ValueError) as e:
                failures.append(f"{what}: {e}")
            if made < n:  # this run never reached allocation n: all done
                break
            if n > 5000:
                failures.append(f"{name}: more than 5000 allocations?")
                break
        print(f"ok {name}: {n - 1} allocations failed in turn, {oom_exits} "
              f"'out of memory' exits, the rest absorbed")


scenario("spawn", [])
scenario("forkserver", ["--worker-type", "forkserver"])
for f in failures:
    print("FAIL", f)
sys.exit(1 if failures else 0)
