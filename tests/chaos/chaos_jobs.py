"""Jobs for the chaos suite (tests/chaos/chaos.py)."""
import subprocess
import time


def work(i, ms):
    """Runs about ms milliseconds, then returns i."""
    time.sleep(ms / 1000)
    return i


def with_child(i, ms):
    """Starts a process that would live for minutes (it inherits the
    run's marker variable), then returns i: the child must die with its
    worker, whenever and however that worker ends."""
    subprocess.Popen(["sleep", "300"], stdin=subprocess.DEVNULL)
    time.sleep(ms / 1000)
    return i
