"""As _preload_mod, for WorkerType.FORK, which imports preload modules in
the calling process (the pytest process)."""
import os

IMPORTED_IN = os.getpid()
