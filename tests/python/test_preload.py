"""preload= and prestart= (issue 5): modules imported before a worker's
first job, and workers started in the background before the first call."""

import os
import subprocess
import sys
import textwrap

import pytest
import trio

import _jobs
from conftest import remote_traceback
import _pjobs
import tpar as trio_parallel
from conftest import subprocess_env
from test_run_sync import counts, gone

WT = trio_parallel.WorkerType
ALL_TYPES = list(WT)


def notes(exc):
    return " ".join(getattr(exc, "__notes__", []))


# ------------------------------------------------------------- validation

@pytest.mark.parametrize("kwargs, exc", [
    ({"preload": 3}, TypeError),
    ({"preload": [1]}, TypeError),
    ({"preload": b"os"}, TypeError),
    ({"preload": ["os", None]}, TypeError),
    ({"preload": ""}, ValueError),
    ({"preload": "os,sys"}, ValueError),
    ({"preload": ["a..b"]}, ValueError),
    ({"preload": ".relative"}, ValueError),
    ({"preload": "1abc"}, ValueError),
    ({"prestart": -1}, ValueError),
    ({"prestart": 1.5}, TypeError),
    ({"prestart": True}, TypeError),
    ({"prestart": "2"}, TypeError),
])
async def test_preload_and_prestart_are_validated(kwargs, exc):
    with pytest.raises(exc, match="preload|prestart"):
        async with trio_parallel.open_worker_context(**kwargs):
            pass  # pragma: no cover
    with pytest.raises(exc, match="preload|prestart"):
        async with trio_parallel.cache_scope(**kwargs):
            pass  # pragma: no cover
    with pytest.raises(exc, match="preload|prestart"):
        trio_parallel.configure_default_context(**kwargs)


async def test_preload_accepts_a_name_or_an_iterable_of_names():
    async with trio_parallel.open_worker_context(preload="json") as ctx:
        assert ctx.preload == ("json",)
    async with trio_parallel.open_worker_context(
            preload=(m for m in ["json", "email.mime", "json"])) as ctx:
        assert ctx.preload == ("json", "email.mime")


# ---------------------------------------------------------------- preload

@pytest.mark.parametrize("wtype", ALL_TYPES)
async def test_preload_is_imported_before_the_first_job(wtype):
    name = "_preload_fork_mod" if wtype is WT.FORK else "_preload_mod"
    if wtype is not WT.FORK:
        assert name not in sys.modules  # the workers cannot inherit it from us
    async with trio_parallel.open_worker_context(worker_type=wtype, preload=name) as ctx:
        pid, imported_in = await ctx.run_sync(_pjobs.imported_in, name)
        assert pid != os.getpid()
        if wtype is WT.SPAWN:
            assert imported_in == pid  # in the worker itself
        elif wtype is WT.FORKSERVER:
            assert imported_in == ctx._cache.launcher.zygote.pid  # once, in the zygote
        else:
            assert imported_in == os.getpid()  # once, in this process
            assert name in sys.modules


@pytest.mark.parametrize("wtype", [WT.SPAWN, WT.FORKSERVER])
async def test_preload_comes_before_init_and_is_not_a_job_for_retire(wtype):
    async with trio_parallel.open_worker_context(
            worker_type=wtype, preload=["_preload_mod"], init=_pjobs.init_sees_preload,
            retire=_jobs.always_retire) as ctx:
        pids = set()
        for _ in range(3):
            pid, imported_in = await ctx.run_sync(_pjobs.imported_in, "_preload_mod")
            assert imported_in is not None
            pids.add(pid)
        assert len(pids) == 3  # one job per worker: the preload did not retire it
        assert await ctx.run_sync(_pjobs.state, "init saw") is True


@pytest.mark.parametrize("wtype", ALL_TYPES)
async def test_preload_of_a_missing_module_raises_in_the_caller(wtype):
    async with trio_parallel.open_worker_context(
            worker_type=wtype, preload=["json", "_no_such_module_tpar"]) as ctx:
        with trio.fail_after(60):
            for _ in range(2):  # every new worker says so, none is kept
                with pytest.raises(ModuleNotFoundError, match="_no_such_module_tpar") as info:
                    await ctx.run_sync(_jobs.pid)
                if sys.version_info >= (3, 11):
                    assert "preload" in notes(info.value)
                assert counts(ctx) == (0, 0)


@pytest.mark.parametrize("wtype", ALL_TYPES)
async def test_preload_of_a_failing_module_raises_its_error(wtype):
    async with trio_parallel.open_worker_context(worker_type=wtype,
                                                 preload="_preload_bad") as ctx:
        with trio.fail_after(60):
            with pytest.raises(ValueError, match="refuses to be imported") as info:
                await ctx.run_sync(_jobs.pid)
    if wtype is not WT.FORK:
        assert "_preload_bad.py" in remote_traceback(info.value)


async def test_cancelled_while_a_worker_preloads_keeps_the_worker():
    async with trio_parallel.open_worker_context(preload="_preload_slow") as ctx:
        with trio.move_on_after(0.2) as scope:
            await ctx.run_sync(_jobs.pid)  # waits for the 0.5 s import
        assert scope.cancelled_caught
        assert counts(ctx) == (1, 0)  # back in the cache, still importing
        (kept, _), = ctx._cache.idle
        pid, imported_in = await ctx.run_sync(_pjobs.imported_in, "_preload_slow")
        assert pid == imported_in == kept.pid


# --------------------------------------------------------------- prestart

@pytest.mark.parametrize("wtype", ALL_TYPES)
async def test_prestart_fills_the_cache_before_any_call(wtype):
    async with trio_parallel.open_worker_context(worker_type=wtype, prestart=2) as ctx:
        with trio.fail_after(60):
            while counts(ctx) != (2, 0):
                await trio.sleep(0.005)
        started = {w.pid for w, _ in ctx._cache.idle}
        assert await ctx.run_sync(_jobs.pid) in started
        assert counts(ctx) == (2, 0)
    assert all(gone(pid) for pid in started)


async def test_a_call_during_a_forkserver_prestart_takes_a_prestarted_worker():
    async with trio_parallel.open_worker_context(worker_type=WT.FORKSERVER,
                                                 prestart=2) as ctx:
        pid = await ctx.run_sync(_jobs.pid)  # the zygote is still starting
        with trio.fail_after(60):
            while ctx.statistics().idle_workers < 2:
                await trio.sleep(0.005)
        assert counts(ctx) == (2, 0)  # not a third worker
        assert pid in {w.pid for w, _ in ctx._cache.idle}


@pytest.mark.parametrize("wtype", ALL_TYPES)
async def test_prestart_with_preload(wtype):
    name = "_preload_fork_mod" if wtype is WT.FORK else "_preload_mod"
    async with trio_parallel.open_worker_context(worker_type=wtype, prestart=1,
                                                 preload=name) as ctx:
        with trio.fail_after(60):
            while counts(ctx) != (1, 0):
                await trio.sleep(0.005)
        started = {w.pid for w, _ in ctx._cache.idle}
        pid, imported_in = await ctx.run_sync(_pjobs.imported_in, name)
        assert pid in started and imported_in is not None


async def test_closing_a_context_during_a_forkserver_prestart():
    async with trio_parallel.open_worker_context(worker_type=WT.FORKSERVER,
                                                 prestart=3) as ctx:
        pass
    assert ctx._cache.launcher.zygote is None and counts(ctx) == (0, 0)
    assert not ctx._cache.prestarter.is_alive()


async def test_cache_scope_prestart():
    async with trio_parallel.cache_scope(prestart=1):
        ctx = trio_parallel._impl._scoped_context()
        started = {w.pid for w, _ in ctx._cache.idle}
        assert len(started) == 1  # SPAWN: spawned at once, READY read later
        assert await trio_parallel.run_sync(_jobs.pid) in started


def test_configure_default_context_prestart_and_preload(tmp_path):
    script = tmp_path / "prog.py"
    script.write_text(textwrap.dedent("""
        import os, sys, trio
        import tpar as trio_parallel

        def job():
            return os.getpid(), "_preload_mod" in sys.modules

        if __name__ == "__main__":
            trio_parallel.configure_default_context(prestart=2, preload="_preload_mod")
            # no trio.run yet: the workers are on their way all the same
            assert trio_parallel.default_context_statistics().idle_workers == 2
            started = {w.pid for w, _ in trio_parallel._impl._default_ctx._cache.idle}
            pid, preloaded = trio.run(trio_parallel.run_sync, job)
            print(pid in started, preloaded, "_preload_mod" in sys.modules)
    """))
    env = subprocess_env()
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env=env, timeout=60, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "True", "False"]
