"""CLI cases: `tpar` against GNU parallel and xargs -P (one `python3 -c`
per job, with the real interpreter, not the pyenv shim) and against the
hand-written multiprocessing.Pool script (pool_baseline.py)."""
import json
import os
import shutil
import subprocess
import time

from common import (BENCH_DIR, PYTHON, Skip, bench_build_dir, peak_rss_polled,
                    run_timed, tpar_exe)
from model import Case

NCPU = os.cpu_count()
POOL = "Pool.imap script (parse in parent)"  # chunksize=1000 everywhere
POOL_W = "Pool.imap script (parse in workers)"
TPAR = f"tpar -j{NCPU}"
PAR = f"GNU parallel -j{NCPU}"
XARGS = f"xargs -P{NCPU}"

SIZES = {
    "smoke": dict(tiny_n=2000, tiny_shell_n=6, cpu_n=20, cpu_shell_n=4,
                  rss_n=2000, ttfr_n=200, ttfr_shell_n=4, timeout=60),
    "quick": dict(tiny_n=100_000, tiny_shell_n=30, cpu_n=100, cpu_shell_n=20,
                  rss_n=100_000, ttfr_n=1000, ttfr_shell_n=10, timeout=120),
    "full": dict(tiny_n=100_000, tiny_shell_n=200, cpu_n=1000,
                 cpu_shell_n=100, rss_n=1_000_000, ttfr_n=1000,
                 ttfr_shell_n=20, timeout=600),
}
CPU_MS = 10
ADD_CODE = "import operator; print(operator.add({}, 1))"
BURN_CODE = "import bfuncs; print(bfuncs.burn({}))"


# ------------------------------------------------------------------ inputs

def data_file(kind, n):
    """A JSON-lines job file, made once and kept in the bench build dir."""
    d = bench_build_dir() / "data"
    d.mkdir(exist_ok=True)
    path = d / f"{kind}_{n}.jsonl"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            for i in range(n):
                if kind == "add":
                    f.write('{"id":%d,"fn":"operator:add","args":[%d,1]}\n'
                            % (i, i))
                else:
                    f.write('{"id":%d,"fn":"bfuncs:burn","args":[%d]}\n'
                            % (i, CPU_MS))
        tmp.rename(path)
    return path


def out_file():
    d = bench_build_dir() / "tmp"
    d.mkdir(exist_ok=True)
    return d / "out.jsonl"


def check_output(path, n, who):
    """Every job got exactly one ok result."""
    with open(path, "rb") as f:
        lines = [ln for ln in f.read().split(b"\n") if ln.strip()]
    recs = [ln for ln in lines if b'"summary"' not in ln]
    if len(recs) != n:
        raise Skip(f"{who} wrote {len(recs)} results for {n} jobs")
    for ln in (recs[0], recs[-1]):
        if json.loads(ln).get("status") != "ok":
            raise Skip(f"{who} result not ok: {ln[:200].decode()}")


_tpar_ok = {}


def tpar_stream():
    """The tpar executable if its stream mode works, else Skip(why)."""
    exe = tpar_exe()
    if exe not in _tpar_ok:
        why = None
        try:
            cp = subprocess.run(
                [str(exe), "-j2", "-"], cwd=str(BENCH_DIR),
                input=b'{"fn":"operator:add","args":[1,2]}\n'
                      b'{"fn":"bfuncs:burn","args":[1]}\n',
                capture_output=True, timeout=30)
            recs = [json.loads(ln) for ln in cp.stdout.splitlines()
                    if ln.strip()]
            if len(recs) != 2 or any(r.get("status") != "ok" for r in recs):
                err = cp.stderr.decode(errors="replace").strip()
                why = (f"tpar stream mode not working yet (exit "
                       f"{cp.returncode}: {err.splitlines()[-1] if err else cp.stdout[:100]})")
        except (OSError, subprocess.SubprocessError, ValueError) as e:
            why = f"tpar stream mode not working yet ({e})"
        _tpar_ok[exe] = why
    if _tpar_ok[exe]:
        raise Skip(_tpar_ok[exe])
    return exe


def shell_tool(name):
    if not shutil.which(name):
        raise Skip(f"{name} not installed")
    return name


def shell_argv(tool, code, jobs):
    if tool == "parallel":
        return [shell_tool("parallel"), f"-j{jobs}", "--will-cite", "-q",
                PYTHON, "-c", code]
    return [shell_tool("xargs"), f"-P{jobs}", "-I{}", PYTHON, "-c", code]


# ------------------------------------------------------------------ runners

def time_tpar(path, n, jobs, timeout):
    out = out_file()
    with open(out, "wb") as f:
        dt, _ = run_timed([str(tpar_stream()), f"-j{jobs}", str(path)],
                          stdout=f, cwd=str(BENCH_DIR), timeout=timeout)
    check_output(out, n, "tpar")
    return dt


def time_pool(path, n, jobs, timeout, in_parent, chunksize=1000):
    out = out_file()
    argv = [PYTHON, str(BENCH_DIR / "pool_baseline.py"), "-j", str(jobs),
            "--chunksize", str(chunksize)]
    if in_parent:
        argv.append("--parse-in-parent")
    with open(out, "wb") as f:
        dt, _ = run_timed(argv + [str(path)], stdout=f, cwd=str(BENCH_DIR),
                          timeout=timeout)
    check_output(out, n, "pool_baseline.py")
    return dt


def time_shell(tool, code, args, jobs, timeout):
    stdin = "".join(f"{a}\n" for a in args).encode()
    t0 = time.perf_counter()
    cp = subprocess.run(shell_argv(tool, code, jobs), input=stdin,
                        capture_output=True, cwd=str(BENCH_DIR),
                        timeout=timeout)
    dt = time.perf_counter() - t0
    got = len(cp.stdout.splitlines())
    if cp.returncode != 0 or got != len(args):
        raise Skip(f"{tool} exited {cp.returncode} with {got}/{len(args)} "
                   "results")
    return dt


def measure(case, subj, fn, ratio_to=None):
    try:
        case.add(subj, fn(), ratio_to=ratio_to)
    except Skip as e:
        case.skip(subj, e, ratio_to=ratio_to)
    except subprocess.TimeoutExpired as e:
        case.skip(subj, f"timed out after {e.timeout} s", ratio_to=ratio_to)


# ------------------------------------------------------------------- cases

def case_tiny(sz, reps, log):
    n, ns = sz["tiny_n"], sz["tiny_shell_n"]
    c = Case("cli", "cli.tiny", f"{n:,} tiny operator:add jobs", "jobs/s",
             better="higher", baseline=POOL,
             note=f"GNU parallel and xargs run only {ns} jobs (one "
             f"`{PYTHON} -c` each, the real interpreter, not the pyenv "
             "shim); their rate is extrapolated from that subset")
    path = data_file("add", n)
    for s in (TPAR, POOL, POOL_W, PAR, XARGS):
        c.subject(s)
    for rep in range(reps):
        log(f"cli tiny rep {rep + 1}/{reps}")
        to = sz["timeout"]
        measure(c, TPAR, lambda: n / time_tpar(path, n, NCPU, to))
        measure(c, POOL, lambda: n / time_pool(path, n, NCPU, to, True))
        measure(c, POOL_W, lambda: n / time_pool(path, n, NCPU, to, False))
        for tool, subj in (("parallel", PAR), ("xargs", XARGS)):
            measure(c, subj, lambda: ns / time_shell(
                tool, ADD_CODE, range(ns), NCPU, to))
    return c


def case_cpu(sz, reps, log):
    n, ns = sz["cpu_n"], sz["cpu_shell_n"]
    pool1 = "Pool.imap script (parse in parent, chunksize=1)"
    rate = Case("cli", "cli.cpu", f"{n:,} jobs of {CPU_MS} ms CPU, "
                f"-j{NCPU}", "jobs/s", better="higher", baseline=pool1,
                note=f"bfuncs.burn({CPU_MS}) spins {CPU_MS} ms of CPU time; "
                f"GNU parallel and xargs run {ns} jobs; the Pool script "
                "with chunksize=1000 sends all the jobs as one chunk to one "
                "worker, so the peer here is the same script with "
                "chunksize=1")
    speed = Case("cli", "cli.cpu_speedup", f"Speedup of -j{NCPU} over -j1 "
                 f"({CPU_MS} ms jobs)", "×", better="higher", baseline=pool1,
                 note=f"ideal: {NCPU}×")
    path = data_file("burn", n)
    to = sz["timeout"]
    runners = {
        TPAR: lambda j: n / time_tpar(path, n, j, to),
        pool1: lambda j: n / time_pool(path, n, j, to, True, 1),
        POOL: lambda j: n / time_pool(path, n, j, to, True),
        PAR: lambda j: ns / time_shell("parallel", BURN_CODE,
                                       [CPU_MS] * ns, j, to),
        XARGS: lambda j: ns / time_shell("xargs", BURN_CODE,
                                         [CPU_MS] * ns, j, to),
    }
    for s in runners:
        rate.subject(s)
        speed.subject(s)
    for rep in range(reps):
        log(f"cli cpu rep {rep + 1}/{reps}")
        for subj, fn in runners.items():
            try:
                r1, rn = fn(1), fn(NCPU)
                rate.add(subj, rn)
                speed.add(subj, rn / r1)
            except Skip as e:
                rate.skip(subj, e)
                speed.skip(subj, e)
            except subprocess.TimeoutExpired as e:
                rate.skip(subj, f"timed out after {e.timeout} s")
                speed.skip(subj, f"timed out after {e.timeout} s")
    return [rate, speed]


def case_rss(sz, reps, log):
    n = sz["rss_n"]
    c = Case("cli", "cli.rss", f"Parent's peak RSS on a {n:,}-job stream",
             "MB", baseline=POOL,
             note="VmHWM of the parent process alone (not its workers), "
             "polled every 20 ms; tiny operator:add jobs, output to "
             "/dev/null; GNU parallel / xargs not run (one process per job)")
    path = data_file("add", n)
    to = sz["timeout"]
    cmds = {
        TPAR: lambda: [str(tpar_stream()), f"-j{NCPU}", str(path)],
        POOL: lambda: [PYTHON, str(BENCH_DIR / "pool_baseline.py"), "-j",
                       str(NCPU), "--parse-in-parent", str(path)],
        POOL_W: lambda: [PYTHON, str(BENCH_DIR / "pool_baseline.py"), "-j",
                         str(NCPU), str(path)],
    }
    for s in cmds:
        c.subject(s)
    for rep in range(min(reps, 2)):
        log(f"cli rss rep {rep + 1}/{min(reps, 2)}")
        for subj, argv in cmds.items():
            def one():
                dt, hwm = peak_rss_polled(argv(), cwd=str(BENCH_DIR),
                                          timeout=to)
                c.extra.setdefault(subj, {}).setdefault(
                    "jobs_per_s", []).append(n / dt)
                return hwm / 1e6
            measure(c, subj, one)
    return c


def first_line_time(argv, stdin_bytes=None, stdin_path=None, timeout=60):
    """Seconds from start to the first line on stdout; then drains."""
    fin = open(stdin_path, "rb") if stdin_path else subprocess.PIPE
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdin=fin, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, cwd=str(BENCH_DIR))
    try:
        if stdin_bytes is not None:
            p.stdin.write(stdin_bytes)
            p.stdin.close()
        line = p.stdout.readline()
        dt = time.perf_counter() - t0
        p.stdout.read()
        p.wait(timeout=timeout)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        if stdin_path:
            fin.close()
        p.stdout.close()
    if not line.strip() or p.returncode != 0:
        raise Skip(f"{os.path.basename(argv[0])} exited {p.returncode} "
                   f"(first line {line[:80]!r})")
    return dt


def case_ttfr(sz, reps, log):
    n, ns = sz["ttfr_n"], sz["ttfr_shell_n"]
    c = Case("cli", "cli.first_result", "Time to the first result", "ms",
             baseline=POOL, note=f"a stream of {n:,} tiny jobs on stdin "
             f"({ns} for GNU parallel / xargs); from start to the first "
             "line on stdout")
    path = data_file("add", n)
    shell_in = "".join(f"{i}\n" for i in range(ns)).encode()
    runners = {
        TPAR: lambda: first_line_time([str(tpar_stream()), f"-j{NCPU}"],
                                      stdin_path=path),
        POOL: lambda: first_line_time(
            [PYTHON, str(BENCH_DIR / "pool_baseline.py"), "-j", str(NCPU),
             "--parse-in-parent"], stdin_path=path),
        POOL_W: lambda: first_line_time(
            [PYTHON, str(BENCH_DIR / "pool_baseline.py"), "-j", str(NCPU)],
            stdin_path=path),
        PAR: lambda: first_line_time(shell_argv("parallel", ADD_CODE, NCPU),
                                     stdin_bytes=shell_in),
        XARGS: lambda: first_line_time(shell_argv("xargs", ADD_CODE, NCPU),
                                       stdin_bytes=shell_in),
    }
    for s in runners:
        c.subject(s)
    for rep in range(max(reps, 3)):
        log(f"cli first-result rep {rep + 1}/{max(reps, 3)}")
        for subj, fn in runners.items():
            measure(c, subj, lambda: fn() * 1e3)
    return c


def run(mode, reps, log):
    sz = SIZES[mode]
    return [case_tiny(sz, reps, log), *case_cpu(sz, reps, log),
            case_rss(sz, reps, log), case_ttfr(sz, reps, log)]
