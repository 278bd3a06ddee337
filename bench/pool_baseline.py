"""The hand-written peer of `tpar`: what a user would write instead.

    python3 pool_baseline.py [-j N] [--parse-in-parent] [--chunksize N]
                             [--unordered] [FILE]

Reads JSON-lines jobs {"id", "fn": "mod:fn", "args": [...], "kwargs": {...}},
runs them with multiprocessing.Pool.imap(chunksize=1000) and writes one JSON
line per result, in input order.  The current directory is on sys.path, as
with `python -m`.

By default a worker gets the raw line and parses it itself, which keeps
the parent light (the faster way).  --parse-in-parent is the first thing
most people write: json.loads in the parent, (fn, args, kwargs) to the
workers, json.dumps of the result in the parent.
"""
import collections
import importlib
import json
import multiprocessing
import os
import sys

_fns = {}


def _resolve(name):
    fn = _fns.get(name)
    if fn is None:
        mod, _, attr = name.partition(":")
        fn = importlib.import_module(mod)
        for part in attr.split("."):
            fn = getattr(fn, part)
        _fns[name] = fn
    return fn


def run(line):
    try:
        job = json.loads(line)
        value = _resolve(job["fn"])(*job.get("args", ()),
                                    **job.get("kwargs", {}))
        return json.dumps({"id": job.get("id"), "status": "ok",
                           "value": value})
    except Exception as e:  # a job's failure is its result, not ours
        return json.dumps({"status": "error",
                           "error": {"type": type(e).__name__,
                                     "message": str(e)}})


def call(job):
    fn, args, kwargs = job
    try:
        return "ok", _resolve(fn)(*args, **kwargs)
    except Exception as e:
        return "error", {"type": type(e).__name__, "message": str(e)}


def main():
    args = sys.argv[1:]
    jobs = os.cpu_count()
    in_parent = False
    unordered = False
    chunksize = 1000
    while args[:1] in (["-j"], ["--parse-in-parent"], ["--chunksize"],
                       ["--unordered"]):
        if args[0] == "--unordered":
            unordered, args = True, args[1:]
        elif args[0] == "-j":
            jobs, args = int(args[1]), args[2:]
        elif args[0] == "--chunksize":
            chunksize, args = int(args[1]), args[2:]
        else:
            in_parent, args = True, args[1:]
    sys.path.insert(0, os.getcwd())
    src = open(args[0]) if args and args[0] != "-" else sys.stdin
    out = sys.stdout
    with multiprocessing.Pool(jobs) as pool:
        if in_parent:
            parsed = (json.loads(l) for l in src if l.strip())
            ids = collections.deque()  # imap yields in input order
            tasks = (ids.append(j.get("id")) or
                     (j["fn"], j.get("args", ()), j.get("kwargs", {}))
                     for j in parsed)
            for status, value in pool.imap(call, tasks, chunksize=chunksize):
                key = "value" if status == "ok" else "error"
                out.write(json.dumps({"id": ids.popleft(), "status": status,
                                      key: value}))
                out.write("\n")
        else:
            imap = pool.imap_unordered if unordered else pool.imap
            for rec in imap(run, (l for l in src if l.strip()),
                            chunksize=chunksize):
                out.write(rec)
                out.write("\n")
    out.flush()


if __name__ == "__main__":
    main()
