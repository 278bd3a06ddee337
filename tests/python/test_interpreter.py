"""The package's workers run the very Python that imported tpar: its
executable (prefix, venv), its libpython, and, for a Python with no shared
libpython, its own executable with the worker core loaded as an extension
module (TPAR_LIBPYTHON="" makes any Python take that path)."""

import json
import os
import subprocess
import sys
import sysconfig
import textwrap

import pytest

import tpar as trio_parallel
from conftest import subprocess_env


def where():
    import os
    import sys
    return {
        "version": sys.version,
        "prefix": sys.prefix,
        "base_prefix": sys.base_prefix,
        "executable": sys.executable,
        "exe": os.readlink("/proc/self/exe"),
        "libpython": sorted({line.split()[-1] for line in open("/proc/self/maps")
                             if "/libpython3" in line}),
    }


def mapped_libpython():
    return sorted({line.split()[-1] for line in open("/proc/self/maps")
                   if "/libpython3" in line})


@pytest.mark.parametrize("worker_type", [trio_parallel.WorkerType.SPAWN,
                                         trio_parallel.WorkerType.FORKSERVER])
async def test_worker_is_this_interpreter(worker_type):
    async with trio_parallel.open_worker_context(worker_type=worker_type) as ctx:
        w = await ctx.run_sync(where)
    assert w["version"] == sys.version
    assert w["prefix"] == sys.prefix  # a venv's, in a venv
    assert w["base_prefix"] == sys.base_prefix
    assert w["executable"] == sys.executable
    # This process's libpython, when it has one; the same file either way
    # as what sysconfig names.
    mine = mapped_libpython()
    if mine:
        assert w["libpython"] == mine
    so = os.path.join(sysconfig.get_config_var("LIBDIR") or "",
                      sysconfig.get_config_var("INSTSONAME") or "")
    if os.environ.get("TPAR_LIBPYTHON") is None and os.path.isfile(so):
        assert w["libpython"] == [os.path.realpath(so)]


SCRIPT = """
    import json, sys, trio
    import tpar as trio_parallel
    from test_interpreter import where

    async def main():
        out = {}
        for t in ("SPAWN", "FORKSERVER"):
            wt = getattr(trio_parallel.WorkerType, t)
            async with trio_parallel.open_worker_context(worker_type=wt) as ctx:
                out[t] = await ctx.run_sync(where)
        print(json.dumps(out))

    if __name__ == "__main__":
        trio.run(main)
"""


def test_no_shared_libpython_runs_inside_the_executable(tmp_path):
    script = tmp_path / "prog.py"
    script.write_text(textwrap.dedent(SCRIPT))
    env = subprocess_env()
    env["TPAR_LIBPYTHON"] = ""
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env=env, timeout=120, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    for t, w in out.items():
        assert w["version"] == sys.version, t
        assert w["prefix"] == sys.prefix, t
        assert w["executable"] == sys.executable, t
        # The worker process is the interpreter's executable itself.
        assert w["exe"] == os.path.realpath(sys.executable), t
