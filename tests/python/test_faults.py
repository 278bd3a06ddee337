"""Faults (issue 12): workers killed before READY, and what jobs start
outliving their worker."""
import os
import signal
import time

import pytest
import trio

import tpar as trio_parallel
import _faults_jobs

TYPES = [trio_parallel.WorkerType.SPAWN, trio_parallel.WorkerType.FORKSERVER]

# Imported by site in every Python started with this dir on PYTHONPATH, the
# workers' too, before they say READY: kills the first of them (or all,
# with FAULTS_DIE=always) with SIGKILL, as the OOM killer might.
SITECUSTOMIZE = """
import os, signal
if os.environ.get("FAULTS_DIE") == "always" or (os.environ.get("FAULTS_DIE") == "once" and
        not os.path.exists(os.path.join(os.environ["FAULTS_DIR"], "died"))):
    open(os.path.join(os.environ["FAULTS_DIR"], "died"), "w").close()
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.fixture
def faults_env(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    monkeypatch.setenv("FAULTS_DIR", str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(site)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    return tmp_path


def gone(pid, secs=5.0):
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    return False


async def test_a_worker_killed_before_ready_is_replaced(faults_env, monkeypatch):
    """SPAWN: the first worker dies in its start-up; the call runs on the next."""
    monkeypatch.setenv("FAULTS_DIE", "once")
    async with trio_parallel.open_worker_context() as ctx:
        pid = await ctx.run_sync(os.getpid)
    assert pid != os.getpid()
    assert (faults_env / "died").exists()


async def test_workers_that_keep_dying_before_ready_raise_broken_worker(faults_env, monkeypatch):
    monkeypatch.setenv("FAULTS_DIE", "always")
    async with trio_parallel.open_worker_context() as ctx:
        with pytest.raises(trio_parallel.BrokenWorkerError, match="SIGKILL"):
            await ctx.run_sync(os.getpid)


@pytest.mark.parametrize("wt", TYPES, ids=lambda t: t.name)
async def test_a_jobs_child_dies_when_its_worker_retires(faults_env, wt):
    async with trio_parallel.open_worker_context(worker_type=wt,
                                                 retire=_faults_jobs.retire) as ctx:
        child = await ctx.run_sync(_faults_jobs.sleeper, str(faults_env / "sleeper"))
    # the retired worker is reaped, at the latest when the context closes
    assert gone(child), "the job's child outlived its retired worker"


@pytest.mark.parametrize("wt", TYPES, ids=lambda t: t.name)
async def test_a_jobs_child_dies_when_its_worker_is_killed(faults_env, wt):
    async with trio_parallel.open_worker_context(worker_type=wt) as ctx:
        with pytest.raises(trio_parallel.BrokenWorkerError):
            await ctx.run_sync(_faults_jobs.sleeper, str(faults_env / "sleeper"), "kill")
    child = int((faults_env / "sleeper").read_text())
    assert gone(child), "the job's child outlived its killed worker"


async def test_a_forkserver_that_keeps_dying_raises_broken_worker(tmp_path, monkeypatch):
    """The zygote is killed, and the one Zygote.fork() starts in its place
    dies at its start too: BrokenWorkerError, not BrokenPipeError."""
    marker = tmp_path / "die"
    monkeypatch.setenv("TPAR_TEST_ZYGOTE_DIES", str(marker))
    async with trio_parallel.open_worker_context(
            worker_type=trio_parallel.WorkerType.FORKSERVER, preload=["_preload_dies"]) as ctx:
        first = await ctx.run_sync(os.getpid)
        zygote = ctx._cache.launcher.zygote.pid
        marker.write_text("")
        os.kill(zygote, signal.SIGKILL)
        while os.path.exists(f"/proc/{first}"):  # its workers die with it
            await trio.sleep(0.01)
        with pytest.raises(trio_parallel.BrokenWorkerError, match="forkserver.*died"):
            await ctx.run_sync(os.getpid)
        marker.unlink()  # the next start works again
        assert await ctx.run_sync(os.getpid) != first
