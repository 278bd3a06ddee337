"""Trio package cases: tpar against trio-parallel 1.3 per worker type, and
ProcessPoolExecutor / anyio.to_process / trio.to_thread where they apply.

Each repetition of each implementation runs in a fresh process
(trio_case.py), so its first call is cold; the repetitions of all the
implementations are interleaved, so a noisy moment hits them all."""
import json
import os
import subprocess

from common import BENCH_DIR, PYTHON, build_dir, clean_python, deps_dir
from model import Case

TYPES = ("SPAWN", "FORKSERVER", "FORK")
CASES = ("warm", "warm_busy", "idle_rss", "throughput", "bigdata", "loops", "single_use")

SIZES = {
    "smoke": dict(warm_n=20, tput_n=100, single_n=3, single_spawn_n=3,
                  big_mb=1, big_reps=1,
                  loops_s=0.05, timeout=60),
    "quick": dict(warm_n=300, tput_n=2000, single_n=10, single_spawn_n=10,
                  big_mb=20, big_reps=1, loops_s=0.25, timeout=120),
    # single-use SPAWN workers cost ~0.1 s each: 50 of them, not 200
    "full": dict(warm_n=2000, tput_n=20000, single_n=200, single_spawn_n=50,
                 big_mb=100, big_reps=2, loops_s=1.0, timeout=400),
}


def subject_name(impl, wtype):
    return {
        "tpar": f"tpar {wtype}",
        "trio_parallel": f"trio-parallel {wtype}",
        "ppe": f"ProcessPoolExecutor {wtype.lower()}",
        "anyio": "anyio.to_process",
        "to_thread": "trio.to_thread",
    }[impl]


def runs_for(mode):
    runs = [("tpar", t) for t in TYPES]
    if mode == "smoke":  # seconds: one of each kind of peer
        return runs + [("trio_parallel", "SPAWN"), ("ppe", "FORK"),
                       ("anyio", "-"), ("to_thread", "-")]
    runs += [("trio_parallel", t) for t in TYPES]
    runs += [("ppe", t) for t in TYPES
             if mode == "full" or t != "FORKSERVER"]
    return runs + [("anyio", "-"), ("to_thread", "-")]


def peer_for(impl, wtype):
    """The peer a subject's ratio is taken against."""
    if impl in ("tpar", "ppe"):
        return subject_name("trio_parallel", wtype)
    if impl == "anyio":
        return subject_name("trio_parallel", "SPAWN")
    return None


def make_cases():
    T = "trio"
    return {
        "cold": Case(T, "trio.cold", "Cold first call", "ms",
                     note="fresh process, libraries imported; time of the "
                     "first run_sync(bool) including the worker's start"),
        "cold_clean": Case(T, "trio.cold_clean", "Cold first call, Python "
                           "without .pth start-up code", "ms",
                           note="as the cold first call, in a venv whose "
                           "site-packages runs no .pth file "
                           "(common.clean_python)"),
        "warm": Case(T, "trio.warm", "Warm latency of run_sync(bool)", "µs",
                     note="mean over sequential calls to a warm worker"),
        "throughput": Case(T, "trio.throughput",
                           "Throughput of concurrent tiny calls", "calls/s",
                           better="higher",
                           note="run_sync(bool) from concurrent tasks, "
                           "default limiter (one per CPU)"),
        "single_use": Case(T, "trio.single_use",
                           "Single-use workers (retire after each call)",
                           "ms", note="mean per sequential call; "
                           "ProcessPoolExecutor: max_tasks_per_child=1"),
        "bigdata": Case(T, "trio.bigdata", "100 MB round trip",
                        "s per 100 MB",
                        note="run_sync(bytes, 100 MB of bytes): 100 MB "
                        "there and back; best of the round trips in a rep"),
        "warm_busy": Case(T, "trio.warm_busy", "Warm latency of run_sync(bool), "
                          "two CPU-bound processes beside", "µs",
                          note="mean over sequential calls to a warm worker "
                          "from the moment two `while True: pass` processes "
                          "start: a spin-before-block must not make it worse "
                          "than trio-parallel's on a busy machine"),
        "warm_busy_first": Case(T, "trio.warm_busy_first", "Warm latency of "
                                "run_sync(bool), the first 20 calls after two "
                                "CPU-bound processes start", "µs",
                                note="mean of the first 20 calls of the row "
                                "above: before any spin has adapted (a "
                                "spin whose yield loses the CPU to the "
                                "hogs costs a time slice)"),
        "idle_rss": Case(T, "trio.idle_rss", "Idle worker RSS", "MB",
                         note="RSS of a worker 0.2 s after its last job "
                         "(FORK workers share most of it with the parent)"),
        "idle_uss": Case(T, "trio.idle_uss", "Idle worker USS "
                         "(memory only it holds)", "MB"),
        "floor": Case(T, "trio.floor", "Trio alone, no worker: tasks "
                      "through the limiter per second", "calls/s",
                      better="higher",
                      note="bench/trio_floor.py: the throughput case's "
                      "tasks taking the default-sized CapacityLimiter and "
                      "yielding once (run_sync's least) or not at all; a "
                      "ceiling for any run_sync on this machine"),
        "idle_rss_clean": Case(T, "trio.idle_rss_clean",
                               "Idle worker RSS, Python without .pth "
                               "start-up code", "MB",
                               note="bench/idle_rss.py --clean: a venv of "
                               "the same python3 with empty site-packages "
                               "(a .pth line that imports a module costs "
                               "every interpreter, python3 -c included)"),
        "loops": Case(T, "trio.loops", "parallel_loops: loops/s per process",
                      "loops/s", better="higher",
                      baseline="trio.to_thread",
                      note="one loop(seconds) job per CPU at once; "
                      "mean of the per-process rates"),
        "balance": Case(T, "trio.loops_balance",
                        "parallel_loops: balance (slowest/fastest)", "ratio",
                        better="higher", baseline="trio.to_thread"),
    }


def run(mode, reps, log):
    sz = SIZES[mode]
    cases = make_cases()
    cases["warm"].note(f"{sz['warm_n']} calls per repetition")
    cases["warm_busy"].note(f"{sz['warm_n']} calls per repetition")
    cases["throughput"].note(f"{sz['tput_n']} calls per repetition")
    cases["single_use"].note(f"{sz['single_n']} calls per repetition "
                             f"({sz['single_spawn_n']} with SPAWN)")
    cases["bigdata"].note(f"{sz['big_mb']} MB payload, scaled to 100 MB"
                          if sz["big_mb"] != 100 else "100 MB payload")
    cases["loops"].note(f"loop({sz['loops_s']}) per job")
    env = dict(os.environ, TPAR_BENCH_DEPS=str(deps_dir()))
    worker = build_dir() / "pyworker" / "tpar-worker"
    if worker.exists():  # this build's worker, not one installed elsewhere
        env["TPAR_WORKER"] = str(worker)
    runs = runs_for(mode)
    for name, c in cases.items():  # declare rows in a stable order
        for impl, wtype in runs:
            if impl == "to_thread" and name not in ("loops", "balance") \
                    or name in ("idle_rss_clean", "floor", "cold_clean"):
                continue
            peer = None if name in ("loops", "balance") else \
                peer_for(impl, wtype)
            c.subject(subject_name(impl, wtype), ratio_to=peer)
    for rep in range(reps):
        for impl, wtype in runs:
            subj = subject_name(impl, wtype)
            log(f"trio rep {rep + 1}/{reps}: {subj}")
            want = [k for k in CASES]
            rsz = dict(sz, single_n=sz["single_spawn_n"]) \
                if wtype == "SPAWN" else sz
            out = run_one(impl, wtype, want, rsz, env)
            record(cases, subj, out)
        for impl in ("tpar", "trio_parallel"):
            subj = subject_name(impl, "SPAWN")
            log(f"trio rep {rep + 1}/{reps}: {subj}, cold, without .pth start-up code")
            cold_clean(cases["cold_clean"], impl, subj, sz, env)
        log(f"trio rep {rep + 1}/{reps}: Trio alone (the throughput floor)")
        trio_floor(cases["floor"], sz, env)
        log(f"trio rep {rep + 1}/{reps}: idle RSS without .pth start-up code")
        idle_rss_clean(cases["idle_rss_clean"], env)
    return list(cases.values())


FLOOR_SUBJECTS = ("one yield", "no yield", "one I/O wait")


def helper_json(case, names, argv, env, timeout):
    """Runs a bench helper script that prints JSON; declares the subjects
    and returns the JSON, or None with every subject skipped."""
    for name in names:
        case.subject(name)
    try:
        cp = subprocess.run(argv, capture_output=True, env=env,
                            timeout=timeout, cwd=str(BENCH_DIR))
        return json.loads(cp.stdout)
    except (subprocess.TimeoutExpired, ValueError) as e:
        for name in names:
            case.skip(name, f"{os.path.basename(argv[1])} failed: {e}")
        return None


def trio_floor(case, sz, env):
    """One repetition of bench/trio_floor.py, as many tasks as throughput."""
    names = {k: f"Trio alone, limiter and {k}" for k in FLOOR_SUBJECTS}
    out = helper_json(case, names.values(), [
        PYTHON, str(BENCH_DIR / "trio_floor.py"), str(sz["tput_n"])], env,
        sz["timeout"])
    for k, name in names.items() if out else ():
        case.add(name, out[k])


CLEAN_SUBJECTS = {"python3 -c": "python3 -c", "tpar SPAWN": "tpar SPAWN",
                  "tpar CLI (spawn)": "tpar CLI (spawn worker)"}


def idle_rss_clean(case, env):
    """One repetition of bench/idle_rss.py --clean for the subjects above."""
    runs = helper_json(case, CLEAN_SUBJECTS.values(), [
        PYTHON, str(BENCH_DIR / "idle_rss.py"), "--clean", "--json", "--reps",
        "1", "--only", ",".join(CLEAN_SUBJECTS)], env, 120)
    for key, name in CLEAN_SUBJECTS.items() if runs else ():
        for m in runs.get(key, []):
            case.add(name, m["rss"] * 1024 / 1e6)  # kB -> MB (10^6 bytes)


def cold_clean(case, impl, subj, sz, env):
    """The cold first call (SPAWN) under common.clean_python()."""
    peer = None if impl == "trio_parallel" else subject_name("trio_parallel", "SPAWN")
    python, clean_env = clean_python()
    out = run_one(impl, "SPAWN", ["cold"], sz, dict(env, **{
        k: clean_env[k] for k in ("VIRTUAL_ENV", "PYTHONPATH")}), python=python)
    v = out.get("cold")
    if isinstance(v, (int, float)):
        case.add(subj, v * SCALE["cold"], ratio_to=peer)
    else:
        case.skip(subj, v.get("skip", "no result") if isinstance(v, dict)
                  else "no result", ratio_to=peer)


def run_one(impl, wtype, want, sz, env, python=PYTHON):
    argv = [python, str(BENCH_DIR / "trio_case.py"), impl, wtype,
            ",".join(want), json.dumps(sz)]
    try:
        cp = subprocess.run(argv, capture_output=True, env=env,
                            timeout=sz["timeout"], cwd=str(BENCH_DIR))
    except subprocess.TimeoutExpired:
        return {k: {"skip": f"timed out after {sz['timeout']} s"}
                for k in want + ["cold", "idle_uss"]}
    try:
        return json.loads(cp.stdout.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        err = cp.stderr.decode(errors="replace").strip().splitlines()
        why = f"trio_case exited {cp.returncode}: " + \
            (err[-1] if err else "no output")
        return {k: {"skip": why} for k in want + ["cold", "idle_uss"]}


SCALE = {"cold": 1e3, "warm": 1e6, "warm_busy": 1e6, "warm_busy_first": 1e6, "throughput": 1, "single_use": 1e3,
         "bigdata": 1, "idle_rss": 1e-6, "idle_uss": 1e-6}


def record(cases, subj, out):
    for key, v in out.items():
        if key == "loops":
            if isinstance(v, dict) and "rates" in v:
                rates = v["rates"]
                cases["loops"].add(subj, sum(rates) / len(rates))
                cases["balance"].add(subj, v["balance"])
                cases["loops"].extra.setdefault(subj, {}).setdefault(
                    "per_process_rates", []).append(rates)
            else:
                why = v.get("skip", "no result") if isinstance(v, dict) \
                    else "no result"
                cases["loops"].skip(subj, why)
                cases["balance"].skip(subj, why)
            continue
        c = cases.get(key)
        if c is None:
            continue
        if isinstance(v, dict):
            c.skip(subj, v.get("skip", "no result"))
        elif v is None:
            c.skip(subj, "not available")
        else:
            c.add(subj, v * SCALE[key])
