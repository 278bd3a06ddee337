"""Shared helpers of the benchmark harness: paths, statistics, machine info.

Every measured figure is a list of repetitions; the report keeps them all
and shows the median with the min-max range.
"""
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
# The real interpreter, never the pyenv shim: scripts/bench starts us with it.
PYTHON = sys.executable


class Skip(Exception):
    """A case (or one subject of it) cannot run here; the message says why."""


def build_dir():
    return Path(os.environ.get("TPAR_BUILD_DIR", "/work/main/build"))


def bench_build_dir():
    """Where the harness keeps what it builds or downloads (ignored by git)."""
    d = Path(os.environ.get("TPAR_BENCH_BUILD", ROOT / "build-bench"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def clean_python():
    """(python, env) for a Python whose start-up runs no .pth file: a venv
    of PYTHON with empty site-packages (made once, in build-bench/), that
    sees PYTHON's packages through PYTHONPATH (plain path entries).  env
    also sets VIRTUAL_ENV, so tpar's CLI workers take the venv too.  On this
    machine a .pth file imports certifi at every start, which costs every
    interpreter ~20-30 ms and ~5 MB (`python3 -c` included)."""
    import site
    import venv
    d = bench_build_dir() / "clean-venv"
    py = d / "bin" / "python"
    if not py.exists():
        venv.EnvBuilder(with_pip=False, symlinks=True, clear=True).create(d)
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = dict(os.environ, VIRTUAL_ENV=str(d),
               PYTHONPATH=os.pathsep.join(paths + site.getsitepackages()))
    return str(py), env


def tpar_exe():
    p = build_dir() / "cmd" / "tpar"
    if not os.access(p, os.X_OK):
        raise Skip(f"tpar CLI not built ({p} missing)")
    return p


def deps_dir():
    return bench_build_dir() / "deps"


def summarize(values):
    """median/min/max of a list of repetitions (None when empty)."""
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals),
            "max": max(vals), "n": len(vals), "reps": vals}


def ratio(subj, base):
    """Ratio subject/peer: median of per-repetition ratios when the two were
    measured in interleaved repetitions of equal count, else the ratio of the
    medians with the conservative range (min/max, max/min)."""
    if not subj or not base or base["median"] == 0:
        return None
    a, b = subj["reps"], base["reps"]
    if len(a) == len(b) and all(x > 0 for x in b):
        rs = [x / y for x, y in zip(a, b)]
        return {"median": statistics.median(rs), "min": min(rs),
                "max": max(rs), "paired": True}
    lo = subj["min"] / base["max"] if base["max"] else None
    hi = subj["max"] / base["min"] if base["min"] else None
    return {"median": subj["median"] / base["median"], "min": lo, "max": hi,
            "paired": False}


def run_timed(argv, *, stdin=None, stdout=subprocess.DEVNULL, env=None,
              cwd=None, timeout=600, check=True):
    """Runs argv to completion; returns (wall seconds, CompletedProcess)."""
    t0 = time.perf_counter()
    cp = subprocess.run(argv, stdin=stdin, stdout=stdout,
                        stderr=subprocess.PIPE, env=env, cwd=cwd,
                        timeout=timeout)
    dt = time.perf_counter() - t0
    if check and cp.returncode != 0:
        err = (cp.stderr or b"").decode(errors="replace").strip()
        raise Skip(f"{Path(argv[0]).name} exited {cp.returncode}: "
                   f"{err.splitlines()[-1] if err else 'no stderr'}")
    return dt, cp


def peak_rss_polled(argv, *, stdin=None, stdout=subprocess.DEVNULL,
                    env=None, cwd=None, timeout=600, interval=0.02):
    """Runs argv and returns (wall s, peak RSS in bytes of that process alone,
    returncode).  The peak is the kernel's VmHWM of the process (not of its
    children), polled until it exits; VmHWM only grows, so the last value
    read is the peak up to a few ms before exit."""
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdin=stdin, stdout=stdout,
                         stderr=subprocess.PIPE, env=env, cwd=cwd)
    hwm = 0
    status = f"/proc/{p.pid}/status"
    try:
        while p.poll() is None:
            hwm = max(hwm, _vmhwm(status))
            if time.perf_counter() - t0 > timeout:
                p.kill()
                p.wait()
                raise Skip(f"{Path(argv[0]).name} ran past {timeout} s")
            time.sleep(interval)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    err = p.stderr.read().decode(errors="replace").strip()
    p.stderr.close()
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise Skip(f"{Path(argv[0]).name} exited {p.returncode}: "
                   f"{err.splitlines()[-1] if err else 'no stderr'}")
    return dt, hwm


def _vmhwm(status_path):
    try:
        with open(status_path) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def machine_info():
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = None
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return {
        "nproc": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "kernel": platform.release(),
        "os": _os_release(),
        "python": platform.python_version(),
        "python_executable": PYTHON,
        "memory_bytes": mem,
        "loadavg_at_start": os.getloadavg(),
        "hostname": platform.node(),
        "gnu_parallel": _first_line(["parallel", "--version"]),
        "cc": _first_line(["cc", "--version"]),
    }


def _os_release():
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.platform()


def _first_line(argv):
    if not shutil.which(argv[0]):
        return None
    try:
        out = subprocess.run(argv, capture_output=True, timeout=10).stdout
        return out.decode(errors="replace").splitlines()[0].strip()
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def git_commit():
    """Short HEAD, with "+dirty" when tracked files differ from it."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short",
                               "HEAD"], capture_output=True, timeout=10
                              ).stdout.decode().strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status",
                                "--porcelain", "--untracked-files=no"],
                               capture_output=True, timeout=10).stdout.strip()
        return (head + ("+dirty" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None
