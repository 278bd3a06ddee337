"""Writes the report: targets of issue 6 met or not, a Markdown table for
the README and PNG plots (matplotlib, Agg backend)."""
import json
import math

# (label, case key, subject, op, limit, unit, anchor's figure)
TARGETS = [
    ("Cold first call (SPAWN, the default)", "trio.cold", "tpar SPAWN",
     "<=", 20, "ms", "157 ms"),
    ("Cold first call (SPAWN), Python without .pth start-up code",
     "trio.cold_clean", "tpar SPAWN", "<=", 20, "ms", "-"),
    ("Warm latency of run_sync(bool) (SPAWN)", "trio.warm", "tpar SPAWN",
     "<=", 60, "µs", "596 µs"),
    ("Tiny calls per second (SPAWN)", "trio.throughput", "tpar SPAWN",
     ">=", 30000, "calls/s", "2,900/s"),
    ("Tiny calls per second (SPAWN) vs Trio's floor (limiter, one yield), "
     "same run (issue 17)", "trio.throughput:floor", "tpar SPAWN", ">=", 0.65,
     "×", "0.37-0.40×"),
    ("Warm latency beside two CPU-bound processes (SPAWN) vs trio-parallel "
     "(issue 17)", "trio.warm_busy:ratio", "tpar SPAWN", "<=", 1, "×", "-"),
    ("Warm latency, first 20 calls after two CPU-bound processes start "
     "(SPAWN) vs trio-parallel (issue 17)", "trio.warm_busy_first:ratio",
     "tpar SPAWN", "<=", 1, "×", "-"),
    ("Single-use worker per call (FORKSERVER)", "trio.single_use",
     "tpar FORKSERVER", "<=", 2, "ms", "74 ms"),
    ("100 MB round trip (SPAWN)", "trio.bigdata", "tpar SPAWN", "<=", 0.1,
     "s", "0.64 s"),
    ("Idle worker RSS (SPAWN)", "trio.idle_rss", "tpar SPAWN", "<=", 10,
     "MB", "19 MB"),
    ("Idle worker RSS (SPAWN), Python without .pth start-up code",
     "trio.idle_rss_clean", "tpar SPAWN", "<=", 10, "MB", "-"),
    ("CLI tiny jobs per second", "cli.tiny", "tpar -j{n}", ">=", 250000,
     "jobs/s", "81,000/s (Pool script)"),
    ("CLI vs the hand-written Pool script", "cli.tiny:ratio", "tpar -j{n}",
     ">=", 2, "×", "1×"),
    ("CLI parent RSS on a 1,000,000-job stream", "cli.rss", "tpar -j{n}",
     "<", 20, "MB", "-"),
    ("CPU-bound speedup on {n} cores", "cli.cpu_speedup", "tpar -j{n}",
     ">=", 1.9, "×", "-"),
    ("`tpar run operator:add` (issue 2)", "ref.tpar_run",
     "tpar run operator:add --args '[1,2]'", "<", 20, "ms", "-"),
    ("`tpar run operator:add`, Python without .pth start-up code",
     "ref.tpar_run_clean", "tpar run operator:add --args '[1,2]'", "<", 20,
     "ms", "-"),
    ("Remote tiny jobs/s, --slurm vs local workers", "remote.tiny:ratio",
     "tpar --slurm (salloc -n 2)", ">=", 0.5, "×", "-"),
    ("Remote tiny jobs/s, loopback TCP vs local workers", "remote.tiny:ratio",
     "tpar --launcher (2 workers, loopback TCP)", ">=", 0.5, "×", "-"),
    ("10 MB round trip over loopback TCP (Trio, pickled bytes)",
     "remote.trio_payload", "tpar run_sync, open_remote_context (loopback TCP)",
     ">=", 300, "MB/s", "-"),
]


def evaluate_targets(cases, nproc, mode="full"):
    by_key = {c["key"]: c for c in cases}
    out = []
    for label, key, subj, op, limit, unit, anchor in TARGETS:
        label, subj = label.format(n=nproc), subj.format(n=nproc)
        if key == "cli.cpu_speedup":
            limit = 1.9 * nproc / 2
        t = {"target": label, "subject": subj, "limit": f"{op} {fmt(limit)} "
             f"{unit}", "anchor": anchor, "value": None, "met": None,
             "case": key}
        if not key.endswith(":ratio"):
            t["limit_value"] = limit
        if key.endswith(":floor"):
            t.update(floor_ratio(by_key, key.split(":")[0], subj))
            if mode == "smoke" and t["met"] is not None:
                t["met"] = None
                t["why"] = "smoke run: sizes too small to judge"
            out.append(t)
            continue
        want_ratio = key.endswith(":ratio")
        case = by_key.get(key.split(":")[0])
        row = next((r for r in case["results"] if r["subject"] == subj),
                   None) if case else None
        if row is None or "skipped" in row:
            t["why"] = row["skipped"] if row else "case not run"
        elif want_ratio and not row.get("ratio"):
            t["why"] = row.get("ratio_missing", "no peer figure")
        else:
            v = row["ratio"]["median"] if want_ratio else row["median"]
            t["value"] = v
            t["met"] = {"<=": v <= limit, ">=": v >= limit,
                        "<": v < limit}[op]
            if key == "cli.rss" and "1,000,000" not in case["title"]:
                t["met"] = None
                t["why"] = f"measured on a shorter stream ({case['title']})"
            if mode == "smoke":
                t["met"] = None
                t["why"] = "smoke run: sizes too small to judge"
        out.append(t)
    return out


FLOOR_SUBJECT = "Trio alone, limiter and one yield"


def floor_ratio(by_key, key, subj):
    """The subject's calls/s over Trio's floor (bench/trio_floor.py), both
    measured in each repetition: the median of the per-repetition ratios."""
    from common import ratio
    case, floor = by_key.get(key), by_key.get("trio.floor")
    rows = [next((r for r in c["results"] if r["subject"] == s), None) if c else None
            for c, s in ((case, subj), (floor, FLOOR_SUBJECT))]
    if any(r is None or "skipped" in r or "median" not in r for r in rows):
        return {"why": "throughput or floor not measured"}
    r = ratio(rows[0], rows[1])
    if r is None:
        return {"why": "no floor figure"}
    return {"value": r["median"], "met": r["median"] >= 0.65}


def fmt(v):
    if v is None:
        return "-"
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    a = abs(v)
    if a >= 10000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def fmt_ratio(r):
    if not r:
        return "-"
    return f"{fmt(r['median'])}× ({fmt(r['min'])}–{fmt(r['max'])})"


def markdown(report):
    m = report["machine"]
    lines = [
        f"## Benchmarks ({report['mode']} run, {report['date']})", "",
        f"Machine: {m['nproc']} CPUs, {m['cpu_model']}, Linux "
        f"{m['kernel']}, {m['os']}, Python {m['python']} "
        f"(`{m['python_executable']}`); load average at start "
        f"{', '.join(f'{x:.2f}' for x in m['loadavg_at_start'])}, at end "
        f"{', '.join(f'{x:.2f}' for x in report['loadavg_at_end'])}; "
        f"commit {report.get('commit') or '?'}; {report['duration_s']:.0f} s "
        f"for the whole run (`scripts/bench{report['mode_flag']}`). Peers: "
        + ", ".join(f"{k} {v}" for k, v in report["versions"].items() if v)
        + (f", {m['gnu_parallel']}" if m.get("gnu_parallel") else "") + ".",
        "",
        "Each figure is the median of the repetitions with the min–max "
        "range; the ratio is to the peer named beside it, measured in the "
        "same run (median of the per-repetition ratios when the repetitions "
        "were paired). Image links are relative to the repository root, "
        "so this file can be pasted into the README as it is.", "",
        "### Targets (issue 6)", "",
        "| target | tpar | limit | met | anchor |", "|---|---|---|---|---|",
    ]
    for t in report["targets"]:
        met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
        if t["met"] is None and t["value"] is not None:
            met = "not judged"
        val = fmt(t["value"]) if t["value"] is not None else \
            f"– ({t.get('why', '')[:90]})"
        if t["met"] is None and t["value"] is not None:
            val += f" ({t.get('why', '')})"
        lines.append(f"| {t['target']} | {val} | {t['limit']} | {met} | "
                     f"{t['anchor']} |")
    titles = {"trio": "Trio package", "cli": "CLI",
              "reference": "Reference points", "sched": "Scheduling",
              "remote": "Remote workers"}
    for group, gtitle in titles.items():
        cases = [c for c in report["cases"] if c["group"] == group]
        if not cases:
            continue
        if group == "sched":
            lines += ["", f"### {gtitle}", ""] + sched_table(cases)
            lines += [""] + [f"- {c['title']}: {n}" for c in cases
                             for n in c["notes"]]
            continue
        lines += ["", f"### {gtitle}", "",
                  f"![{gtitle}](/bench/results/bench-{group}.png)", ""]
        if group != "reference":
            lines += matrix(cases) + ["", "<details><summary>Every figure "
                                      "with its min–max range</summary>", ""]
        lines += detail_table(cases)
        lines += [""] + [f"- {c['title']}: {n}" for c in cases
                         for n in c["notes"]]
        if group != "reference":
            lines += ["", "</details>"]
    return "\n".join(lines) + "\n"


def sched_table(cases):
    """One row per case: tpar's makespan beside the Pool peer's (same
    run) and the ideal."""
    out = ["| jobs | ideal (s) | tpar (s) | tpar / ideal | Pool.imap_unordered"
           "(chunksize=1) (s) | Pool / ideal | tpar / Pool |",
           "|---|---|---|---|---|---|---|"]
    for c in cases:
        by = {r["subject"].split(" -j")[0].split("(")[0]: r
              for r in c["results"]}
        t, p, i = by.get("tpar"), by.get("Pool.imap_unordered"), \
            by.get("ideal")

        def med(r):
            return None if r is None or "skipped" in r else r["median"]

        def cell(r):
            if r is None:
                return "-"
            if "skipped" in r:
                return "skipped: " + r["skipped"][:60]
            return f"{fmt(r['median'])} ({fmt(r['min'])}–{fmt(r['max'])})"

        tv, pv, iv = med(t), med(p), med(i)
        out.append(f"| {c['title']} | {fmt(iv) if iv else '-'} | {cell(t)} | "
                   f"{fmt(tv / iv) if tv and iv else '-'} | {cell(p)} | "
                   f"{fmt(pv / iv) if pv and iv else '-'} | "
                   f"{fmt(tv / pv) if tv and pv else '-'} |")
    out += ["", "Makespan, median (min–max) of the repetitions, both "
            "subjects in the same run; target: within 10% of ideal, and "
            "never slower than the Pool peer."]
    return out


def matrix(cases):
    """Subjects down, cases across: median and ratio to the peer."""
    subjects = []
    for c in cases:
        for r in c["results"]:
            if r["subject"] not in subjects:
                subjects.append(r["subject"])
    head = "| | " + " | ".join(
        f"{c['title']} ({c['unit']}, {'↓' if c['better'] == 'lower' else '↑'})"
        for c in cases) + " |"
    out = [head, "|---" * (len(cases) + 1) + "|"]
    for s in subjects:
        cells = []
        for c in cases:
            r = next((r for r in c["results"] if r["subject"] == s), None)
            if r is None:
                cells.append("")
            elif "skipped" in r:
                cells.append("skipped")
            else:
                rr = r.get("ratio")
                cells.append(fmt(r["median"]) + (
                    f" ({fmt(rr['median'])}×)" if rr else ""))
        name = f"**{s}**" if s.startswith("tpar") else s
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    peers = {
        "trio": "tpar and ProcessPoolExecutor: trio-parallel of the same "
        "worker type; anyio: trio-parallel SPAWN; parallel_loops: "
        "trio.to_thread",
        "cli": "the Pool.imap script that parses in the parent, with "
        "chunksize=1000, except for the CPU-bound jobs, where it is the "
        "same script with chunksize=1",
        "remote": "tpar with local workers, the same stream and worker count",
    }[cases[0]["group"]]
    out += ["", "Median of the repetitions; in brackets the ratio to the "
            f"peer ({peers}). ↓ lower is better, ↑ higher is better."]
    return out


def detail_table(cases):
    lines = ["| case | subject | median | min–max | ratio to peer "
             "(min–max) | peer |", "|---|---|---|---|---|---|"]
    for c in cases:
        better = "lower" if c["better"] == "lower" else "higher"
        for i, r in enumerate(c["results"]):
            name = f"{c['title']} ({c['unit']}, {better} is better)" \
                if i == 0 else ""
            if "skipped" in r:
                lines.append(f"| {name} | {r['subject']} | skipped: "
                             f"{r['skipped'][:160]} | | | |")
                continue
            lines.append(
                f"| {name} | {r['subject']} | {fmt(r['median'])} | "
                f"{fmt(r['min'])}–{fmt(r['max'])} | "
                f"{fmt_ratio(r.get('ratio'))} | {r.get('ratio_to', '')} |")
    return lines


def plots(report, outdir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    files = []
    for group in ("trio", "cli", "reference", "remote"):
        cases = [c for c in report["cases"] if c["group"] == group]
        if not cases:
            continue
        ncol = 2 if len(cases) > 1 else 1
        nrow = math.ceil(len(cases) / ncol)
        fig, axes = plt.subplots(nrow, ncol, figsize=(7 * ncol, 0.5 + 2.9 *
                                 nrow), squeeze=False)
        limits = {t["case"]: t["limit_value"] for t in report["targets"]
                  if "limit_value" in t}
        for ax, c in zip(axes.flat, cases):
            plot_case(ax, c, limits.get(c["key"]))
        for ax in list(axes.flat)[len(cases):]:
            ax.axis("off")
        m = report["machine"]
        fig.suptitle(f"tpar vs peers: {group} ({report['mode']} run, "
                     f"{m['nproc']} CPUs {m['cpu_model']}, {report['date']})",
                     fontsize=10)
        fig.tight_layout()
        path = outdir / f"bench-{group}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        files.append(path.name)
    return files


def plot_case(ax, c, target=None):
    rows = c["results"]
    names = [r["subject"] for r in rows]
    y = list(range(len(rows)))
    med = [r.get("median", 0) or 0 for r in rows]
    lo = [max(0, r["median"] - r["min"]) if "median" in r else 0
          for r in rows]
    hi = [max(0, r["max"] - r["median"]) if "median" in r else 0
          for r in rows]
    colors = ["#d62728" if n.startswith("tpar") else "#7f7f7f"
              for n in names]
    ax.barh(y, med, xerr=[lo, hi], color=colors, capsize=3)
    ax.set_yticks(y)
    ax.set_yticklabels([n[:38] for n in names], fontsize=7)
    ax.invert_yaxis()
    pos = [v for v in med if v > 0]
    if pos and max(pos) / min(pos) > 30:
        ax.set_xscale("log")
    from matplotlib.transforms import blended_transform_factory
    left = blended_transform_factory(ax.transAxes, ax.transData)
    for i, r in enumerate(rows):
        if "skipped" in r:
            ax.text(0.01, i, "skipped: " + r["skipped"][:60], va="center",
                    fontsize=6, color="#555", transform=left)
        else:
            ax.text(r["max"], i, " " + fmt(r["median"]), va="center",
                    fontsize=6)
    if target is not None:
        ax.axvline(target, color="#1f77b4", linestyle="--", linewidth=1)
        ax.text(target, -0.6, " target", color="#1f77b4", fontsize=6,
                va="bottom")
    ax.set_title(f"{c['title']}\n({c['unit']}, {c['better']} is better)",
                 fontsize=8)
    ax.tick_params(axis="x", labelsize=7)


def write(report, outdir):
    outdir.mkdir(parents=True, exist_ok=True)
    report["plots"] = plots(report, outdir)
    (outdir / "report.md").write_text(markdown(report))
    with open(outdir / "report.json", "w") as f:
        json.dump(report, f, indent=1, ensure_ascii=False)
        f.write("\n")
