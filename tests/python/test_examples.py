"""The seed's example programs, written for this package as
`import tpar as trio_parallel`, run as whole programs with short loops."""

import os
import re
import subprocess
import sys

import pytest

from conftest import subprocess_env

EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "examples")


def run_example(name, **env):
    e = subprocess_env()
    e.update({k: str(v) for k, v in env.items()})
    proc = subprocess.run([sys.executable, os.path.join(EXAMPLES, name)], env=e,
                          capture_output=True, text=True, timeout=60, cwd=EXAMPLES)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stdout


def test_minimal():
    out = run_example("minimal.py", EXAMPLE_LOOPS=1000)
    result = float(re.search(r"^result: (\S+)", out, re.M).group(1))
    assert abs(result - 3140.0) < 1e-6


def test_checkpointing():
    out = run_example("checkpointing.py", EXAMPLE_SECONDS=0.5)
    loops = int(re.search(r"worker loops: (\d+)", out).group(1))
    ticks = int(re.search(r"ticks while it ran: (\d+)", out).group(1))
    assert loops > 0 and ticks >= 1


def test_parallel_loops():
    out = run_example("parallel_loops.py", EXAMPLE_SECONDS=0.3)
    counts = [int(n) for n in re.findall(r"process \d+: (\d+) loops", out)]
    assert len(counts) == os.cpu_count() and all(counts)


def test_cache_warmup():
    out = run_example("cache_warmup.py", EXAMPLE_ROUNDS=3)
    assert len(re.findall(r"process call \d \((cold|warm)\)", out)) == 3
    assert len(re.findall(r"thread call \d", out)) == 3
    assert "idle workers: 1" in out


def test_cancellation():
    out = run_example("cancellation.py", EXAMPLE_SECONDS=0.3)
    assert "cancelled: True" in out
    assert "next call: 6" in out


def test_single_use_workers():
    out = run_example("single_use_workers.py", EXAMPLE_JOBS=6)
    assert "single-use distinct workers: 6" in out
    assert "retire-after-3 distinct workers: 2" in out
