"""Worker processes: starting each kind (a launcher per WorkerType), waiting
on one for its result, and stopping them (kill, reap, the graveyard, the
parked forkservers).  Knows nothing of caches or contexts."""

import importlib
import os
import sys
import threading
import time

import trio
from trio.lowlevel import cancel_shielded_checkpoint, wait_readable, wait_writable

from . import _core
from ._abc import WorkerType, broken, note, why
from ._locate import worker_argv

YIELD_SPIN_S = float(os.environ.get("TPAR_YIELD_SPIN_US", 50)) * 1e-6
_monotonic = time.monotonic
_perf = time.perf_counter


# --------------------------------------------------------------- launchers

def refuse_while_bootstrapping():
    """A worker re-imports the parent's script as __mp_main__.  A script
    that starts jobs at import time (no `if __name__ == "__main__":` guard)
    would have every worker start more workers, without end; stop that as
    multiprocessing does.  tpar-worker's helper module says when it is
    importing the script."""
    helper = sys.modules.get("_tpar_worker")
    if helper is not None and getattr(helper, "bootstrapping", False):
        helper.refused = True  # the worker exits, and its parent says why
        raise RuntimeError(
            "tpar: a worker process is importing your script as __main__, and the "
            "script started jobs while being imported.  Guard the script's entry "
            "point with `if __name__ == \"__main__\":`.")


def import_all(names):
    """Imports the preload modules here (FORK: in the parent, once)."""
    for name in names:
        try:
            importlib.import_module(name)
        except BaseException as exc:
            note(exc, f"tpar: preload={names!r}: importing {name!r} failed")
            raise


class SpawnLauncher:
    """SPAWN: a fresh tpar-worker per worker."""

    starts_at_once = False  # a worker says READY only after Python's start-up
    zygote = None

    def __init__(self, extra, preload):
        self.extra = extra

    def start(self):
        return _core.spawn(worker_argv(self.extra))

    def warm_up(self):
        """Prepares for a prestart; True when the workers should be started
        on a thread of their own."""
        return False

    def close(self):
        """No more workers: start() raises trio.ClosedResourceError."""

    def stop(self, park=False):
        pass

    def forget(self):
        """In a forked child: drop what belongs to the parent."""


class ForkLauncher(SpawnLauncher):
    """FORK: fork this process (preload imported here, before the first)."""

    starts_at_once = True

    def __init__(self, extra, preload):
        self.preload = preload
        self.pending_preload = bool(preload)
        self.idle = float(extra[1]) if extra else 0.0

    def start(self):
        if self.pending_preload:
            import_all(self.preload)
            self.pending_preload = False
        # The child shares our stdout: what our buffers hold is written
        # once, by us, not again by the child (as multiprocessing does).
        for f in (sys.stdout, sys.stderr):
            try:
                f.flush()
            except Exception:
                pass
        return _core.fork_worker(
            threading.current_thread() is threading.main_thread(), self.idle)


class ForkserverLauncher(SpawnLauncher):
    """FORKSERVER: a zygote started on demand (or a parked one taken), a
    fork of it per worker, one restart when it has died."""

    def __init__(self, extra, preload):
        extra = extra + ("--zygote",)
        if preload:
            extra += ("--preload", ",".join(preload))
        self.extra = extra
        self.zygote = None
        self.key = None  # the argv the zygote was started with
        self.lock = threading.Lock()
        self.closed = False

    def _zygote_locked(self):
        if self.zygote is None:
            self.key = tuple(worker_argv(self.extra))
            self.zygote = start_zygote(self.key)
        return self.zygote

    def start(self):
        with self.lock:
            if self.closed:
                raise trio.ClosedResourceError("this worker context is closed")
            z = self._zygote_locked()
            pid = z.pid
            try:
                return z.fork()  # restarts a dead zygote once itself
            except BrokenPipeError as exc:  # it died, and so did the next one
                z.stop()
                self.zygote = None
                raise broken(
                    f"the forkserver (tpar-worker --zygote, pid {pid}) died, and its "
                    f"restart died before it could fork a worker: see its message on "
                    f"stderr", pid, None) from exc

    def warm_up(self):
        """The zygote is spawned here, and a thread asks it for the workers,
        so the caller never waits for its start-up."""
        with self.lock:
            if not self.closed:
                self._zygote_locked()
        return True

    def close(self):
        with self.lock:
            self.closed = True

    def stop(self, park=False):
        """Stops the forkserver, or with park=True keeps it for the next
        context of the same configuration (park_zygote)."""
        with self.lock:
            z, self.zygote = self.zygote, None
        if z is not None:
            if park:
                park_zygote(z, self.key)
            else:
                z.stop()

    def forget(self):
        if self.zygote is not None:
            self.zygote.stop()  # in a child: closes the socket, kills nothing


LAUNCHERS = {WorkerType.SPAWN: SpawnLauncher, WorkerType.FORK: ForkLauncher,
             WorkerType.FORKSERVER: ForkserverLauncher}


# ------------------------------------------------------------ forkservers
# A FORKSERVER context that closes leaves its zygote here (all its workers
# are gone by then), and the next context that would start a zygote with
# the same command line (sys.path, __main__, preload, idle timeout) takes
# it instead: opening and closing contexts does not pay for a zygote's
# start-up (~60 ms) each time, as multiprocessing's forkserver, which lives
# as long as the process, does not either.  One is kept, the most recently
# parked; the rest stop.  Stopped at exit; a forked child forgets them.

_parked_lock = threading.Lock()
_parked = {}  # zygote argv (tuple) -> Zygote


def start_zygote(argv):
    """A parked zygote started with this argv, else a new one."""
    with _parked_lock:
        z = _parked.pop(tuple(argv), None)
    if z is not None:
        if z.pid > 0:
            return z
        z.stop()
    return _core.zygote_start(argv)


def park_zygote(z, key):
    if z.pid <= 0:
        z.stop()
        return
    with _parked_lock:
        old = [o for k, o in _parked.items() if k != key] + (
            [_parked[key]] if key in _parked else [])
        _parked.clear()
        _parked[key] = z
    for o in old:
        o.stop()


def stop_parked():
    with _parked_lock:
        zs = list(_parked.values())
        _parked.clear()
    for z in zs:
        z.stop()


def forget_parked():
    """In a forked child (no lock taken: another thread may have held it)."""
    for z in list(_parked.values()):
        z.stop()
    _parked.clear()


# ---------------------------------------------------------------- stopping
# Workers of a default context replaced by configure_default_context, whose
# exit status has not been collected yet (a context keeps its own).  Reaped
# without blocking on the next acquire, and for good at exit: no zombie is
# left behind.

graveyard = []
graveyard_lock = threading.Lock()


def bury(w):
    w.close()
    if w.reap(False) is None:
        with graveyard_lock:
            graveyard.append(w)


def reap_graveyard():
    with graveyard_lock:
        graveyard[:] = [w for w in graveyard if w.reap(False) is None]


def kill(w):
    w.kill()
    w.reap(True)
    w.close()


def collect(workers, deadline):
    """One pass of reaping; past the deadline the rest are killed.  True
    when every worker has been reaped."""
    late = _monotonic() >= deadline
    done = True
    for w in workers:
        if w.status is None and w.reap(False) is None:
            if late:
                w.kill()
                w.reap(True)
            else:
                done = False
    return done


def raise_if_unclean(workers):
    bad = [w for w in workers if w.status != 0]
    if bad:
        raise broken(
            f"graceful shutdown failed: {len(bad)} worker(s) did not exit cleanly ("
            + ", ".join(f"{w.pid} {_core.describe_status(w.status)}{why(w.status)}"
                        for w in bad) + ")",
            bad[0].pid, bad[0].status)


# ----------------------------------------------------------------- waiting

async def finish(w, warm=True):
    """Writes what is left of the job, then waits for its result (yielding
    to other tasks and polling for a while first when the worker is warm)."""
    try:
        while w.pending:
            await wait_writable(w.to_fd)
            w.flush()
    except BrokenPipeError:
        pass
    # While other tasks have work, yielding to them and polling again keeps
    # this process awake: cheaper than sleeping in epoll and being woken.
    # Not for a worker still starting up: it needs the CPU more than we do.
    # The first poll comes after a yield: a job just sent is not answered
    # yet.  The yields are not cancel points (one coroutine layer and a
    # check fewer at each); a cancellation is seen in wait_readable, at
    # most YIELD_SPIN_S late.
    if warm:
        deadline = _perf() + YIELD_SPIN_S
        await cancel_shielded_checkpoint()
    else:
        deadline = 0.0
    while True:
        res = w.recv(0.0)
        if res is not None:
            return res
        if _perf() < deadline:
            await cancel_shielded_checkpoint()
        else:
            await wait_readable(w.from_fd)
