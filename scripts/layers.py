#!/usr/bin/env python3
"""Checks that the C files of each component call one another one way.

For each component (cmd/, core/, pyworker/, python/tpar/) it reads the
symbol tables of its object files in a build directory with `nm`: file A
depends on file B when A refers to a function or variable that B defines.
Any cycle in that graph (two files that reach each other) is printed with
the symbols behind each edge, and the exit status is 1.  Calls through
function pointers (callbacks set by a higher layer) are not references,
which is the point: a lower layer reports upward only that way.

usage: scripts/layers.py BUILD_DIR [--graph]
"""
import glob
import os
import subprocess
import sys

COMPONENTS = {
    "cmd": ["cmd/tpar.p/*.o"],
    "core": ["core/libtpar.a.p/*.o"],
    "pyworker": ["pyworker/libtparworkerloop.a.p/*.o", "pyworker/tpar-worker.p/*.o"],
    "python": ["python/tpar/*.p/*.o"],
}


def symbols(obj):
    out = subprocess.run(["nm", "-P", obj], check=True, capture_output=True, text=True).stdout
    defined, used = set(), set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 2:
            continue
        name, kind = parts[0], parts[1]
        if kind == "U":
            used.add(name)
        elif kind in "TDBRCVWGS":  # global definitions (lower case: local)
            defined.add(name)
    return defined, used


def graph(objs):
    return graph_of({o: symbols(o) for o in objs})


def graph_of(syms):
    """{file: (defined, used)} -> {file: {file it uses: [symbols]}}"""
    objs = list(syms)
    owner = {}
    for o, (d, _) in syms.items():
        for s in d:
            owner[s] = o
    edges = {o: {} for o in objs}
    for o, (_, u) in syms.items():
        for s in u:
            t = owner.get(s)
            if t and t != o:
                edges[o].setdefault(t, []).append(s)
    return edges


def sccs(edges):
    """Tarjan's strongly connected components (iterative enough for ~20 files)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(comp)

    for v in edges:
        if v not in index:
            visit(v)
    return out


def name(obj):
    return os.path.basename(obj)[: -len(".o")]


def self_test():
    """The check itself must find a cycle where there is one."""
    syms = {"a.o": ({"fa"}, {"fb"}), "b.o": ({"fb"}, {"fc"}), "c.o": ({"fc"}, {"fa"}),
            "d.o": ({"fd"}, {"fa"})}
    found = [sorted(c) for c in sccs(graph_of(syms)) if len(c) > 1]
    assert found == [["a.o", "b.o", "c.o"]], found
    del syms["c.o"]
    assert all(len(c) == 1 for c in sccs(graph_of(syms)))


def main():
    self_test()
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    build, show = sys.argv[1], "--graph" in sys.argv[2:]
    bad = 0
    checked = 0
    for comp, pats in COMPONENTS.items():
        objs = sorted(o for p in pats for o in glob.glob(os.path.join(build, p)))
        if not objs:
            continue
        checked += 1
        edges = graph(objs)
        if show:
            for a in objs:
                for b, ss in sorted(edges[a].items()):
                    print(f"{comp}: {name(a)} -> {name(b)}  ({', '.join(sorted(ss)[:4])})")
        for c in sccs(edges):
            if len(c) < 2:
                continue
            bad += 1
            print(f"{comp}: cycle between {', '.join(sorted(name(x) for x in c))}:")
            for a in c:
                for b, ss in sorted(edges[a].items()):
                    if b in c:
                        print(f"  {name(a)} -> {name(b)}: {', '.join(sorted(ss))}")
    if not checked:
        print(f"no object files under {build}", file=sys.stderr)
        return 2
    print(f"{checked} components checked, {bad} cycle(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
