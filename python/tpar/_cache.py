"""One context's workers: the LIFO cache of idle ones, the busy ones, those
leaving (exit status not collected yet), prestart, and what a new worker is
sent before its first job (its preload job, its init/retire).  Thread-safe:
configure_default_context, a prestart thread and exit touch it from other
threads than Trio's."""

import importlib
import math
import os
import pickle
import sys
import threading
import time
import weakref

import trio

from . import _core
from ._abc import (EXIT_RETIRE_FAILED, NO_KWARGS, WorkerContextStatistics, WorkerType, as_bytes,
                   broken, pickle_into)
from ._proc import LAUNCHERS, graveyard, kill, reap_graveyard, refuse_while_bootstrapping

_JOB = _core.FRAME_JOB_PICKLE
_CONFIG = _core.FRAME_CONFIG
_dump = pickle.dump
_modules = sys.modules


def authkey():
    """multiprocessing's authkey for this process, once it has one (once
    multiprocessing is imported), else None: the workers take it."""
    mp = _modules.get("multiprocessing.process")
    return None if mp is None else bytes(mp.current_process().authkey)
_monotonic = time.monotonic


def worker_extra(idle_timeout):
    """An idle worker exits by itself a little after we stop using it, so
    a worker forgotten by an idle program still goes away.  (Idle workers
    past the timeout are retired by acquire() first: we win that race.)"""
    if math.isfinite(idle_timeout):
        return ("--idle-timeout", repr(idle_timeout * 1.1 + 0.5))
    return ()


class WorkerCache:
    __slots__ = ("__weakref__", "idle_timeout", "launcher", "starts_at_once", "preload_job", "settings",
                 "by_ref", "config", "config_key", "keyless", "idle_dead", "failures",
                 "no_spin_until", "lock", "idle_cv", "idle", "busy", "dying", "running", "closed",
                 "unchecked", "prestarting", "prestarter")

    def __init__(self, worker_type, idle_timeout, preload, init, retire, by_ref):
        self.idle_timeout = idle_timeout
        self.launcher = LAUNCHERS[worker_type](worker_extra(idle_timeout), preload)
        self.starts_at_once = self.launcher.starts_at_once
        # preload: FORK imports in this process before its first fork; SPAWN
        # and FORKSERVER workers get a first job that imports the modules
        # (a FORKSERVER zygote has imported them already, so there it only
        # checks), answered before the worker's first real job is sent: an
        # import error is raised in the caller, not left in a broken worker.
        self.preload_job = None
        if preload and worker_type is not WorkerType.FORK:
            self.preload_job = pickle_into(
                as_bytes, _JOB, (all, (map(importlib.import_module, preload),), NO_KWARGS),
                True)
        # CONFIG (docs/protocol.md): init, retire, and this process's
        # multiprocessing authkey once multiprocessing is imported here.
        self.settings = {}
        if init is not bool:
            self.settings["init"] = init
        if retire is not bool:
            self.settings["retire"] = retire
        self.by_ref = by_ref
        self.config = self.config_key = None
        self.keyless = set()  # started before this process had an authkey
        self.idle_dead = set()  # died while idle, exit status not yet read
        self.failures = []  # BrokenWorkerErrors of retire()s that raised
        self.no_spin_until = 0.0  # perf_counter: the CPUs were oversubscribed
        self.lock = threading.Lock()
        self.idle_cv = threading.Condition(self.lock)  # a prestarted worker came
        self.idle = []  # (worker, idle since), most recent last: LIFO
        self.busy = set()
        self.dying = []  # retired or replaced, exit status not yet collected
        self.running = 0
        self.closed = False  # no worker is taken or kept any more
        self.unchecked = set()  # workers whose preload answer is not read yet
        self.prestarting = 0  # prestarted workers not yet in the cache
        self.prestarter = None  # the thread starting them (FORKSERVER)
        _caches.add(self)

    def statistics(self):
        with self.lock:
            return WorkerContextStatistics(len(self.idle), self.running)

    # ------------------------------------------------------------ taking

    def acquire(self):
        """A live worker: the most recently idle one, else a fresh one."""
        if graveyard:
            reap_graveyard()
        if self.dying:
            self.reap_dying()
        with self.lock:
            if self.closed:
                raise trio.ClosedResourceError("this worker context is closed")
            if self.failures:
                raise self.failures.pop(0)
            self.running += 1
            idle = self.idle
            # Stale idle workers are retired here; the workers' own idle
            # exit comes later (see worker_extra), so we win that race.
            horizon = _monotonic() - self.idle_timeout
            while idle:
                w, since = idle.pop()
                if since >= horizon:
                    # Not read for liveness here: a worker that died while
                    # idle makes the job's send fail with EPIPE, and the
                    # call goes to another (release_dead).
                    self.busy.add(w)
                    return w
                self.bury(w, locked=True)  # stale: replaced silently
                for old, _ in idle:
                    self.bury(old, locked=True)
                idle.clear()
            if self.failures:  # a stale one buried here had a raising retire()
                self.running -= 1
                raise self.failures.pop(0)
        try:
            refuse_while_bootstrapping()
            w = self._wait_prestarted() if self.prestarting else None
            if w is None:
                w = self.start_worker()
        except BaseException:
            with self.lock:
                self.running -= 1
            raise
        with self.lock:
            self.busy.add(w)
        return w

    def quiet(self, w):
        """Idle w is alive and has not retired: no end of file, no RETIRED
        notice.  (One whose preload answer may be waiting is not read.)"""
        if self.unchecked and w in self.unchecked:
            return w.alive()
        return w.recv(0.0) is None

    def _wait_prestarted(self):
        """A prestarted worker is on its way (FORKSERVER: the zygote is
        still starting): take it rather than start one more."""
        with self.idle_cv:
            while self.prestarting and not self.idle and not self.closed:
                self.idle_cv.wait(0.05)
            while self.idle:
                w, _ = self.idle.pop()
                if self.quiet(w):
                    return w
                self.bury(w, locked=True)
        return None

    def start_worker(self):
        """A new worker, its preload job and CONFIG sent (not awaited)."""
        w = self.launcher.start()
        try:
            if self.preload_job is not None:
                self.unchecked.add(w)
                w.send(_JOB, self.preload_job)
            key = authkey()
            if key is None:
                self.keyless.add(w)
            if key is not None or self.settings:
                if self.config is None or key != self.config_key:
                    settings = dict(self.settings)
                    if key is not None:
                        settings["authkey"] = key
                    self.config = pickle_into(as_bytes, _CONFIG, settings, self.by_ref)
                    self.config_key = key
                w.send(_CONFIG, self.config)
        except BrokenPipeError:
            pass  # it died already: its first job finds out why
        return w

    def send_authkey(self, w):
        """w started before this process imported multiprocessing: now it
        has, w takes its authkey (a Manager's proxies need it)."""
        key = authkey()
        if key is not None:
            self.keyless.discard(w)
            try:
                w.send(_CONFIG, as_bytes(_CONFIG, _dump, {"authkey": key}))
            except BrokenPipeError:
                pass

    # ------------------------------------------------------------ prestart

    def prestart(self, n):
        """Starts n workers without waiting for them to be ready, and puts
        them in the idle cache.  SPAWN: n posix_spawns (their READY is read
        when they are first used); FORK: n forks; FORKSERVER: the zygote is
        spawned here and a thread asks it for the n workers, so the caller
        never waits for the zygote's start-up.  Best effort: an error stops
        the prestart, and the first call that needs a worker raises it."""
        if n <= 0:
            return
        self.prestarting = n
        try:
            refuse_while_bootstrapping()
            if self.launcher.warm_up():
                t = threading.Thread(target=self._prestart_some, args=(n,),
                                     name="tpar-prestart", daemon=True)
                self.prestarter = t
                t.start()
            else:
                self._prestart_some(n)
        except Exception:
            self.prestarting = 0

    def _prestart_some(self, n):
        try:
            for _ in range(n):
                if self.closed:
                    return
                try:
                    w = self.start_worker()
                except Exception:
                    return
                with self.lock:
                    self.prestarting -= 1
                    if not self.closed:
                        self.idle.append((w, _monotonic()))
                        self.idle_cv.notify_all()
                        continue
                self.bury(w)
        finally:
            with self.lock:
                self.prestarting = 0
                self.idle_cv.notify_all()

    # --------------------------------------------------------- giving back

    def release(self, w, keep):
        with self.lock:
            self.running -= 1
            self.busy.discard(w)
            if keep and not self.closed:
                self.idle.append((w, _monotonic()))
                if not _watching:
                    _watch()
                return
        self.bury(w)

    def prune(self):
        """The reaper's pass: idle workers that died or outstayed the idle
        timeout go, leaving ones are reaped.  True while there is anything
        left to watch."""
        if self.dying:
            self.reap_dying()
        with self.lock:
            if self.closed:
                return False
            horizon = _monotonic() - self.idle_timeout
            keep = []
            for w, since in self.idle:
                if since < horizon:
                    self.bury(w, locked=True)
                elif self.quiet(w):
                    keep.append((w, since))
                else:
                    self.bury_dead(w)
            self.idle[:] = keep
            return bool(keep or self.dying)

    def release_dead(self, w):
        """w, taken by a call, was found dead before the job reached it
        (it died or retired while idle): replaced, and if its retire()
        raised, the call (or the next) raises BrokenWorkerError."""
        with self.lock:
            self.running -= 1
            self.busy.discard(w)
            self.bury_dead(w)

    def release_killed(self, w):
        self.unchecked.discard(w)
        self.keyless.discard(w)
        kill(w)
        self.release(w, False)

    def bury(self, w, locked=False):
        """Lets w go: its pipes close (it exits at end of file) and its exit
        status is collected now or by a later reap_dying / close."""
        self.unchecked.discard(w)
        self.keyless.discard(w)
        w.close()
        if w.reap(False) is not None:
            self.check_reaped(w)
        else:
            if locked:
                self.dying.append(w)
            else:
                with self.lock:
                    self.dying.append(w)
            if not _watching:
                _watch()

    def reap_dying(self):
        with self.lock:
            still = []
            for w in self.dying:
                if w.reap(False) is None:
                    still.append(w)
                else:
                    self.check_reaped(w)
            self.dying[:] = still

    def bury_dead(self, w):
        """w died while idle (lock held): replaced, and if its retire()
        raised, the next call or the close raises BrokenWorkerError."""
        self.idle_dead.add(w)
        self.bury(w, locked=True)

    def check_reaped(self, w):
        if w in self.idle_dead:
            self.idle_dead.discard(w)
            st = w.status
            if os.WIFEXITED(st) and os.WEXITSTATUS(st) == EXIT_RETIRE_FAILED:
                self.failures.append(broken(
                    f"worker process {w.pid}: its retire() raised (the traceback is on "
                    f"stderr)", w.pid, st))

    # ------------------------------------------------------------- closing

    def close_idle(self):
        """Marks the cache closed; returns its idle workers, pipes closed
        (end of file tells a worker to exit 0), and those already leaving."""
        self.launcher.close()
        with self.lock:
            self.closed = True
            workers = [w for w, _ in self.idle]
            self.idle.clear()
            dying, self.dying = self.dying, []
            for w in workers:
                self.unchecked.discard(w)
                self.keyless.discard(w)
        for w in workers:
            w.close()
        return workers, dying

    def forget(self):
        """In a forked child: the parent's workers are not ours.  Forget them
        without touching them (a Worker only kills and reaps in the process
        that spawned it), but close our copies of their pipes: a worker must
        see end of file when the parent closes its end, whatever children
        the parent forked (a FORK worker among them).  No lock is taken: one
        may have been held by another thread at the fork."""
        for w in [w for w, _ in list(self.idle)] + list(self.busy) + list(self.dying):
            w.close()
        self.launcher.forget()


# ------------------------------------------------------------------ reaper
# One daemon thread per process, awake while some cache has idle or leaving
# workers: every REAP_INTERVAL_S it prunes them (WorkerCache.prune) and
# reaps the graveyard.  So a worker that exits on its idle timeout (or is
# killed) leaves statistics() and is reaped within about a second, whether
# or not the program calls again: no zombie stays behind.

REAP_INTERVAL_S = 0.25
_caches = weakref.WeakSet()
_wake = threading.Event()
_watching = False  # the reaper is looping: no need to wake it
_reaper_pid = None


def _watch():
    """Wakes the reaper (starting it in this process if need be)."""
    global _reaper_pid, _watching
    _watching = True
    if _reaper_pid != os.getpid():
        _reaper_pid = os.getpid()
        threading.Thread(target=_reap_forever, name="tpar-reaper", daemon=True).start()
    _wake.set()


def _prune_all():
    busy = False
    for cache in list(_caches):
        busy |= cache.prune()
    if graveyard:
        reap_graveyard()
    return busy or bool(graveyard)


def _reap_forever():
    global _watching
    pid = os.getpid()
    while True:
        _wake.wait()
        _wake.clear()
        while True:
            time.sleep(REAP_INTERVAL_S)
            if os.getpid() != pid:
                return
            if _prune_all():
                continue
            # Nothing to watch: sleep until woken.  A release that saw
            # _watching still true comes before this second look.
            _watching = False
            if not _prune_all():
                break
            _watching = True


def forget_all():
    """In a forked child: the reaper thread is not there."""
    global _watching, _reaper_pid
    _watching = False
    _reaper_pid = None
    _wake.clear()
    _caches.clear()
