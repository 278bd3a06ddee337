"""Remote workers: the same streams through local workers (pipes and
lanes), through `--launcher` workers over loopback TCP, and through
`--slurm` inside `salloc` when a Slurm cluster is up (scripts/slurm
start; root only), in one run.

Rows: tiny operator:add jobs per second, two workers each; and a 10 MB
round trip (a 10 MB string argument, returned whole: 20 MB moved per job)
on one worker, in MB/s, from the difference between a run of 1 job and a
run of 1 + N jobs, so that the workers' start-up and the allocation do not
count."""
import json
import os
import shutil
import subprocess
import time

from cases_cli import check_output, measure, out_file, tpar_stream
from common import BENCH_DIR, PYTHON, Skip, bench_build_dir, build_dir
from model import Case

LOCAL = "tpar -j2 (local workers)"
TCP = "tpar --launcher (2 workers, loopback TCP)"
SLURM = "tpar --slurm (salloc -n 2)"
LOCAL1 = "tpar -j1 (local worker: lanes)"
TCP1 = "tpar --launcher (1 worker, loopback TCP)"
SLURM1 = "tpar --slurm (salloc -n 1)"
TRIO_LOCAL = "tpar run_sync, SPAWN context (lanes)"
TRIO_TCP = "tpar run_sync, open_remote_context (loopback TCP)"

SIZES = {
    "smoke": dict(tiny_n=5000, big_n=2, big_mb=2, timeout=60),
    "quick": dict(tiny_n=100_000, big_n=10, big_mb=10, timeout=120),
    "full": dict(tiny_n=200_000, big_n=10, big_mb=10, timeout=300),
}


def tiny_file(n):
    d = bench_build_dir() / "data"
    d.mkdir(exist_ok=True)
    path = d / f"add_{n}.jsonl"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            for i in range(n):
                f.write('{"id":%d,"fn":"operator:add","args":[%d,1]}\n' % (i, i))
        tmp.rename(path)
    return path


def big_file(n, mb):
    """n jobs returning their mb MB string argument."""
    d = bench_build_dir() / "data"
    d.mkdir(exist_ok=True)
    path = d / f"echo_{n}x{mb}MB.jsonl"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        s = "x" * (mb * 1000 * 1000)
        with open(tmp, "w") as f:
            for i in range(n):
                f.write('{"id":%d,"fn":"builtins:str","args":["%s"]}\n' % (i, s))
        tmp.rename(path)
    return path


_slurm = None


def slurm_up():
    """None when a cluster is up, else why not."""
    global _slurm
    if _slurm is None:
        script = BENCH_DIR.parent / "scripts" / "slurm"
        if not shutil.which("salloc"):
            _slurm = "not applicable: no Slurm here (scripts/slurm start, as root)"
        else:
            cp = subprocess.run([str(script), "status"], capture_output=True)
            _slurm = "" if cp.returncode == 0 else \
                "not applicable: the Slurm cluster is not up (scripts/slurm start)"
    return _slurm or None


def argv_for(subject, jobs, path):
    exe = str(tpar_stream())
    worker = str(exe).replace("/cmd/tpar", "/pyworker/tpar-worker")
    if subject in (LOCAL, LOCAL1):
        return [exe, f"-j{jobs}", str(path)]
    if subject in (TCP, TCP1):
        return [exe, "--launcher", f"{worker} --connect {{addr}} --workers {jobs}",
                str(path)]
    why = slurm_up()
    if why:
        raise Skip(why)
    return ["salloc", "-Q", "-n", str(jobs), exe, "--slurm", str(path)]


def timed(argv, n, timeout):
    out = out_file()
    with open(out, "wb") as f:
        t0 = time.perf_counter()
        cp = subprocess.run(argv, stdout=f, stderr=subprocess.PIPE,
                            cwd=str(BENCH_DIR), timeout=timeout)
        dt = time.perf_counter() - t0
    if cp.returncode != 0:
        err = cp.stderr.decode(errors="replace").strip().splitlines()
        raise Skip(f"exited {cp.returncode}: {err[-1] if err else ''}")
    check_output(out, n, argv[0])
    return dt


def joblog_rate(argv, n, timeout):
    """Jobs per second between the first job's start and the last one's
    (the joblog's clock): the dispatch rate, without the workers' start-up
    (nor salloc's)."""
    log = bench_build_dir() / "tmp" / "remote-joblog.jsonl"
    log.parent.mkdir(exist_ok=True)
    if log.exists():
        log.unlink()
    timed(argv[:-1] + ["--joblog", str(log)] + argv[-1:], n, timeout)
    starts = [json.loads(ln)["start"] for ln in open(log) if ln.strip()]
    if len(starts) != n or max(starts) <= min(starts):
        raise Skip(f"joblog: {len(starts)} attempts for {n} jobs")
    return (n - 1) / (max(starts) - min(starts))


def case_tiny(sz, reps, log):
    n = sz["tiny_n"]
    c = Case("remote", "remote.tiny", f"{n:,} tiny operator:add jobs, 2 workers",
             "jobs/s", better="higher", baseline=LOCAL,
             note="(n - 1) / (last start - first start) from --joblog: the "
             "parent's dispatch rate, without the workers' start-up (and "
             "salloc's); remote workers run on this machine, so the figure "
             "is the transport's and the parent's, not a network's")
    path = tiny_file(n)
    for s in (LOCAL, TCP, SLURM):
        c.subject(s)
    for rep in range(reps):
        log(f"remote tiny rep {rep + 1}/{reps}")
        for s in (LOCAL, TCP, SLURM):
            measure(c, s, lambda: joblog_rate(argv_for(s, 2, path), n, sz["timeout"]))
    return c


def case_payload(sz, reps, log):
    n, mb = sz["big_n"], sz["big_mb"]
    c = Case("remote", "remote.payload", f"{mb} MB round trip (argument and "
             "value), one worker", "MB/s", better="higher", baseline=LOCAL1,
             note=f"{2 * mb} MB moved per job; (time of 1 + {n} jobs - time "
             "of 1 job) over the bytes of the extra jobs, so start-up does "
             "not count; the JSON parse and encode of the string in the "
             "worker count (the same for every subject)")
    one, many = big_file(1, mb), big_file(1 + n, mb)
    for s in (LOCAL1, TCP1, SLURM1):
        c.subject(s)
    for rep in range(reps):
        log(f"remote payload rep {rep + 1}/{reps}")
        for s in (LOCAL1, TCP1, SLURM1):
            def rate():
                t1 = timed(argv_for(s, 1, one), 1, sz["timeout"])
                tn = timed(argv_for(s, 1, many), 1 + n, sz["timeout"])
                if tn <= t1:
                    raise Skip("noise: the longer run was not longer")
                return n * 2 * mb / (tn - t1)
            measure(c, s, rate)
    return c


def trio_rate(kind, mb, n, timeout):
    env = dict(os.environ, TPAR_BUILD_DIR=str(build_dir()),
               TPAR_WORKER=str(build_dir() / "pyworker" / "tpar-worker"))
    cp = subprocess.run([PYTHON, str(BENCH_DIR / "remote_case.py"), kind, str(mb), str(n)],
                        capture_output=True, env=env, cwd=str(BENCH_DIR), timeout=timeout)
    try:
        return json.loads(cp.stdout.decode().strip().splitlines()[-1])["rate"]
    except (ValueError, IndexError, KeyError):
        err = cp.stderr.decode(errors="replace").strip().splitlines()
        raise Skip(f"remote_case exited {cp.returncode}: {err[-1] if err else 'no output'}")


def case_trio_payload(sz, reps, log):
    n, mb = sz["big_n"], sz["big_mb"]
    c = Case("remote", "remote.trio_payload", f"{mb} MB round trip, run_sync(bytes, "
             "payload), one worker", "MB/s", better="higher", baseline=TRIO_LOCAL,
             note=f"{2 * mb} MB moved per call (pickled bytes: no JSON); {n} calls "
             "after a warm-up call; the transport's own rate")
    for s in (TRIO_LOCAL, TRIO_TCP):
        c.subject(s)
    for rep in range(reps):
        log(f"remote trio payload rep {rep + 1}/{reps}")
        measure(c, TRIO_LOCAL, lambda: trio_rate("local", mb, n, sz["timeout"]))
        measure(c, TRIO_TCP, lambda: trio_rate("tcp", mb, n, sz["timeout"]))
    return c


def run(mode, reps, log):
    sz = SIZES[mode]
    return [case_tiny(sz, reps, log), case_payload(sz, reps, log),
            case_trio_payload(sz, reps, log)]
