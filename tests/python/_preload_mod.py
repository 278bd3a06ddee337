"""A module for preload= tests: it records the process that imported it.
No test imports it in the pytest process itself (see _preload_fork_mod)."""
import os

IMPORTED_IN = os.getpid()
