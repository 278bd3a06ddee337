#!/usr/bin/env python3
"""The chaos suite: tpar under an operating system that kills its workers.

  chaos.py cli   [--jobs N] [--forkserver] [--kill-ms MS] [--zygote-every N]
  chaos.py trio  [--calls N] [--type spawn|forkserver] [--kill-ms MS]

A killer thread SIGKILLs a random worker every ~MS ms (default 20), at any
age: a third of the time the youngest, often before it has said READY; in
forkserver runs the zygote itself now and then.  Every process of the run
carries a marker variable in its environment, so what is left behind is
found by that marker, whoever its parent is.

cli: a stream of jobs (some start a `sleep 300` child) through `tpar -j 4
--retries R`.  Asserts: exit 0; every line of output is JSON; every id has
exactly one record, all "ok"; no process with the marker is left.

trio: N concurrent run_sync calls in one context.  Asserts: each call
returns its value or raises BrokenWorkerError (never another exception);
no process with the marker is left after the context closes.

Prints one line "chaos NAME: ok|FAILED, ..." with the figures; exits 1 on
failure."""
import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CLK = os.sysconf("SC_CLK_TCK")


def children(pid):
    out = []
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{t}/children") as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out


def stat(pid):
    """(state, start time in s since boot) or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    fields = s[s.rindex(")") + 2:].split()
    return fields[0], int(fields[19]) / CLK


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


def uptime():
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


def marked(mark):
    """Live (not zombie) processes whose environment holds the marker."""
    found = []
    needle = f"TPAR_CHAOS_MARK={mark}".encode()
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open(f"/proc/{d}/environ", "rb") as f:
                if needle not in f.read().split(b"\0"):
                    continue
        except OSError:
            continue
        st = stat(int(d))
        if st and st[0] != "Z":
            found.append(int(d))
    return found


def wait_unmarked(mark, secs=5.0):
    deadline = time.monotonic() + secs
    while True:
        left = marked(mark)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


class Killer(threading.Thread):
    """Kills a worker below `root` every ~kill_ms ms; the zygote (a
    `--zygote` process) every zygote_every kills when that is set."""

    def __init__(self, root, kill_ms, zygote_every=0, seed=None):
        super().__init__(daemon=True)
        self.root, self.kill_ms, self.zygote_every = root, kill_ms, zygote_every
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.kills = self.young = self.zygote_kills = 0

    def workers(self):
        ws, zs = [], []
        for c in children(self.root):
            argv = cmdline(c)
            if b"--zygote" in argv:
                zs.append(c)
                ws += children(c)
            elif argv and b"tpar-worker" in argv[0]:
                ws.append(c)
        return ws, zs

    def run(self):
        n = 0
        while not self.stop.wait(self.kill_ms / 1000 * self.rng.uniform(0.5, 1.5)):
            ws, zs = self.workers()
            n += 1
            if self.zygote_every and zs and n % self.zygote_every == 0:
                self.kill(self.rng.choice(zs))
                self.zygote_kills += 1
                continue
            if not ws:
                continue
            ages = {w: stat(w) for w in ws}
            ws = [w for w in ws if ages[w] and ages[w][0] != "Z"]
            if not ws:
                continue
            if self.rng.random() < 0.3:  # the youngest: often before READY
                w = max(ws, key=lambda p: ages[p][1])
            else:
                w = self.rng.choice(ws)
            if uptime() - ages[w][1] < 0.05:
                self.young += 1
            if self.kill(w):
                self.kills += 1

    @staticmethod
    def kill(pid):
        try:
            os.kill(pid, signal.SIGKILL)
            return True
        except ProcessLookupError:
            return False


def run_killed(argv, env, stdin_data, killer_args, timeout):
    """Runs argv under a Killer; returns (returncode, out, err, killer).
    Output goes to files, not pipes: a process left behind holding them
    must not make us wait for it (it is counted afterwards)."""
    with tempfile.TemporaryFile() as fin, tempfile.TemporaryFile() as fout, \
            tempfile.TemporaryFile() as ferr:
        fin.write(stdin_data)
        fin.seek(0)
        p = subprocess.Popen(argv, stdin=fin, stdout=fout, stderr=ferr, env=env)
        killer = Killer(p.pid, *killer_args)
        killer.start()
        try:
            p.wait(timeout=timeout)
            hung = b""
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            hung = b"\n(chaos: hung; killed)"
        killer.stop.set()
        killer.join()
        fout.seek(0)
        ferr.seek(0)
        return p.returncode, fout.read(), ferr.read() + hung, killer


def tpar_bin():
    build = os.environ.get("BUILD_DIR", os.path.join(ROOT, "build"))
    return os.environ.get("TPAR_BIN", os.path.join(build, "cmd", "tpar"))


def run_cli(a):
    mark = uuid.uuid4().hex
    rng = random.Random(a.seed)
    lines = []
    for i in range(a.jobs):
        fn = "chaos_jobs:with_child" if i % 50 == 7 else "chaos_jobs:work"
        lines.append(json.dumps({"id": f"j{i}", "fn": fn, "args": [i, rng.choice((0, 0, 1, 2, 5))]}))
    data = ("\n".join(lines) + "\n").encode()
    env = dict(os.environ, TPAR_CHAOS_MARK=mark)
    argv = [tpar_bin(), "-j", str(a.j), "--retries", str(a.retries), "-I", HERE]
    if a.forkserver:
        argv += ["--worker-type", "forkserver", "--preload", "chaos_jobs"]
    t0 = time.monotonic()
    rc, out, err, killer = run_killed(
        argv, env, data, (a.kill_ms, a.zygote_every if a.forkserver else 0, a.seed), a.timeout)
    wall = time.monotonic() - t0
    left = wait_unmarked(mark)
    problems = []
    if rc != 0:
        problems.append(f"exit {rc}")
    seen, bad_lines, not_ok = {}, 0, {}
    for line in out.decode(errors="replace").splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            bad_lines += 1
            continue
        if r.get("type") != "result":
            continue
        seen[r.get("id")] = seen.get(r.get("id"), 0) + 1
        if r.get("status") != "ok":
            not_ok[r.get("status")] = not_ok.get(r.get("status"), 0) + 1
    want = {f"j{i}" for i in range(a.jobs)}
    lost = len(want - set(seen))
    dup = sum(1 for k, n in seen.items() if n > 1)
    extra = len(set(seen) - want)
    if bad_lines:
        problems.append(f"{bad_lines} lines not JSON")
    if lost or dup or extra:
        problems.append(f"{lost} ids without a record, {dup} with several, {extra} unknown")
    if not_ok:
        problems.append(f"not ok: {not_ok}")
    if left:
        problems.append(f"{len(left)} processes left: " + ", ".join(
            f"{q} {b' '.join(cmdline(q))[:60].decode(errors='replace')}" for q in left[:5]))
        for q in left:
            Killer.kill(q)
    name = "cli-forkserver" if a.forkserver else "cli"
    print(f"chaos {name}: {'FAILED' if problems else 'ok'}, {a.jobs} jobs, "
          f"{killer.kills} worker kills ({killer.young} under 50 ms old), "
          f"{killer.zygote_kills} zygote kills, {lost} lost, {dup} duplicated, "
          f"{len(left)} left behind, {wall:.1f} s"
          + ("".join(f"\n  {x}" for x in problems)))
    if problems:
        tail = err.decode(errors="replace").strip().splitlines()[-5:]
        print("".join(f"\n  stderr: {x}" for x in tail))
    return not problems


TRIO_CHILD = r"""
import os, sys, trio
sys.path.insert(0, sys.argv[1])
import tpar, chaos_jobs

N, TYPE = int(sys.argv[2]), sys.argv[3]

async def main():
    ok = broken = 0
    others = {}
    async def one(ctx, i):
        nonlocal ok, broken
        fn = chaos_jobs.with_child if i % 50 == 7 else chaos_jobs.work
        try:
            v = await ctx.run_sync(fn, i, 1)
            assert v == i, (v, i)
            ok += 1
        except tpar.BrokenWorkerError:
            broken += 1
        except BaseException as e:  # what must never come out
            k = type(e).__name__ + ": " + str(e)[:80]
            others[k] = others.get(k, 0) + 1
    wt = tpar.WorkerType.FORKSERVER if TYPE == "forkserver" else tpar.WorkerType.SPAWN
    try:
        async with tpar.open_worker_context(worker_type=wt) as ctx:
            async with trio.open_nursery() as n:
                for i in range(N):
                    n.start_soon(one, ctx, i)
    except tpar.BrokenWorkerError:
        # The context's close raises it when a worker it was stopping was
        # killed meanwhile (as trio-parallel's does): allowed.
        pass
    print("RESULT", ok, broken, repr(others), flush=True)

if __name__ == "__main__":
    trio.run(main)
"""


def run_trio(a):
    mark = uuid.uuid4().hex
    build = os.environ.get("TPAR_BUILD_DIR", os.environ.get("BUILD_DIR", os.path.join(ROOT, "build")))
    env = dict(os.environ, TPAR_CHAOS_MARK=mark)
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.join(build, "python"), HERE] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    t0 = time.monotonic()
    rc, out, err, killer = run_killed(
        [sys.executable, "-c", TRIO_CHILD, HERE, str(a.calls), a.type], env, b"",
        (a.kill_ms, a.zygote_every if a.type == "forkserver" else 0, a.seed), a.timeout)
    wall = time.monotonic() - t0
    left = wait_unmarked(mark)
    problems = []
    ok = broken = 0
    others = {}
    res = [x for x in out.decode().splitlines() if x.startswith("RESULT ")]
    if rc != 0 or not res:
        problems.append(f"exit {rc}")
    else:
        _, ok, broken, others = res[-1].split(" ", 3)
        ok, broken, others = int(ok), int(broken), eval(others)  # our own repr
        if ok + broken + sum(others.values()) != a.calls:
            problems.append(f"{a.calls - ok - broken - sum(others.values())} calls never ended")
        if others:
            problems.append(f"calls raised other than BrokenWorkerError: {others}")
    if left:
        problems.append(f"{len(left)} processes left behind")
        for q in left:
            Killer.kill(q)
    print(f"chaos trio-{a.type}: {'FAILED' if problems else 'ok'}, {a.calls} calls, "
          f"{ok} ok, {broken} BrokenWorkerError, {killer.kills} worker kills "
          f"({killer.young} under 50 ms old), {killer.zygote_kills} zygote kills, "
          f"{len(left)} left behind, {wall:.1f} s" + "".join(f"\n  {x}" for x in problems))
    if problems:
        print("".join(f"\n  stderr: {x}" for x in err.decode(errors="replace").strip().splitlines()[-8:]))
    return not problems


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cli")
    c.add_argument("--jobs", type=int, default=5000)
    c.add_argument("-j", type=int, default=4)
    # A job alone on a fresh worker is often killed again (the killer
    # likes the youngest), and each such death is rightly an attempt.
    c.add_argument("--retries", type=int, default=30)
    c.add_argument("--forkserver", action="store_true")
    t = sub.add_parser("trio")
    t.add_argument("--calls", type=int, default=2000)
    t.add_argument("--type", choices=("spawn", "forkserver"), default="forkserver")
    for s in (c, t):
        s.add_argument("--kill-ms", type=float, default=20)
        s.add_argument("--zygote-every", type=int, default=15, help="kill the zygote every N kills")
        s.add_argument("--timeout", type=float, default=180)
        s.add_argument("--seed", type=int, default=None)
    a = ap.parse_args()
    ok = run_cli(a) if a.cmd == "cli" else run_trio(a)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
