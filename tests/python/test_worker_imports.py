"""What a worker imports to run pickle jobs, in an interpreter whose start-up
imports nothing extra (a venv with no .pth files: the machine's own python3
may import functools and collections from site-packages .pth files)."""

import os
import site
import subprocess
import sys
import textwrap
import venv

import pytest

from conftest import subprocess_env


@pytest.fixture(scope="module")
def clean_python(tmp_path_factory):
    """A venv's python that sees this interpreter's packages through
    PYTHONPATH (plain path entries: no .pth file runs)."""
    d = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=False, symlinks=True).create(d)
    env = subprocess_env()
    paths = env["PYTHONPATH"].split(os.pathsep) + site.getsitepackages()
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return str(d / "bin" / "python"), env


def test_pickle_jobs_do_not_import_functools(tmp_path, clean_python):
    python, env = clean_python
    script = tmp_path / "prog.py"
    script.write_text(textwrap.dedent("""
        import sys

        if __name__ == "__main__":
            import trio
            import tpar
            import _light_jobs as jobs

            async def main():
                heavy = ("functools", "collections", "types", "operator")
                print(await tpar.run_sync(jobs.loaded, "_pickle", *heavy))
                # the stand-in is gone: a job that imports functools gets it
                print(await tpar.run_sync(jobs.real_functools))
                print(await tpar.run_sync(jobs.loaded, "functools"))

            trio.run(main)
    """))
    proc = subprocess.run([python, str(script)], capture_output=True, text=True,
                          env=env, timeout=60, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:3] == ["['_pickle']", "(True, 6)", "['functools']"]
