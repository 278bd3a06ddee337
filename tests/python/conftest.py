"""Makes the tpar of a meson build dir importable: scripts/test runs
`python3 -m pytest tests/python` with TPAR_BUILD_DIR=<build dir>.  Without
it the installed tpar is tested."""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD = os.environ.get("TPAR_BUILD_DIR")
if BUILD:
    BUILD = os.path.abspath(BUILD)
    sys.path.insert(0, os.path.join(BUILD, "python"))
    os.environ["TPAR_WORKER"] = os.path.join(BUILD, "pyworker", "tpar-worker")
sys.path.insert(0, HERE)  # _jobs, importable in the workers too


def subprocess_env():
    """Environment for a child Python that must import this same tpar."""
    env = dict(os.environ)
    paths = [HERE]
    if BUILD:
        paths.insert(0, os.path.join(BUILD, "python"))
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def remote_traceback(exc):
    """The worker's traceback text of an exception run_sync re-raised: a
    note (3.11+), or the RemoteTraceback at the end of its chain (3.10)."""
    notes = [n for n in getattr(exc, "__notes__", ()) if "tpar: raised in a worker" in n]
    if notes:
        return notes[0]
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if type(exc).__name__ == "RemoteTraceback":
            return str(exc)
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return None
