"""Remote workers for the Trio package: a context whose workers a launcher
starts elsewhere (srun inside a Slurm allocation, ssh, kubectl exec) and
which connect back over TCP (``tpar-worker --connect``, docs/protocol.md).

    async with tpar.open_remote_context(slurm=True) as ctx:
        await ctx.run_sync(fn, *args, kill_on_cancel=True)

The run path is WorkerContext's (pickled jobs, the same outcome and
BrokenWorkerError), over the connection instead of pipes.  Layer: beside
_cache and _impl, below nothing but _abc and _proc."""

import os
import shlex
import socket
import subprocess
import sys
from contextlib import asynccontextmanager

import trio
from trio.lowlevel import wait_readable

from . import _core
from ._abc import BrokenWorkerError, NO_KWARGS, RETIRING, WorkerContextStatistics
from ._abc import as_bytes, broken, outcome, pickle_into
from ._locate import worker_argv
from ._proc import finish

_JOB = _core.FRAME_JOB_PICKLE
_CONFIG = _core.FRAME_CONFIG
_SHUTDOWN = _core.FRAME_SHUTDOWN


def slurm_tasks():
    """The allocation's task count (SLURM_NTASKS), or None outside one."""
    v = os.environ.get("SLURM_NTASKS") or os.environ.get("SLURM_NPROCS")
    return int(v) if v else None


def _worker_command(addr, extra):
    """tpar-worker --connect ADDR with what a local worker of this process
    would get (sys.path, __main__, the interpreter), less what only a
    child of ours can use."""
    # No "-- <our sys.argv>": a launcher puts options after {worker}.
    argv = [a for a in worker_argv(main_argv=False) if a != "--pdeathsig"]
    return argv + ["--connect", addr] + list(extra)


def launcher_argv(cmd, addr, worker_args=()):
    """The launcher's argv: cmd split with a shell's quoting (shlex, no
    shell runs it); a word "{worker}" becomes tpar-worker's whole command
    line (--connect included), and "{addr}" inside a word the address."""
    words = shlex.split(cmd)
    if not any(w == "{worker}" or "{addr}" in w for w in words):
        raise ValueError("launcher: the command must contain {worker} (the worker's "
                         "command line) or {addr} (where the worker is to connect)")
    argv = []
    for w in words:
        if w == "{worker}":
            argv += _worker_command(addr, worker_args)
        else:
            argv.append(w.replace("{addr}", addr))
    return argv


class RemoteContext:
    """Workers that connected to this process; use open_remote_context."""

    def __init__(self, listener, limiter, init, retire, grace_period):
        self._listener = listener
        self._peers = {}             # worker -> "host:port" it came from
        self._idle = []              # ready for a job, most recent last
        self._arrived = trio.Condition()
        self._launcher = None        # the subprocess.Popen
        self._launcher_status = None  # its returncode once it ended
        self._closing = False
        self._connected = 0
        self._running = 0
        self.limiter = limiter
        self.grace_period = grace_period
        settings = {}
        if init is not bool:
            settings["init"] = init
        if retire is not bool:
            settings["retire"] = retire
        self._config = pickle_into(as_bytes, _CONFIG, settings, False) if settings else None

    # ---------------------------------------------------------- workers

    def _gone(self):
        """Every worker gone and none to come (the launcher ended)."""
        return (self._launcher_status is not None and not self._idle
                and not self._running and not self._listener_pending())

    def _listener_pending(self):
        try:
            return self._listener.deadline() != 0.0
        except ValueError:
            return False

    def _adopt(self, w, peer):
        self._connected += 1
        self._peers[w] = peer
        if self._config is not None:
            try:
                w.send(_CONFIG, self._config)
            except BrokenPipeError:
                pass
        self._idle.append(w)

    async def _accept_loop(self):
        lst = self._listener
        while True:
            ev = lst.next()
            if ev is None:
                if self._launcher is not None and self._launcher_status is None:
                    self._launcher_status = self._launcher.poll()
                async with self._arrived:
                    self._arrived.notify_all()
                deadline = lst.deadline()
                # Also wake now and then to see whether the launcher ended.
                with trio.move_on_at(min(deadline, trio.current_time() + 0.2)
                                     if deadline else trio.current_time() + 0.2):
                    await wait_readable(lst.fileno())
                continue
            if ev[0] == "worker":
                self._adopt(ev[1], ev[2])
            elif ev[0] == "refused":
                print(f"tpar: refused a connection from {ev[1]}: {ev[2]}", file=sys.stderr)
            else:
                print(f"tpar: {ev[1]}: {os.strerror(ev[2])}", file=sys.stderr)
                await trio.sleep(0.1)

    async def _acquire(self):
        async with self._arrived:
            while True:
                if self._closing:
                    raise trio.ClosedResourceError("this worker context is closed")
                while self._idle:
                    w = self._idle.pop()
                    if w.alive():
                        return w
                    self._drop(w)
                if self._gone():
                    raise broken(
                        f"every remote worker is gone ({self._connected} connected in all), "
                        f"and the launcher ended with status {self._launcher_status}",
                        None, None)
                await self._arrived.wait()

    def _drop(self, w):
        self._peers.pop(w, None)
        w.close()

    def statistics(self):
        return WorkerContextStatistics(len(self._idle), self._running)

    # ---------------------------------------------------------- running

    async def run_sync(self, sync_fn, *args, cancellable=False, kill_on_cancel=False,
                       limiter=None):
        """As WorkerContext.run_sync, on a remote worker.  kill_on_cancel
        drops the worker's connection: its supervisor kills it (and what
        the job started) and connects a fresh one."""
        kill_on_cancel = kill_on_cancel or cancellable
        async with (limiter or self.limiter):
            w = await self._acquire()
            self._running += 1
            try:
                return await self._run(w, sync_fn, args, kill_on_cancel)
            finally:
                self._running -= 1

    async def _run(self, w, fn, args, kill_on_cancel):
        try:
            pickle_into(w.send_pickled, _JOB, (fn, args, NO_KWARGS), False)
        except BrokenPipeError:
            pass
        except BaseException:
            self._release(w, w.alive())
            raise
        try:
            try:
                res = await finish(w, w.ready)
            except trio.Cancelled:
                if kill_on_cancel:
                    raise
                with trio.CancelScope(shield=True):
                    res = await finish(w, w.ready)
        except BaseException:
            w.kill()  # the connection drops: its supervisor kills it
            self._drop(w)
            raise
        if res is False:
            peer = self._peers.get(w, "?")
            self._drop(w)
            raise broken(f"remote worker {w.pid} on {peer} died unexpectedly (its "
                         "connection ended)", w.pid, None)
        status, _, body = res
        self._release(w, not status & RETIRING)
        return outcome(status, body)

    def _release(self, w, keep):
        if keep and not self._closing:
            self._idle.append(w)
        elif keep:
            w.send(_SHUTDOWN, b"")
            self._drop(w)
        else:
            self._drop(w)

    # ---------------------------------------------------------- closing

    async def _aclose(self):
        self._closing = True
        async with self._arrived:
            self._arrived.notify_all()
        idle, self._idle = self._idle, []
        for w in idle:
            try:
                w.send(_SHUTDOWN, b"")
            except (BrokenPipeError, OSError):
                pass
        # A remote worker ends on SHUTDOWN; its end of the connection tells us.
        with trio.move_on_after(self.grace_period):
            for w in idle:
                while await finish(w, False) is not False:
                    pass
        for w in idle:
            self._drop(w)
        for w in list(self._peers):
            w.kill()
            self._drop(w)
        p = self._launcher
        if p is not None:
            with trio.move_on_after(self.grace_period):
                while p.poll() is None:
                    await trio.sleep(0.05)
            if p.poll() is None:
                p.terminate()  # srun: kills its tasks
                with trio.move_on_after(5):
                    while p.poll() is None:
                        await trio.sleep(0.05)
                if p.poll() is None:
                    p.kill()
                p.wait()


@asynccontextmanager
async def open_remote_context(launcher=None, *, slurm=False, listen=None, workers=None,
                              init=bool, retire=bool, grace_period=30.0, auth_timeout=10.0,
                              worker_args=()):
    """A worker context whose workers run where a launcher starts them, and
    connect back to this process over TCP.

    Args:
      launcher (str): the command that starts the workers, with ``{worker}``
        where tpar-worker's command line goes (this process's tpar-worker,
        sys.path, __main__ and interpreter, and --connect ADDR), or ``{addr}``
        where they are to connect when you write the worker's command
        yourself: ``"ssh node7 {worker} --workers 8"``.  Split with a
        shell's quoting (shlex), run with no shell; it gets the run's secret
        in TPAR_SECRET and on its stdin.
      slurm (bool): inside a Slurm allocation: one ``srun`` step starts a
        worker per task (SLURM_NTASKS), with this process's sys.path,
        __main__ and interpreter; ``launcher`` replaces the srun command.
      listen (str): "ADDR:PORT" to listen on (default: every address, a
        free port; the workers dial this host's name, or with ``slurm``
        srun's address for this host).
      workers (int): the limiter's size (default: SLURM_NTASKS with
        ``slurm``, else 64): how many calls run at once.
      init, retire, grace_period: as for open_worker_context; the grace
        period also bounds the wait for the launcher to end.
      auth_timeout (float): seconds a connection has to authenticate.
      worker_args: more options for tpar-worker where tpar builds its
        command ({worker}, or ``slurm`` without ``launcher``).

    Every worker and this process prove they know the run's secret before
    any pickle travels (HMAC-SHA256); the traffic is not encrypted.
    Calls wait for a worker to connect; once the launcher has ended and
    no worker is left, they raise BrokenWorkerError."""
    host, port = "", 0
    if listen:
        host, _, p = listen.rpartition(":")
        host, port = host.strip("[]"), int(p)
    if slurm and launcher is None and not os.environ.get("SLURM_JOB_ID"):
        raise RuntimeError("open_remote_context(slurm=True): not inside a Slurm allocation "
                           "(SLURM_JOB_ID is not set)")
    ntasks = slurm_tasks() if slurm else None
    n = workers or ntasks or 64
    lst = _core.Listener(host, port, float(auth_timeout))
    if slurm and not host and launcher is None:
        addr = f":{lst.port}"
    else:
        h = host if host not in ("", "0.0.0.0", "::") else socket.gethostname()
        addr = f"[{h}]:{lst.port}" if ":" in h else f"{h}:{lst.port}"
    if launcher is not None:
        argv = launcher_argv(launcher, addr, worker_args)
    elif slurm:
        argv = ["srun", f"--ntasks={n}", "--kill-on-bad-exit=0", "--quiet",
                "--job-name=tpar-workers"] + _worker_command(addr, worker_args)
    else:
        lst.close()
        raise ValueError("open_remote_context: give a launcher, or slurm=True")
    ctx = RemoteContext(lst, trio.CapacityLimiter(n), init, retire, float(grace_period))
    env = dict(os.environ)
    env[_core.SECRET_ENV] = lst.secret
    ctx._launcher = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE,
                                     stdout=sys.stderr.fileno(), start_new_session=True)
    try:
        ctx._launcher.stdin.write((lst.secret + "\n").encode())
        ctx._launcher.stdin.close()
    except BrokenPipeError:
        pass
    del env
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ctx._accept_loop)
            try:
                yield ctx
            finally:
                nursery.cancel_scope.cancel()  # no more workers taken
    finally:
        trio.lowlevel.notify_closing(lst.fileno())
        lst.close()  # workers dialling again now find nobody
        with trio.CancelScope(shield=True):
            await ctx._aclose()
