"""Where a program can tell tpar from trio-parallel (issue #17): the task
tree of cache_scope, statistics without calls, the exception chain,
BrokenWorkerError's attributes, types and defaults of the API."""

import inspect
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import trio

import _jobs
import tpar as trio_parallel
from conftest import remote_traceback, subprocess_env
from test_run_sync import counts, gone, zombie


# ------------------------------------------------------- cache_scope's tree

async def _marker():
    """The init marker of the worker that runs us: set by a cache_scope's
    init=_jobs.init_state, None in the default context's workers."""
    return await trio_parallel.run_sync(_jobs.state_get, "init")


async def test_cache_scope_follows_the_task_tree():
    results = {}

    async def record(key, task_status=trio.TASK_STATUS_IGNORED):
        task_status.started()
        results[key] = await _marker()

    inside_open = trio.Event()
    foreign_spawned = trio.Event()
    escaped_done = trio.Event()
    nurseries = {}

    async def escaped():
        await record("escaped")
        escaped_done.set()

    async def scoped(outside):
        async with trio_parallel.cache_scope(init=_jobs.init_state):
            results["own"] = await _marker()
            async with trio.open_nursery() as inside:
                nurseries["inside"] = inside
                inside_open.set()
                await inside.start(record, "start")
                inside.start_soon(record, "start_soon")
                # from inside the scope into a nursery opened outside it
                outside.start_soon(escaped)
                await escaped_done.wait()  # while the scope is still open
                await foreign_spawned.wait()

    with trio.fail_after(60):
        async with trio.open_nursery() as outside:
            outside.start_soon(scoped, outside)
            await inside_open.wait()
            # a task outside the scope spawns into a nursery inside it
            nurseries["inside"].start_soon(record, "foreign")
            foreign_spawned.set()
    assert isinstance(results["own"], int)
    for key in ("start", "start_soon", "foreign"):
        assert results[key] == results["own"] or isinstance(results[key], int), (key, results)
    assert results["escaped"] is None, results
    assert await _marker() is None  # and outside, the default context


async def test_nested_cache_scopes_innermost_wins_then_the_outer_again():
    async with trio_parallel.cache_scope(init=_jobs.init_state):
        outer = await _marker()
        async with trio_parallel.cache_scope():
            assert await _marker() is None  # the inner scope's workers: no init
        assert await _marker() == outer


# --------------------------------------------------------------- statistics

async def test_statistics_drop_a_worker_gone_on_its_idle_timeout_without_a_call():
    async with trio_parallel.open_worker_context(idle_timeout=0.3) as ctx:
        pid = await ctx.run_sync(os.getpid)
        assert counts(ctx) == (1, 0)
        deadline = time.monotonic() + 0.3 + 1.5
        while (counts(ctx) != (0, 0) or not gone(pid)) and time.monotonic() < deadline:
            await trio.sleep(0.05)
        assert counts(ctx) == (0, 0)
        assert gone(pid) and not zombie(pid)


async def test_statistics_drop_a_killed_idle_worker_and_reap_it():
    async with trio_parallel.open_worker_context() as ctx:
        pid = await ctx.run_sync(os.getpid)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 1.5
        while (counts(ctx) != (0, 0) or not gone(pid)) and time.monotonic() < deadline:
            await trio.sleep(0.05)
        assert counts(ctx) == (0, 0)
        assert gone(pid)


# ------------------------------------------------------------ API's shape

def test_worker_type_is_a_str_enum():
    WT = trio_parallel.WorkerType
    assert isinstance(WT.SPAWN, str)
    assert WT.SPAWN == "spawn" and WT.FORKSERVER == "forkserver" and WT.FORK == "fork"
    assert WT("spawn") is WT.SPAWN


@pytest.mark.parametrize("value", ["spawn", "forkserver", "fork"])
async def test_worker_type_given_as_its_value(value):
    async with trio_parallel.open_worker_context(worker_type=value) as ctx:
        assert ctx.worker_type is trio_parallel.WorkerType(value)
        assert await ctx.run_sync(_jobs.add, 1, 2) == 3


async def test_worker_context_attributes_are_read_only():
    async with trio_parallel.open_worker_context() as ctx:
        for name, value in (("idle_timeout", 1.0), ("init", print), ("retire", print),
                            ("grace_period", 1.0), ("worker_type", "fork"),
                            ("preload", ("os",))):
            before = getattr(ctx, name)
            with pytest.raises(AttributeError):
                setattr(ctx, name, value)
            assert getattr(ctx, name) == before
        with pytest.raises(AttributeError):
            ctx.something_new = 1


def test_public_objects_are_tpar_s():
    for name in trio_parallel.__all__ + ["map"]:
        assert getattr(trio_parallel, name).__module__ == "tpar", name


def test_defaults_are_floats():
    for fn in (trio_parallel.open_worker_context, trio_parallel.cache_scope,
               trio_parallel.configure_default_context):
        params = inspect.signature(fn).parameters
        for name, value in (("idle_timeout", 600.0), ("grace_period", 30.0)):
            default = params[name].default
            assert type(default) is float and default == value, (fn, name)
    before = trio_parallel.atexit_shutdown_grace_period()
    assert type(before) is float
    try:
        assert trio_parallel.atexit_shutdown_grace_period(5) == 5.0
        assert type(trio_parallel.atexit_shutdown_grace_period()) is float
    finally:
        trio_parallel.atexit_shutdown_grace_period(before)


async def test_context_reports_float_parameters():
    async with trio_parallel.open_worker_context(idle_timeout=7, grace_period=2) as ctx:
        assert type(ctx.idle_timeout) is float and ctx.idle_timeout == 7.0
        assert type(ctx.grace_period) is float and ctx.grace_period == 2.0


def test_configure_default_context_off_the_main_thread_raises():
    errors = []

    def configure():
        try:
            trio_parallel.configure_default_context()
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=configure)
    t.start()
    t.join()
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError), errors


# ------------------------------------------------------------ exceptions

async def test_a_job_exception_keeps_its_own_cause_and_context():
    with pytest.raises(ValueError, match="outer") as info:
        await trio_parallel.run_sync(_jobs.raise_chained)
    exc = info.value
    assert isinstance(exc.__cause__, KeyError) and exc.__cause__.args == ("inner",)
    assert exc.__context__ is exc.__cause__
    assert exc.__suppress_context__
    assert "raise_chained" in remote_traceback(exc)


async def test_a_job_exception_keeps_its_context():
    with pytest.raises(ValueError, match="second") as info:
        await trio_parallel.run_sync(_jobs.raise_in_handler)
    exc = info.value
    assert isinstance(exc.__context__, KeyError) and exc.__context__.args == ("first",)
    assert not exc.__suppress_context__
    assert "raise_in_handler" in remote_traceback(exc)


async def test_a_job_exception_raised_inside_an_except_block_keeps_its_context():
    try:
        raise OSError("the caller's own")
    except OSError:
        with pytest.raises(ValueError) as info:
            await trio_parallel.run_sync(_jobs.raise_in_handler)
    assert isinstance(info.value.__context__, KeyError)


async def test_broken_worker_error_says_pid_and_exit_code():
    async with trio_parallel.open_worker_context() as ctx:
        pid = await ctx.run_sync(os.getpid)
        with pytest.raises(trio_parallel.BrokenWorkerError) as info:
            await ctx.run_sync(_jobs.exit_, 3)
    assert info.value.pid == pid
    assert info.value.exitcode == 3 and info.value.signal is None


async def test_broken_worker_error_says_pid_and_signal():
    async with trio_parallel.open_worker_context() as ctx:
        pid = await ctx.run_sync(os.getpid)
        with pytest.raises(trio_parallel.BrokenWorkerError) as info:
            await ctx.run_sync(_jobs.kill_self, signal.SIGKILL)
    assert info.value.pid == pid
    assert info.value.signal == signal.SIGKILL and info.value.exitcode is None


async def test_a_lambda_without_cloudpickle_gets_a_hint(monkeypatch):
    from tpar import _abc
    monkeypatch.setattr(_abc, "cloudpickle", None)
    async with trio_parallel.open_worker_context() as ctx:
        with pytest.raises(Exception) as info:
            await ctx.run_sync(lambda: 1)
        text = str(info.value) + " ".join(getattr(info.value, "__notes__", ()))
        assert "pip install cloudpickle" in text
        assert await ctx.run_sync(_jobs.add, 2, 2) == 4  # the worker is fine


# ------------------------------------------------------------ Manager proxies

MANAGER = """
import os, sys, trio
import tpar
import _jobs

async def main():
    async with tpar.open_worker_context() as ctx:
        if sys.argv[1] == "late":
            # the worker starts before this process imports multiprocessing:
            # it gets the authkey with its next job
            assert "multiprocessing.process" not in sys.modules
            await ctx.run_sync(os.getpid)
        import multiprocessing
        with multiprocessing.get_context("spawn").Manager() as m:
            ev = m.Event()
            print(await ctx.run_sync(_jobs.set_event, ev), ev.is_set(), flush=True)
            d = m.dict()
            await ctx.run_sync(_jobs.dict_set, d, "k", 5)
            print(d["k"], flush=True)

if __name__ == "__main__":
    trio.run(main)
"""


@pytest.mark.parametrize("when", ["early", "late"])
def test_manager_proxies_work_as_arguments(tmp_path, when):
    script = tmp_path / "manager.py"
    script.write_text(MANAGER)
    proc = subprocess.run([sys.executable, str(script), when], capture_output=True,
                          text=True, env=subprocess_env(), timeout=90, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "True", "5"], proc.stderr


# ------------------------------------------------------------------ retire

ALL_TYPES = ["spawn", "forkserver", "fork"]


@pytest.mark.parametrize("wtype", ALL_TYPES)
async def test_retire_runs_after_the_result_and_a_hanging_one_is_killed_at_exit(wtype):
    with pytest.raises(trio_parallel.BrokenWorkerError, match="SIGKILL") as info:
        async with trio_parallel.open_worker_context(
                worker_type=wtype, retire=_jobs.retire_hang, grace_period=0.5) as ctx:
            with trio.fail_after(30):  # the result comes while retire() hangs
                pid = await ctx.run_sync(os.getpid)
    assert info.value.pid == pid and info.value.signal == signal.SIGKILL
    assert gone(pid)


@pytest.mark.parametrize("wtype", ALL_TYPES)
async def test_a_raising_retire_is_broken_worker_error_at_the_next_call(wtype):
    # ... and at the exit too: the second worker's retire() raised as well
    with pytest.raises(trio_parallel.BrokenWorkerError, match="retire"):
        async with trio_parallel.open_worker_context(worker_type=wtype,
                                                     retire=_jobs.retire_raise) as ctx:
            await _raising_retire_at_the_next_call(ctx)


async def _raising_retire_at_the_next_call(ctx):
    pid = await ctx.run_sync(os.getpid)  # its result came before retire()
    with trio.fail_after(30):
        while not gone(pid):  # the reaper finds it dead, and reaps it
            await trio.sleep(0.05)
    with pytest.raises(trio_parallel.BrokenWorkerError, match="retire") as info:
        await ctx.run_sync(os.getpid)
    assert info.value.pid == pid and info.value.exitcode == 75
    # said once: the next call gets a new worker
    assert await ctx.run_sync(_jobs.add, 1, 1) == 2


async def test_a_raising_retire_found_at_the_send_is_broken_worker_error(monkeypatch):
    # The dead worker is found by the job's send (EPIPE), not by the
    # reaper: the same BrokenWorkerError, once, then a fresh worker.
    from test_run_sync import spy_release_dead, until_dead
    seen = spy_release_dead(monkeypatch)
    async with trio_parallel.open_worker_context(retire=_jobs.retire_raise) as ctx:
        for _ in range(20):
            pid = await ctx.run_sync(os.getpid)  # its retire() raises after
            await until_dead(pid, 0.001)
            with pytest.raises(trio_parallel.BrokenWorkerError, match="retire") as info:
                await ctx.run_sync(os.getpid)
            assert info.value.pid == pid and info.value.exitcode == 75
            if seen:
                break
        assert seen == [pid]


async def test_a_raising_retire_is_broken_worker_error_at_context_exit():
    with pytest.raises(trio_parallel.BrokenWorkerError, match="retire") as info:
        async with trio_parallel.open_worker_context(retire=_jobs.retire_raise) as ctx:
            pid = await ctx.run_sync(os.getpid)
            with trio.fail_after(30):
                while not gone(pid):
                    await trio.sleep(0.05)
    assert info.value.pid == pid and info.value.exitcode == 75


@pytest.mark.parametrize("wtype", ALL_TYPES)
async def test_retire_true_is_never_a_lost_job(wtype):
    """A job sent to a worker whose retire() said yes after its last result
    is not run there: the worker says so, and another worker runs it."""
    async with trio_parallel.open_worker_context(worker_type=wtype,
                                                 retire=_jobs.always_retire) as ctx:
        pids = []
        for _ in range(5):
            pids.append(await ctx.run_sync(os.getpid))
        assert len(set(pids)) == 5


# ------------------------------------------------------- stdout and argv

STDOUT = """
import sys, trio
import tpar

def job(i):
    print("job says", i, flush=True)
    return i

async def main():
    async with tpar.open_worker_context(worker_type=sys.argv[1]) as ctx:
        for i in range(2):
            await ctx.run_sync(job, i)
    print("parent done", flush=True)

if __name__ == "__main__":
    print("parent starts")  # buffered here at a FORK: written once
    trio.run(main)
"""


@pytest.mark.parametrize("wtype", ALL_TYPES)
def test_a_worker_s_stdout_is_the_program_s_stdout(tmp_path, wtype):
    script = tmp_path / "out.py"
    script.write_text(STDOUT)
    proc = subprocess.run([sys.executable, str(script), wtype], capture_output=True,
                          text=True, env=subprocess_env(), timeout=90, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["parent starts", "job says 0", "job says 1",
                                        "parent done"], (proc.stdout, proc.stderr)
    assert "job says" not in proc.stderr


ARGV = """
import sys, trio
import tpar
import _jobs

FIRST = sys.argv[1]  # at import time, in every worker too

def job():
    return FIRST, list(sys.argv)

async def main():
    async with tpar.open_worker_context(worker_type=FIRST) as ctx:
        first, argv = await ctx.run_sync(job)
        assert first == FIRST and argv == sys.argv, (first, argv, sys.argv)
    print("ok", flush=True)

if __name__ == "__main__":
    trio.run(main)
"""


@pytest.mark.parametrize("wtype", ALL_TYPES)
def test_sys_argv_is_the_parent_s_while_main_is_imported(tmp_path, wtype):
    script = tmp_path / "argv.py"
    script.write_text(ARGV)
    proc = subprocess.run([sys.executable, str(script), wtype, "two words", "-x"],
                          capture_output=True, text=True, env=subprocess_env(), timeout=90,
                          cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["ok"]
    assert "Traceback" not in proc.stderr, proc.stderr
