#!/usr/bin/env python3
"""Writes the rule groups of k8s/prometheusrule.yaml as a plain Prometheus rules file.

    deploy/prometheus/extract-rules.py            # rewrite deploy/prometheus/alerts.rules.yml
    deploy/prometheus/extract-rules.py --check    # exit 1 if the committed file is stale
    deploy/prometheus/extract-rules.py --stdout   # print it

k8s/prometheusrule.yaml is the source; the plain file is what `promtool check rules` and the
unit tests (alerts.test.yml) read, and what a Prometheus without the Operator can load.
"""
import pathlib
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
SOURCE = ROOT / "k8s" / "prometheusrule.yaml"
TARGET = ROOT / "deploy" / "prometheus" / "alerts.rules.yml"
HEADER = (
    "# GENERATED from k8s/prometheusrule.yaml by deploy/prometheus/extract-rules.py: do not edit.\n"
    "# .ci/ops-checks fails when this file and the PrometheusRule differ.\n"
)


class BlockDumper(yaml.SafeDumper):
    """Multi-line strings (the PromQL) as `|` blocks, so the file reads like the source."""


def _str(dumper, value):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


BlockDumper.add_representer(str, _str)


def render() -> str:
    docs = [d for d in yaml.safe_load_all(SOURCE.read_text()) if d]
    rules = [d for d in docs if d.get("kind") == "PrometheusRule"]
    if len(rules) != 1:
        sys.exit(f"{SOURCE}: expected exactly one PrometheusRule, found {len(rules)}")
    groups = rules[0].get("spec", {}).get("groups")
    if not groups:
        sys.exit(f"{SOURCE}: spec.groups is empty")
    body = yaml.dump({"groups": groups}, Dumper=BlockDumper, sort_keys=False,
                     default_flow_style=False, width=4096, allow_unicode=True)
    return HEADER + body


def main() -> int:
    text = render()
    if "--stdout" in sys.argv:
        sys.stdout.write(text)
        return 0
    if "--check" in sys.argv:
        current = TARGET.read_text() if TARGET.exists() else ""
        if current != text:
            print(f"{TARGET.relative_to(ROOT)} is stale: run deploy/prometheus/extract-rules.py",
                  file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    print(f"wrote {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
