"""Job functions for the tests: importable by reference in the workers
(this directory is on the parent's sys.path, which the workers get)."""

import os
import signal
import threading
import time

import trio

STATE = {}


def add(a, b):
    return a + b


def pid():
    return os.getpid()


def sleep_pid(seconds):
    time.sleep(seconds)
    return os.getpid()


def raise_(exc):
    raise exc


def exit_(code):
    os._exit(code)


def kill_self(sig):
    os.kill(os.getpid(), sig)
    time.sleep(5)


def return_lock():
    return threading.Lock()


def echo(x):
    return x


def state_get(key):
    return STATE.get(key)


def init_state():
    STATE["init"] = os.getpid()


def init_fail():
    raise RuntimeError("init says no")


def always_retire():
    return True


def touch(path):
    with open(path, "w") as f:
        f.write("ran")


async def coro_fn():
    return 1


class Unpicklable:
    def __reduce__(self):
        raise TypeError("Unpicklable refuses to be pickled")


class CustomError(Exception):
    def __init__(self, a, b):
        super().__init__(a, b)
        self.a, self.b = a, b


def big_with_lock(n):
    """A large value that will not pickle: the lock comes after the bytes."""
    return (b"y" * n, threading.Lock())


def raise_big(n):
    raise ValueError(b"e" * n)


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def lane_fds():
    """The worker's lanes: its open memfds named tpar-lane."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:tpar-lane"):
                out.append(int(fd))
        except OSError:
            pass
    return out


def sleep_lanes(seconds):
    time.sleep(seconds)
    return os.getpid(), lane_fds()


def sigint_child():
    """Starts a Python child, sends it SIGINT, returns its exit status."""
    import subprocess
    import sys
    p = subprocess.Popen([sys.executable, "-c",
                          "import sys, time; print(1, flush=True); time.sleep(30)"],
                         stdout=subprocess.PIPE)
    p.stdout.readline()
    p.send_signal(signal.SIGINT)
    try:
        return p.wait(timeout=10)
    finally:
        p.kill()
        p.wait()


def raise_chained():
    """ValueError from KeyError: a cause, and the KeyError as context."""
    try:
        raise KeyError("inner")
    except KeyError as e:
        raise ValueError("outer") from e


def raise_in_handler():
    """ValueError raised while handling a KeyError: a context, no cause."""
    try:
        raise KeyError("first")
    except KeyError:
        raise ValueError("second")


def set_event(ev):
    """A Manager's Event proxy, set from the worker."""
    ev.set()
    return ev.is_set()


def dict_set(d, key, value):
    d[key] = value


def retire_hang():
    time.sleep(3600)


def retire_raise():
    raise RuntimeError("retire says no")


def argv():
    import sys
    return list(sys.argv)


def square(x):
    return x * x


def sleep_then(pair):
    """(seconds, value) -> value, after sleeping."""
    time.sleep(pair[0])
    return pair[1]


def fail_on(pair):
    """(bad, x) -> x, or ValueError when x == bad."""
    bad, x = pair
    if x == bad:
        raise ValueError(f"bad item {x}")
    return x


def nested_fork_calls(n):
    """Runs n calls in a FORK context opened inside this job (a worker that
    forks workers of its own); returns their results and the workers' pids."""
    import tpar

    async def main():
        out, pids = [], set()
        async with tpar.open_worker_context(worker_type=tpar.WorkerType.FORK) as ctx:
            for i in range(n):
                out.append(await ctx.run_sync(square, i))
                pids.add(await ctx.run_sync(pid))
        return out, sorted(pids)

    return trio.run(main)
