#!/usr/bin/env python3
"""Turns a results directory of bench/run-all.sh into BENCHMARKS.md and its pictures.

    python3 bench/report/render.py RESULTS_DIR [--out-md PATH] [--img-dir DIR] [--template PATH]

Reads the JSON that every `bench <subcommand> --json` wrote (ingest-b<batch>-d<dup>.json,
sweep-c<n>.json, auth.json, config.json, flood.json, startup.json), the chaos run's
timeline (chaos.json) and log (chaos.log), and machine.json; fills the {{placeholders}}
of bench/report/BENCHMARKS.template.md; draws PNGs (matplotlib, Agg). Every "met?" is
computed here from the figures. Missing results show as "not measured".
"""
import argparse
import glob
import json
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PCTS = [("p50", "p50_ms"), ("p90", "p90_ms"), ("p99", "p99_ms"), ("p99.9", "p999_ms")]


# --- reading ----------------------------------------------------------------------------

def load(results):
    r = {}
    for path in glob.glob(os.path.join(results, "*.json")):
        with open(path) as f:
            r[os.path.basename(path)[:-5]] = json.load(f)
    log = os.path.join(results, "chaos.log")
    r["chaos_log"] = open(log).read() if os.path.exists(log) else ""
    return r


def ingest_runs(r):
    """[(batch, dup%, report)] sorted."""
    out = []
    for name, v in r.items():
        m = re.fullmatch(r"ingest-b(\d+)-d(\d+)", name)
        if m:
            out.append((int(m[1]), int(m[2]), v))
    return sorted(out, key=lambda t: (t[0], t[1]))


def sweep_runs(r):
    out = [(int(n[7:]), v) for n, v in r.items() if re.fullmatch(r"sweep-c\d+", n)]
    return sorted(out, key=lambda t: t[0])


def get(d, *keys):
    for k in keys:
        if d is None:
            return None
        d = d.get(k) if isinstance(d, dict) else None
    return d


# --- formatting -------------------------------------------------------------------------

def num(x, digits=0):
    return "–" if x is None else f"{x:,.{digits}f}"


def ms(x):
    if x is None:
        return "–"
    return f"{x:.3f} ms" if x < 1 else f"{x:.1f} ms" if x < 100 else f"{x:.0f} ms"


def pct(x):
    return "–" if x is None else f"{100 * x:.0f}%"


def load_range(meta):
    a, b = get(meta, "loadavg_start"), get(meta, "loadavg_end")
    return "–" if not a else f"{a[0]:.1f} → {b[0]:.1f}" if b else f"{a[0]:.1f}"


def table(header, rows, align=None):
    align = align or ["---"] + ["---:"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


NOT_MEASURED = "_Not measured in this run._"


# --- sections ---------------------------------------------------------------------------

def machine(r):
    m = r.get("machine", {})
    if not m:
        return NOT_MEASURED
    metas = [v["meta"] for v in r.values() if isinstance(v, dict) and "meta" in v]
    starts = sorted(x["started_utc"] for x in metas if x.get("started_utc"))
    ends = sorted(x["finished_utc"] for x in metas if x.get("finished_utc"))
    when = f"{starts[0][:16].replace('T', ' ')} – {ends[-1][11:16]} UTC" if starts and ends else "–"
    la = lambda k: ", ".join(m.get(k) or []) or "–"
    commit = (m.get("git_commit") or "?") + (" with local changes" if m.get("git_dirty") else "")
    text = (f"**Machine:** {m.get('cpus')} CPUs ({m.get('cpu_model')}), {m.get('memory_gib')} GiB, "
            f"Linux {m.get('kernel')}; PostgreSQL {m.get('postgres')}, {m.get('redis')}, "
            f"{m.get('nats')}; {m.get('rustc')}; commit {commit}.\n"
            f"**Run:** {when}; machine load average (1 min, 5 min, 15 min) {la('loadavg_start')} "
            f"at the start, {la('loadavg_end')} at the end. Each table gives the 1-minute load "
            f"average at the start and end of its own stage.")
    if m.get("quick"):
        text += ("\n\n> **These are `--quick` figures** (phases of a second or two): they check "
                 "the script, they say nothing about the service.")
    return text


def startup_table(r):
    s = r.get("startup")
    if not s:
        return NOT_MEASURED
    runs = get(s, "config", "runs")
    rows = [[x["store"], ms(x["startup_ms"]), f"{x['idle_rss_mib']:.1f} MiB",
             ", ".join(f"{v:.0f}" for v in x["startup_ms_all"])] for x in s["stores"]]
    size = s.get("binary_bytes")
    out = table(["store", f"start-up to ready (median of {runs})", "idle RSS (median)", "every start (ms)"],
                rows, ["---", "---:", "---:", "---"])
    out += f"\n\nRelease binary: {size / 2**20:.0f} MiB. Load average: {load_range(s['meta'])}." if size else ""
    return out


def ingest_table(r):
    runs = ingest_runs(r)
    if not runs:
        return NOT_MEASURED
    rows = []
    for b, d, v in runs:
        c = get(v, "config", "concurrency")
        rows.append([b, c, f"{d}%",
                     f"{num(v.get('pg_ceiling_before_rows_per_s'))} / {num(v.get('pg_ceiling_after_rows_per_s'))}",
                     num(v.get("nats_ceiling_msgs_per_s")),
                     f"**{num(get(v, 'peak', 'accepted_events_per_s'))}**",
                     num(get(v, "peak", "judged_events_per_s")),
                     pct(v.get("vs_pg_ceiling")), pct(v.get("vs_nats_ceiling")),
                     num(get(v, "peak", "errors")), num(v.get("sidecar_rss_mb") or v.get("peak_rss_mb")),
                     load_range(v["meta"])])
    throughput = table(["batch", "concurrency", "duplicates", "raw PostgreSQL rows/s (before / after)",
                        "raw JetStream msg/s", "accepted events/s", "judged events/s", "vs PostgreSQL",
                        "vs JetStream", "errors", "RSS MB", "load"], rows)
    rows = []
    for b, d, v in runs:
        peak, at80 = v.get("peak") or {}, v.get("at_80_percent") or {}
        rows.append([b, f"{d}%"] + [ms(get(peak, "latency", k)) for _, k in PCTS]
                    + [num(v.get("at_80_percent_offered_requests_per_s"))]
                    + [ms(get(at80, "latency", k)) for _, k in PCTS])
    latency = table(["batch", "duplicates"] + [f"{p} at peak" for p, _ in PCTS]
                    + ["80% of peak: requests/s"] + [f"{p} at 80%" for p, _ in PCTS], rows)
    rows = []
    for b, d, v in runs:
        s80 = v.get("at_80_percent_sustained") or {}
        rows.append([b, f"{d}%", num(v.get("backlog_after_peak")), num(v.get("drain_seconds"), 1),
                     f"**{num(v.get('sustained_events_per_s'))}**",
                     num(v.get("at_80_percent_sustained_offered_requests_per_s"))]
                    + [ms(get(s80, "latency", k)) for _, k in PCTS])
    sustained = table(["batch", "duplicates", "backlog at the end of the peak", "drained in s",
                       "sustained accepted events/s (peak + drain)", "80% of it: requests/s"]
                      + [f"{p} at 80% of sustained" for p, _ in PCTS], rows)
    return (throughput + "\n\nLatency of one `POST /events` (closed loop at the peak; open loop at 80% of it):\n\n"
            + latency + "\n\nEnd to end (publishing and aggregation caught up; open loop at 80% of that rate, "
            "from a drained start):\n\n" + sustained)


def sweep_table(r):
    runs = sweep_runs(r)
    if not runs:
        return NOT_MEASURED
    rows = [[c, f"**{num(get(v, 'peak', 'accepted_events_per_s'))}**", num(get(v, "peak", "requests_per_s")),
             ms(get(v, "peak", "latency", "p50_ms")), ms(get(v, "peak", "latency", "p99_ms")),
             num(get(v, "peak", "errors")), load_range(v["meta"])] for c, v in runs]
    return table(["concurrency", "accepted events/s", "requests/s", "p50", "p99", "errors", "load"], rows)


def auth_tables(r):
    a = r.get("auth")
    if not a:
        return NOT_MEASURED
    cfg = a["config"]
    out = [f"{cfg['rounds']} rounds × {cfg['duration']:g} s per configuration (warm-up {cfg['warmup']:g} s), "
           f"load average {load_range(a['meta'])}."]
    for w in a["workloads"]:
        kinds = list(w["rows"][0]["by_kind"]) if w["rows"] else []
        kinds = kinds if len(kinds) > 1 else []  # one kind: its p50 is the p50
        rows = []
        for row in w["rows"]:
            target = "emulator direct" if row["target"] == "direct" else "through sidecar"
            rows.append([target, row["concurrency"]] + [ms(get(row, "latency", k)) for _, k in PCTS]
                        + [ms(get(row, "by_kind", k, "p50_ms")) for k in kinds]
                        + [num(row["requests_per_s"]), num(row["requests"]), num(row["errors"])])
        out.append(f"### {w['title']}")
        out.append(table(["target", "concurrency"] + [p for p, _ in PCTS] + [f"{k} p50" for k in kinds]
                         + ["requests/s", "requests", "errors"], rows))
        rounds = ", ".join(pct(x) for x in w.get("throughput_ratio_by_round", []))
        out.append(f"- added at p50, concurrency 1: **{ms(w.get('added_p50_ms'))}** (all requests)"
                   f"\n- throughput at concurrency {cfg['concurrency']}, sidecar / direct: "
                   f"**{pct(w.get('throughput_ratio'))}** (rounds: {rounds})")
    return "\n\n".join(out)


def config_table(r):
    c = r.get("config")
    if not c:
        return NOT_MEASURED
    title = {"direct": "emulator direct (200)", "sidecar200": "sidecar, no If-None-Match (200)",
             "sidecar304": "sidecar, If-None-Match: ETag (304)"}
    direct = {x["concurrency"]: x["requests_per_s"] for x in c["rows"] if x["target"] == "direct"}
    rows = [[title[x["target"]], x["concurrency"]] + [ms(get(x, "latency", k)) for _, k in PCTS]
            + [num(x["requests_per_s"]), pct(x["requests_per_s"] / direct[x["concurrency"]])
               if direct.get(x["concurrency"]) else "–", num(x["errors"])] for x in c["rows"]]
    cfg = c["config"]
    return (f"{cfg['rounds']} rounds × {cfg['duration']:g} s per configuration, config body "
            f"{c['body_bytes']} bytes, load average {load_range(c['meta'])}.\n\n"
            + table(["target", "concurrency"] + [p for p, _ in PCTS] + ["requests/s", "vs direct", "errors"], rows))


def flood_table(r):
    f = r.get("flood")
    if not f:
        return NOT_MEASURED
    cfg = f["config"]
    names = {"alone": "alone", "burst": f"first {cfg['settle']} s of the flood (its burst)",
             "steady": f"steady {cfg['overload']:g}x flood"}
    rows = [[names[p["phase"]], num(p["requests"]), num(p["errors"]), ms(get(p, "latency", "p50_ms")),
             ms(p.get("p95_ms")), ms(get(p, "latency", "p99_ms")), ms(get(p, "latency", "p999_ms"))]
            for p in f["phases"]]
    fl = f["flooder"]
    per_round = "; ".join(f"{ms(x['good_p99_alone_ms'])} → {ms(x['good_p99_steady_ms'])}" for x in f["rounds"])
    return (f"{cfg['rounds']} rounds × {cfg['seconds']} s, load average {load_range(f['meta'])}.\n\n"
            + table(["phase", "good requests", "good errors", "p50", "p95", "p99", "p99.9"], rows)
            + f"\n\n- good p99 under steady flood / alone: **{num(f.get('p99_ratio'), 2)}** "
              f"(per round, alone → flooded: {per_round})"
            + f"\n- the flooder offered {num(f['flood_offered_events_per_s'])} events/s against its limit of "
              f"{num(f['user_limit_per_s'])}/s: {num(fl['answered_200'])} requests answered 200 "
              f"({num(fl['accepted_events_per_s'])} events/s accepted), {num(fl['answered_429'])} answered 429 "
              f"(p50 {ms(get(fl, 'limited_latency', 'p50_ms'))}, p99 {ms(get(fl, 'limited_latency', 'p99_ms'))}), "
              f"{num(fl['errors'])} errors")


def chaos_faults(r):
    """[(at, seconds, label)] from chaos.json, with the outage lengths from chaos.log."""
    faults = get(r, "chaos", "faults") or []
    lengths = [float(x) for x in re.findall(r"^chaos: t=\s*[\d.]+s .* for ([\d.]+)s$", r["chaos_log"], re.M)]
    return [(f["at"], lengths[i] if i < len(lengths) else 1.0, f["fault"]) for i, f in enumerate(faults)]


def chaos_summary(r):
    log = r["chaos_log"]
    m = re.search(r"chaos figures\n((?:  .*\n?)+)", log)
    if not m:
        return NOT_MEASURED
    seed = re.search(r"chaos: seed (\d+), (\d+) s of load on (\d+) replicas", log)
    passed = "test result: ok" in log
    faults = ", ".join(f"{label} at {at:.0f} s" for at, _, label in chaos_faults(r))
    head = (f"Seed {seed[1]}, {seed[2]} s of load on {seed[3]} replicas. " if seed else "")
    return (head + f"Faults: {faults or '–'}. Reconciliation: **{'clean' if passed else 'FAILED'}**.\n\n"
            "```\n" + m[1].rstrip() + "\n```")


def targets_table(r):
    ing = {(b, d): v for b, d, v in ingest_runs(r)}
    b100, b1 = ing.get((100, 0)), ing.get((1, 0))
    login = next((w for w in get(r, "auth", "workloads") or [] if w["workload"] == "login-refresh"), None)
    # The sidecar's own process when it ran as one (run-all.sh does), else the whole bench
    # process (an upper bound).
    own = [v.get("sidecar_rss_mb") for v in ing.values() if v.get("sidecar_rss_mb")]
    rss = own or [v.get("peak_rss_mb") for v in ing.values() if v.get("peak_rss_mb")]
    rss_what = ("the sidecar's own process, ingest runs" if own
                else "ingest runs: sidecar + load generator + emulator")
    flood = r.get("flood")

    def row(target, value, shown, ok):
        met = "not measured" if value is None else "yes" if ok(value) else "**no**"
        return [target, shown if value is not None else "–", met]

    rows = [
        row("batch 100: accepted events/s ≥ 50% of the raw PostgreSQL ceiling of the same run",
            get(b100, "vs_pg_ceiling"),
            f"{pct(get(b100, 'vs_pg_ceiling'))} ({num(get(b100, 'peak', 'accepted_events_per_s'))} "
            f"of {num(get(b100, 'pg_ceiling_rows_per_s'))} rows/s)", lambda v: v >= 0.5),
        row("batch 1: ≥ 5,000 accepted events/s", get(b1, "peak", "accepted_events_per_s"),
            f"{num(get(b1, 'peak', 'accepted_events_per_s'))} (concurrency {get(b1, 'config', 'concurrency')})",
            lambda v: v >= 5000),
    ]
    for label, v in (("batch 100", b100), ("batch 1", b1)):
        p99 = get(v, "at_80_percent", "latency", "p99_ms")
        rows.append(row(f"{label}: p99 < 50 ms at 80% of the peak rate", p99,
                        f"{ms(p99)} (p50 {ms(get(v, 'at_80_percent', 'latency', 'p50_ms'))})", lambda x: x < 50))
    p99 = get(b100, "at_80_percent_sustained", "latency", "p99_ms")
    rows.append(row("(not a target) batch 100: p99 at 80% of the end-to-end sustained rate", p99,
                    f"{ms(p99)} at {num(get(b100, 'sustained_events_per_s'))} sustained events/s",
                    lambda x: x < 50))
    rows += [
        row("RSS < 150 MB", max(rss) if rss else None,
            f"{num(max(rss) if rss else None)} MB at most ({rss_what})",
            lambda v: v < 150),
        row("auth: ≤ 0.5 ms added at p50 (login + refresh, concurrency 1)", get(login, "added_p50_ms"),
            ms(get(login, "added_p50_ms")), lambda v: v <= 0.5),
        row("auth: ≥ 50% of direct throughput (login + refresh, high concurrency)", get(login, "throughput_ratio"),
            pct(get(login, "throughput_ratio")), lambda v: v >= 0.5),
        row("flood: good user's p99 under a 10x flood within 2x of alone", get(flood, "p99_ratio"),
            f"{num(get(flood, 'p99_ratio'), 2)}x", lambda v: v <= 2.0),
    ]
    return table(["target", "measured", "met?"], rows, ["---", "---", "---"])


# --- pictures ---------------------------------------------------------------------------

def matplotlib_or_none():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("matplotlib missing: python3 -m pip install --quiet matplotlib", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "matplotlib"], check=False)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        plt.rcParams.update({"figure.dpi": 110, "axes.grid": True, "grid.alpha": 0.3,
                             "axes.spines.top": False, "axes.spines.right": False})
        return plt
    except ImportError:
        return None


def fig_concurrency(plt, r, path):
    runs = sweep_runs(r)
    if not runs:
        return False
    cs = [c for c, _ in runs]
    fig, (ax, lat) = plt.subplots(1, 2, figsize=(11, 4))
    ax.plot(cs, [get(v, "peak", "accepted_events_per_s") for _, v in runs], "o-", lw=2, label="sidecar, accepted events/s")
    b100 = r.get("ingest-b100-d0") or {}
    for key, style, label in (("pg_ceiling_rows_per_s", "--", "raw PostgreSQL ceiling (rows/s)"),
                              ("nats_ceiling_msgs_per_s", ":", "raw JetStream ceiling (msg/s)")):
        if b100.get(key):
            c = get(b100, "config", "concurrency")
            ax.axhline(b100[key], ls=style, color="grey", label=f"{label}, concurrency {c}")
    ax.set(xscale="log", xlabel="concurrent clients", ylabel="events/s",
           title="POST /events, batch 100: throughput", ylim=(0, None))
    ax.set_xticks(cs, [str(c) for c in cs])
    ax.yaxis.set_major_formatter(plt_formatter(lambda v, _: f"{v:,.0f}"))
    ax.legend(fontsize=8)
    for (label, key), m in zip(PCTS, "os^v"):
        lat.plot(cs, [get(v, "peak", "latency", key) for _, v in runs], m + "-", label=label)
    lat.set(xscale="log", yscale="log", xlabel="concurrent clients", ylabel="ms", title="latency of one request")
    lat.set_xticks(cs, [str(c) for c in cs])
    lat.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def grouped_bars(ax, groups, title):
    """groups: [(label, latency dict)]; bars p50/p90/p99/p99.9 per group, log scale."""
    width = 0.8 / len(PCTS)
    for i, (p, key) in enumerate(PCTS):
        xs = [g + (i - 1.5) * width for g in range(len(groups))]
        bars = ax.bar(xs, [(lat or {}).get(key) or 0 for _, lat in groups], width, label=p)
        ax.bar_label(bars, labels=[short(b.get_height()) for b in bars], fontsize=6.5, padding=1)
    ax.set_xticks(range(len(groups)), [label for label, _ in groups], fontsize=8)
    ax.set(yscale="log", ylabel="ms (log scale)", title=title)
    ax.margins(y=0.15)
    plain = plt_formatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plt_formatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))
    ax.legend(fontsize=8, ncol=4, loc="upper left")


def short(v):
    return "" if not v else f"{v:.2f}" if v < 1 else f"{v:.1f}" if v < 10 else f"{v:.0f}"


def plt_formatter(fn):
    from matplotlib.ticker import FuncFormatter
    return FuncFormatter(fn)


def fig_latency(plt, r, path):
    panels = []
    ing = [(f"batch {b}, {d}% dup\n(c{get(v, 'config', 'concurrency')}, peak)", get(v, "peak", "latency"))
           for b, d, v in ingest_runs(r)]
    if ing:
        panels.append((ing, "POST /events (closed loop at the peak)"))
    for w in get(r, "auth", "workloads") or []:
        groups = [(f"{'direct' if x['target'] == 'direct' else 'sidecar'}, c{x['concurrency']}", x["latency"])
                  for x in w["rows"]]
        panels.append((groups, f"auth: {w['title']}"))
    if r.get("config"):
        name = {"direct": "emulator direct", "sidecar200": "sidecar 200", "sidecar304": "sidecar 304"}
        panels.append(([(f"{name[x['target']]}, c{x['concurrency']}", x["latency"]) for x in r["config"]["rows"]],
                       "GET /config"))
    if not panels:
        return False
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 3.4 * len(panels)), squeeze=False)
    for ax, (groups, title) in zip(axes[:, 0], panels):
        grouped_bars(ax, groups, title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def fig_ceilings(plt, r, path):
    runs = [(b, d, v) for b, d, v in ingest_runs(r) if v.get("vs_pg_ceiling") or v.get("vs_nats_ceiling")]
    if not runs:
        return False
    fig, ax = plt.subplots(figsize=(10, 4))
    xs = range(len(runs))
    for off, key, label in ((-0.2, "vs_pg_ceiling", "vs raw PostgreSQL"), (0.2, "vs_nats_ceiling", "vs raw JetStream")):
        vals = [100 * (v.get(key) or 0) for _, _, v in runs]
        bars = ax.bar([x + off for x in xs], vals, 0.4, label=label)
        ax.bar_label(bars, fmt="%.0f%%", fontsize=8)
    ax.axhline(50, color="red", ls="--", lw=1, label="target for batch 100 vs PostgreSQL: 50%")
    ax.set_xticks(list(xs), [f"batch {b}, {d}% dup" for b, d, _ in runs], fontsize=8)
    ax.set_ylim(0, max([60] + [115 * (v.get(k) or 0) for _, _, v in runs for k in ("vs_pg_ceiling", "vs_nats_ceiling")]))
    ax.set(ylabel="% of the ceiling", title="sidecar accepted events/s as a share of the raw ceilings (same run)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def fig_chaos(plt, r, path):
    per_s = get(r, "chaos", "acceptedPerSecond")
    if not per_s:
        return False
    fig, ax = plt.subplots(figsize=(11, 4))
    ax.step(range(len(per_s)), per_s, where="post", color="black", lw=1.5, label="accepted events/s")
    colors = {}
    top = max(per_s) or 1
    for at, length, label in chaos_faults(r):
        color = colors.setdefault(label, plt.cm.tab10(len(colors)))
        ax.axvspan(at, at + length, color=color, alpha=0.3, lw=0)
        ax.text(at + length / 2, 0.98, label, rotation=90, ha="center", va="top", fontsize=8,
                transform=ax.get_xaxis_transform())
    ax.set(xlabel="seconds since the load started", ylabel="accepted events/s", ylim=(0, top * 1.6),
           xlim=(0, len(per_s)), title="chaos run: accepted events/s while faults strike (shaded: fault active)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


FIGURES = {
    "ingest-concurrency": (fig_concurrency, "accepted events/s and latency against concurrent clients"),
    "latency": (fig_latency, "latency percentiles"),
    "ingest-ceilings": (fig_ceilings, "ingest as a share of the raw ceilings"),
    "chaos-timeline": (fig_chaos, "chaos timeline"),
}


# --- main -------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results")
    ap.add_argument("--out-md", default=os.path.join(ROOT, "BENCHMARKS.md"))
    ap.add_argument("--img-dir", default=os.path.join(ROOT, "docs", "bench"))
    ap.add_argument("--template", default=os.path.join(HERE, "BENCHMARKS.template.md"))
    args = ap.parse_args()
    r = load(args.results)
    os.makedirs(args.img_dir, exist_ok=True)
    plt = matplotlib_or_none()
    if plt is None:
        sys.exit("matplotlib is not available and could not be installed")
    rel = os.path.relpath(args.img_dir, os.path.dirname(os.path.abspath(args.out_md)))
    values = {name: fn(r) for name, fn in (
        ("machine", machine), ("targets_table", targets_table), ("startup_table", startup_table),
        ("ingest_table", ingest_table), ("ingest_sweep_table", sweep_table), ("auth_tables", auth_tables),
        ("config_table", config_table), ("flood_table", flood_table), ("chaos_summary", chaos_summary))}
    for name, (draw, alt) in FIGURES.items():
        drawn = draw(plt, r, os.path.join(args.img_dir, name + ".png"))
        values["fig:" + name] = f"![{alt}]({rel}/{name}.png)" if drawn else "_(No figure: not measured in this run.)_"
        print(("drew " if drawn else "skipped ") + os.path.join(args.img_dir, name + ".png"))
    with open(args.template) as f:
        template = f.read()
    unknown = set(re.findall(r"\{\{([^}]+)\}\}", template)) - set(values)
    if unknown:
        sys.exit(f"unknown placeholders in {args.template}: {sorted(unknown)}")
    text = re.sub(r"\{\{([^}]+)\}\}", lambda m: values[m[1]], template)
    with open(args.out_md, "w") as f:
        f.write(text)
    print(f"wrote {args.out_md}")


if __name__ == "__main__":
    main()
