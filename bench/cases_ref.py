"""Reference points: the floor under our latency (a bare C ping-pong over a
pipe, `python3 -I -S -c pass`) and the issue-2 figure (`tpar run`)."""
import subprocess

from common import (BENCH_DIR, PYTHON, Skip, bench_build_dir, clean_python,
                    run_timed, tpar_exe)
from model import Case

SIZES = {
    "smoke": dict(pp_n=2000, start_reps=3, run_reps=3),
    "quick": dict(pp_n=20000, start_reps=10, run_reps=10),
    "full": dict(pp_n=20000, start_reps=20, run_reps=10),
}
PY_ADD = "import operator; print(operator.add(1,2))"


def pingpong_exe():
    exe = bench_build_dir() / "pingpong"
    src = BENCH_DIR / "pingpong.c"
    if not exe.exists() or exe.stat().st_mtime < src.stat().st_mtime:
        cp = subprocess.run(["cc", "-O2", "-Wall", "-Wextra", "-o", str(exe),
                             str(src)], capture_output=True)
        if cp.returncode != 0:
            raise Skip("cc failed: " + cp.stderr.decode(errors="replace")
                       .strip().splitlines()[-1])
    return exe


def case_pingpong(sz, reps):
    c = Case("reference", "ref.pingpong", "C ping-pong over a pipe "
             "(1 byte each way)", "µs", baseline=None,
             note=f"bench/pingpong.c, cc -O2; mean over {sz['pp_n']:,} "
             "round trips; same = both on CPU 0, split = CPUs 0 and 1, "
             "any = the scheduler decides")
    modes = ("any", "same", "split")
    for rep in range(reps):
        for m in modes:
            subj = f"pingpong ({m})"
            try:
                exe = pingpong_exe()
                cp = subprocess.run([str(exe), str(sz["pp_n"]), m],
                                    capture_output=True, timeout=120)
                if cp.returncode != 0:
                    raise Skip(f"pingpong exited {cp.returncode}")
                c.add(subj, float(cp.stdout.decode().strip()))
            except (Skip, ValueError, subprocess.TimeoutExpired) as e:
                c.skip(subj, e)
    return c


def case_pystart(sz):
    c = Case("reference", "ref.python_start", "Python start-up", "ms",
             baseline=f"{PYTHON} -I -S -c pass",
             note="the real interpreter (the pyenv shim `python3` on PATH "
             "adds ~100 ms and is not used)")
    argvs = {f"{PYTHON} -I -S -c pass": [PYTHON, "-I", "-S", "-c", "pass"],
             f"{PYTHON} -c pass": [PYTHON, "-c", "pass"]}
    for _ in range(sz["start_reps"]):
        for subj, argv in argvs.items():
            try:
                c.add(subj, run_timed(argv)[0] * 1e3)
            except Skip as e:
                c.skip(subj, e)
    return c


def case_tpar_run(sz):
    py = f"{PYTHON} -c '{PY_ADD}'"
    tp = "tpar run operator:add --args '[1,2]'"
    c = Case("reference", "ref.tpar_run", "One call: `tpar run` vs "
             "`python3 -c`", "ms", baseline=py,
             note=f"wall time, median of {sz['run_reps']}; issue 2's figure")
    c.subject(tp)
    c.subject(py)
    for _ in range(sz["run_reps"]):
        try:
            exe = tpar_exe()
            dt, cp = run_timed([str(exe), "run", "operator:add", "--args",
                                "[1,2]"], stdout=subprocess.PIPE)
            if b"3" not in cp.stdout:
                raise Skip(f"tpar run printed {cp.stdout[:100]!r}")
            c.add(tp, dt * 1e3)
        except Skip as e:
            c.skip(tp, e)
        c.add(py, run_timed([PYTHON, "-c", PY_ADD])[0] * 1e3)
    return c


def case_tpar_run_clean(sz):
    """`tpar run` and `python -c` under common.clean_python()."""
    python, env = clean_python()
    tp = "tpar run operator:add --args '[1,2]'"
    py = "python -c 'import operator; print(operator.add(1,2))'"
    c = Case("reference", "ref.tpar_run_clean", "One call, Python without "
             ".pth start-up code: `tpar run` vs `python -c`", "ms",
             baseline=py, note="as above, with VIRTUAL_ENV a venv whose "
             "site-packages runs no .pth file (common.clean_python)")
    c.subject(tp)
    c.subject(py)
    for _ in range(sz["run_reps"]):
        try:
            dt, cp = run_timed([str(tpar_exe()), "run", "operator:add", "--args",
                                "[1,2]"], stdout=subprocess.PIPE, env=env)
            if b"3" not in cp.stdout:
                raise Skip(f"tpar run printed {cp.stdout[:100]!r}")
            c.add(tp, dt * 1e3)
        except Skip as e:
            c.skip(tp, e)
        c.add(py, run_timed([python, "-c", PY_ADD], env=env)[0] * 1e3)
    return c


def run(mode, reps, log):
    sz = SIZES[mode]
    log("reference points")
    return [case_pingpong(sz, reps), case_pystart(sz), case_tpar_run(sz),
            case_tpar_run_clean(sz)]
