"""Where an idle worker's memory goes (issue 5): RSS, PSS and USS of an idle
`python3 -I -S`, an idle `python3 -c`, and idle tpar workers of every kind,
with the RSS split by mapping (libpython's text and data, the malloc heap,
anonymous mmaps: pymalloc's arenas and large blocks) and the number of
modules loaded.

    python3 bench/idle_rss.py [--reps N] [--calls N] [--detail] [--json] [--clean]

tpar comes from $TPAR_BUILD_DIR (default build/ of this checkout).  Each
tpar worker is measured as the bench's idle_rss case does (trio_case.py):
after warm-up calls of run_sync(bool), one run_sync(os.getpid) and 0.2 s
idle; a CLI worker after one os:getpid job (with JSON arguments, [], so
its JSON scanner is made, as for any job with arguments) and 0.2 s idle,
its stdin left open.  Each Trio-package measurement runs in a fresh process.  MB = 10^6
bytes, as in the bench; figures are medians of the repetitions.

--clean measures under a Python whose start-up runs no .pth file: the
bench's venv of this python3 (common.clean_python: its site-packages empty,
this python3's packages seen through PYTHONPATH, plain path entries).  A .pth line that imports
a module (this machine's sandbox has one that imports certifi at every
start) costs every interpreter the same few MB, tpar's workers included.

This file is imported in the workers as __mp_main__ (as multiprocessing's
spawn does): keep its top level light, or it measures itself.
"""
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
IDLE_S = 0.2
# The idle interpreter prints its module count, then blocks on stdin.
IDLE_CODE = ("import os, sys; os.write(1, b'%d\\n' % len(sys.modules)); "
             "os.read(0, 1)")


def build_dir():
    return os.path.abspath(os.environ.get(
        "TPAR_BUILD_DIR", os.path.join(HERE, os.pardir, "build")))


# ------------------------------------------------------------- measuring

def smaps(pid):
    """[(name, perms, {field: kB})] of /proc/pid/smaps."""
    maps = []
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split(None, 5)
            if "-" in head[0] and len(head) >= 5 and ":" not in head[0]:
                name = head[5].strip() if len(head) > 5 else ""
                maps.append((name, head[1], {}))
            else:
                key, _, rest = line.partition(":")
                v = rest.split()
                if v and v[0].isdigit():
                    maps[-1][2][key] = int(v[0])
    return maps


def kind_of(name):
    if not name:
        return "anon mmap"  # pymalloc arenas, large blocks, thread stacks
    if name in ("[heap]", "[stack]"):
        return name
    if name.startswith("["):
        return "other"
    base = name.rsplit("/", 1)[-1]
    if base.startswith("libpython"):
        return "libpython"
    return "other files"


def measure(pid):
    """kB figures of a process: totals and the RSS by kind of mapping."""
    tot = dict(rss=0, pss=0, uss=0, anon=0)
    parts = {}
    for name, perms, d in smaps(pid):
        rss = d.get("Rss", 0)
        tot["rss"] += rss
        tot["pss"] += d.get("Pss", 0)
        tot["uss"] += d.get("Private_Clean", 0) + d.get("Private_Dirty", 0)
        tot["anon"] += d.get("Anonymous", 0)
        k = kind_of(name)
        if k == "libpython":  # text (file pages) apart from data (written)
            k = "libpython data" if d.get("Anonymous", 0) else "libpython text"
        parts[k] = parts.get(k, 0) + rss
        if rss:
            key = name.rsplit("/", 1)[-1] or f"anon {perms}"
            parts["@" + key] = parts.get("@" + key, 0) + rss
    tot["file"] = tot["rss"] - tot["anon"]
    tot.update(parts)
    return tot


# ------------------------------------------------------------- subjects

def python_idle(flags):
    import subprocess
    p = subprocess.Popen([sys.executable, *flags, "-c", IDLE_CODE],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        nmods = int(p.stdout.readline())
        time.sleep(IDLE_S)
        m = measure(p.pid)
    finally:
        p.stdin.close()
        p.wait()
    m["modules"] = nmods
    return m


def nmods():
    return len(sys.modules)


async def trio_idle(wtype, calls):
    import trio
    import tpar
    async with tpar.open_worker_context(
            worker_type=getattr(tpar.WorkerType, wtype)) as ctx:
        for _ in range(calls):
            await ctx.run_sync(bool)
        pid = await ctx.run_sync(os.getpid)
        await trio.sleep(IDLE_S)
        m = measure(pid)
        if wtype == "FORKSERVER":
            with open(f"/proc/{pid}/stat") as f:  # ppid: after "(comm)"
                zpid = int(f.read().rsplit(")", 1)[1].split()[1])
            z = measure(zpid)
            m["zygote rss"], m["zygote uss"] = z["rss"], z["uss"]
        m["modules"] = await ctx.run_sync(nmods)
    return m


def trio_subject(wtype, calls):
    """Measures in a fresh process: the parent's own state (a FORK child
    inherits it) is the bench's, not this harness's."""
    import json
    import subprocess
    env = dict(os.environ, TPAR_BUILD_DIR=build_dir())
    out = subprocess.run([sys.executable, __file__, "--trio", wtype,
                          "--calls", str(calls)], env=env, check=True,
                         stdout=subprocess.PIPE).stdout
    return json.loads(out)


def cli_idle(extra):
    import json
    import subprocess
    tpar = os.path.join(build_dir(), "cmd", "tpar")
    p = subprocess.Popen([tpar, "-j1", *extra], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE)
    try:
        p.stdin.write(b'{"fn":"os:getpid","args":[]}\n')
        p.stdin.flush()
        pid = json.loads(p.stdout.readline())["value"]
        time.sleep(IDLE_S)
        m = measure(pid)
        p.stdin.write(b'{"fn":"sys:modules.__len__"}\n')
        p.stdin.flush()
        m["modules"] = json.loads(p.stdout.readline())["value"]
    finally:
        p.stdin.close()
        p.wait()
    return m


SUBJECTS = {
    "python3 -I -S -c": lambda a: python_idle(["-I", "-S"]),
    "python3 -c": lambda a: python_idle([]),
    "tpar SPAWN": lambda a: trio_subject("SPAWN", a.calls),
    "tpar FORKSERVER": lambda a: trio_subject("FORKSERVER", a.calls),
    "tpar FORK": lambda a: trio_subject("FORK", a.calls),
    "tpar CLI (spawn)": lambda a: cli_idle([]),
    "tpar CLI (forkserver)": lambda a: cli_idle(["--worker-type", "forkserver"]),
}

COLUMNS = [("rss", "RSS"), ("pss", "PSS"), ("uss", "USS"), ("anon", "anon"),
           ("file", "file"), ("libpython text", "libpy text"),
           ("libpython data", "libpy data"), ("[heap]", "heap"),
           ("anon mmap", "mmap anon"), ("other files", "other .so"),
           ("modules", "modules")]


def rerun_clean(argv):
    """Runs this script with the same arguments under the bench's Python
    without .pth start-up code (common.clean_python; VIRTUAL_ENV points the
    CLI's workers at it too)."""
    import subprocess
    from common import clean_python
    python, env = clean_python()
    env["TPAR_BUILD_DIR"] = build_dir()
    return subprocess.run([python, os.path.abspath(__file__), *argv], env=env).returncode


def main():
    import argparse
    import statistics
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--calls", type=int, default=350,
                    help="run_sync(bool) calls before measuring (the bench: 50 + warm_n)")
    ap.add_argument("--only", help="comma-separated subjects (substrings)")
    ap.add_argument("--detail", action="store_true",
                    help="also the RSS of each mapping >= 64 kB (last repetition)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--clean", action="store_true",
                    help="under a venv whose start-up runs no .pth file")
    ap.add_argument("--trio", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.clean:
        sys.exit(rerun_clean([x for x in sys.argv[1:] if x != "--clean"]))
    if a.trio:  # one measurement, in this fresh process
        import json
        import trio
        sys.path.insert(0, os.path.join(build_dir(), "python"))
        print(json.dumps(trio.run(trio_idle, a.trio, a.calls)))
        return
    names = [n for n in SUBJECTS
             if not a.only or any(s in n for s in a.only.split(","))]
    runs = {n: [] for n in names}
    for _ in range(a.reps):  # interleaved: a noisy moment hits them all
        for n in names:
            runs[n].append(SUBJECTS[n](a))
    if a.json:
        import json
        print(json.dumps(runs, indent=1))
        return
    cols = list(COLUMNS)
    if any("zygote rss" in r for rs in runs.values() for r in rs):
        cols += [("zygote rss", "zygote RSS"), ("zygote uss", "zygote USS")]
    print(f"Idle RSS/PSS/USS, MB (10^6 bytes), median of {a.reps}; "
          f"{sys.executable}")
    w = max(len(n) for n in names)
    print(f"{'':{w}} " + " ".join(f"{h:>10}" for _, h in cols))
    for n in names:
        cells = []
        for k, _ in cols:
            vals = [r[k] for r in runs[n] if k in r]
            if not vals:
                cells.append(f"{'-':>10}")
            elif k == "modules":
                cells.append(f"{statistics.median(vals):>10.0f}")
            else:
                cells.append(f"{statistics.median(vals) * 1024 / 1e6:>10.2f}")
        print(f"{n:{w}} " + " ".join(cells))
    if a.detail:
        for n in names:
            last = runs[n][-1]
            maps = sorted(((v, k[1:]) for k, v in last.items()
                           if k.startswith("@") and v >= 64), reverse=True)
            print(f"\n{n}: RSS by mapping, kB (last repetition)")
            for v, k in maps:
                print(f"  {v:7d}  {k}")


if __name__ == "__main__":
    main()
