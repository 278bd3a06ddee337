"""Job functions of test_faults.py (issue 12): importable in the workers."""
import os
import signal
import subprocess


def sleeper(where, then=None):
    """Starts `sleep 300` and returns its pid; then="kill" SIGKILLs the
    worker instead (the pid is in the file `where`)."""
    p = subprocess.Popen(["sleep", "300"], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(where, "w") as f:
        f.write(str(p.pid))
    if then == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    return p.pid


def retire():
    return True
