"""Job functions of test_preload.py (importable by name in the workers)."""
import os
import sys

STATE = {}


def imported_in(name):
    """(this worker's pid, the pid that imported module `name` or None),
    without importing it."""
    mod = sys.modules.get(name)
    return os.getpid(), getattr(mod, "IMPORTED_IN", None)


def init_sees_preload():
    STATE["init saw"] = "_preload_mod" in sys.modules


def state(key):
    return STATE.get(key)
