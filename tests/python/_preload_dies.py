"""A module for preload= tests: a zygote that imports it kills itself
when the file named by $TPAR_TEST_ZYGOTE_DIES exists (a forkserver whose
restart dies at its start too)."""
import os
import signal

_marker = os.environ.get("TPAR_TEST_ZYGOTE_DIES")
if _marker and os.path.exists(_marker):
    os.kill(os.getpid(), signal.SIGKILL)
