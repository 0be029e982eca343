#!/usr/bin/env python3
"""Checks that every metric the dashboard and the alert rules query is one the service exports.

    check_metric_names.py --metric-names actors/src/metric_names.rs \
        --dashboard deploy/grafana/sidecar-dashboard.json \
        --rules deploy/prometheus/alerts.rules.yml
    check_metric_names.py --metric-names actors/src/metric_names.rs --scrape metrics.txt

The exported names are the `pub const NAME: &str = "..."` of metric_names.rs; a const passed
to `describe_histogram!` is a histogram, queried as NAME_bucket, NAME_sum or NAME_count (its
bare name is no series). Queries are parsed with a real PromQL parser (promql-parser, the
Python binding of the Rust crate), after Grafana's variables are replaced by placeholders.
Rules may also use the few metrics of other exporters listed in EXTERNAL.

With --scrape (a saved GET /metrics), it checks the other direction: every counter and gauge
of metric_names.rs is in the scrape with its declared type (CONTRACT.md section 10: present
from start-up), and so is every histogram once it has observed a value.
"""
import argparse
import json
import pathlib
import re
import sys

import promql_parser
import yaml

# Series the rules read from other exporters (kube-state-metrics, Prometheus itself).
EXTERNAL = {
    "up": "Prometheus scrape health",
    "kube_pod_container_status_restarts_total": "kube-state-metrics",
    "kube_pod_container_status_last_terminated_reason": "kube-state-metrics",
}


def declared_types(path: pathlib.Path) -> dict[str, str]:
    """{metric name: counter | gauge | histogram} from the describe_* calls."""
    text = path.read_text()
    consts = dict(re.findall(r'pub\s+const\s+([A-Z0-9_]+)\s*:\s*&str\s*=\s*"([^"]+)"\s*;', text))
    return {consts[c]: kind for kind, c in re.findall(r'describe_(counter|gauge|histogram)!\(\s*([A-Z0-9_]+)\s*,', text)
            if c in consts}


def check_scrape(metric_names: pathlib.Path, scrape: pathlib.Path) -> list[str]:
    types = declared_types(metric_names)
    seen_type: dict[str, str] = {}
    samples: set[str] = set()
    for line in scrape.read_text().splitlines():
        m = re.match(r"#\s*TYPE\s+(\S+)\s+(\S+)", line)
        if m:
            seen_type[m.group(1)] = m.group(2)
        elif line and not line.startswith("#"):
            samples.add(re.match(r"[^{\s]+", line).group(0))
    errors = []
    waiting = []
    for name, kind in sorted(types.items()):
        present = (name + "_bucket") in samples if kind == "histogram" else name in samples
        if not present:
            if kind == "histogram":
                waiting.append(name)
            else:
                errors.append(f"{name} ({kind}) is not in the scrape; the contract wants it from start-up")
            continue
        if seen_type.get(name) != kind:
            errors.append(f"{name} has TYPE {seen_type.get(name)} in the scrape; metric_names.rs describes a {kind}")
    print(f"  {len(types) - len(waiting) - len(errors)} of {len(types)} exported metrics present with their declared type"
          + (f"; histograms with no observation yet (no series until the first): {', '.join(waiting)}" if waiting else ""))
    return errors


def exported_names(path: pathlib.Path) -> tuple[dict[str, str], set[str]]:
    """Returns {series name: const name} and the set of histogram base names."""
    text = path.read_text()
    consts = dict(re.findall(r'pub\s+const\s+([A-Z0-9_]+)\s*:\s*&str\s*=\s*"([a-zA-Z_:][a-zA-Z0-9_:]*)"\s*;', text))
    histograms = set(re.findall(r'describe_histogram!\(\s*([A-Z0-9_]+)\s*,', text))
    metric_consts = {c: n for c, n in consts.items() if re.search(rf'describe_\w+!\(\s*{c}\s*,', text)}
    if not metric_consts:
        sys.exit(f"{path}: found no described metric consts")
    series: dict[str, str] = {}
    hist_names = set()
    for const, name in metric_consts.items():
        if const in histograms:
            hist_names.add(name)
            for suffix in ("_bucket", "_sum", "_count"):
                series[name + suffix] = const
        else:
            series[name] = const
    return series, hist_names


GRAFANA_VARS = [
    (re.compile(r"\$__(rate_interval|interval|range)\b|\$\{__(rate_interval|interval|range)\}"), "5m"),
    (re.compile(r"\$__\w+|\$\{__\w+\}"), "1"),
    (re.compile(r"\$\{?\w+(:\w+)?\}?"), "var"),
]


def grafana_to_promql(expr: str) -> str:
    for pattern, repl in GRAFANA_VARS:
        expr = pattern.sub(repl, expr)
    return expr


def metric_names_of(expr: str) -> set[str]:
    ast = promql_parser.parse(expr)
    found: set[str] = set()

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                found.add(node.name)
            for m in node.matchers.matchers:
                if m.name == "__name__":
                    found.add(m.value)
        return True

    promql_parser.walk(ast, visit)
    return found


def dashboard_queries(path: pathlib.Path):
    """Yields (where, PromQL) for every target and templating query of the dashboard."""
    dash = json.loads(path.read_text())

    def panels(items):
        for p in items:
            yield p
            yield from panels(p.get("panels", []))

    n_panels = 0
    for p in panels(dash.get("panels", [])):
        if p.get("type") == "row":
            continue
        n_panels += 1
        targets = p.get("targets", [])
        if not targets:
            yield f'panel "{p.get("title")}"', None
        for t in targets:
            yield f'panel "{p.get("title")}" {t.get("refId")}', t.get("expr")
    if n_panels == 0:
        yield "dashboard", None
    for var in dash.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        q = var.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = re.fullmatch(r"\s*label_values\((.*),\s*[a-zA-Z_]\w*\s*\)\s*", q or "")
        yield f'variable "{var.get("name")}"', (m.group(1) if m else q)


def rule_queries(path: pathlib.Path):
    rules = yaml.safe_load(path.read_text())
    for group in rules.get("groups", []):
        for rule in group.get("rules", []):
            yield f'rule {rule.get("alert") or rule.get("record")}', rule.get("expr")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--metric-names", required=True, type=pathlib.Path)
    ap.add_argument("--dashboard", action="append", default=[], type=pathlib.Path)
    ap.add_argument("--rules", action="append", default=[], type=pathlib.Path)
    ap.add_argument("--scrape", type=pathlib.Path, help="a saved GET /metrics to check")
    args = ap.parse_args()
    if args.scrape:
        errors = check_scrape(args.metric_names, args.scrape)
        for e in errors:
            print(f"  FAIL {e}")
        return 1 if errors else 0
    if not (args.dashboard or args.rules):
        ap.error("give --dashboard, --rules or --scrape")

    series, histograms = exported_names(args.metric_names)
    errors = []
    used: set[str] = set()
    checked = 0
    sources = [(d, dashboard_queries(d), False) for d in args.dashboard]
    sources += [(r, rule_queries(r), True) for r in args.rules]
    for path, queries, external_ok in sources:
        for where, expr in queries:
            if not expr:
                errors.append(f"{path}: {where}: no query")
                continue
            try:
                names = metric_names_of(grafana_to_promql(expr))
            except Exception as exc:  # the parser's own message says where
                errors.append(f"{path}: {where}: does not parse as PromQL: {exc}")
                continue
            if not names:
                errors.append(f"{path}: {where}: selects no metric")
            for name in sorted(names):
                checked += 1
                if name in series:
                    used.add(series[name])
                elif external_ok and name in EXTERNAL:
                    pass
                elif name in histograms:
                    errors.append(f"{path}: {where}: {name} is a histogram: query {name}_bucket, _sum or _count")
                else:
                    errors.append(f"{path}: {where}: unknown metric {name} (not in {args.metric_names})")
    for e in errors:
        print(f"  FAIL {e}")
    unused = sorted({c for c in series.values()} - used)
    print(f"  {checked} metric references checked against {len(set(series.values()))} exported metrics"
          + (f"; not queried anywhere: {', '.join(unused)}" if unused else "; every exported metric is used"))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
