#!/usr/bin/env python3
"""Prints the metric names the Grafana dashboard's queries use, sorted, one a line.

Usage: .ci/dashboard-metrics.py [--rules] [deploy/grafana/enlace.json]

Reads the dashboard as JSON (a file that is not JSON fails here), takes every query in it (each
panel's `targets[].expr`, in rows too, and each query variable's query) and names the metrics
they select: a histogram's `_bucket`, `_sum` and `_count` series are named by the histogram
itself. The Rust tests compare this list with what the node and the registry export.
Deterministic and with nothing but the standard library: no PromQL parser, only what the
dashboard's queries use (selectors, functions, aggregations with `by`/`without`, binary
operators with `on`/`ignoring`, `label_values`, Grafana's `$variables`).

With `--rules` it prints instead a Prometheus rule file with one recording rule per panel query,
Grafana's variables replaced by values that select everything, for `promtool check rules` to
parse every query (.ci/prometheus-rules.sh).
"""

import json
import re
import sys

# Words of PromQL that look like metric names but are not.
KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
    "and", "or", "unless", "atan2", "inf", "nan",
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def queries(dashboard):
    """Every PromQL query of the dashboard, in file order."""
    out = []

    def walk_panels(panels):
        for panel in panels or []:
            for target in panel.get("targets") or []:
                if isinstance(target.get("expr"), str):
                    out.append(target["expr"])
            walk_panels(panel.get("panels"))

    walk_panels(dashboard.get("panels"))
    for var in (dashboard.get("templating") or {}).get("list") or []:
        if var.get("type") != "query":
            continue
        q = var.get("query")
        if isinstance(q, dict):
            q = q.get("query")
        if isinstance(q, str):
            out.append(q)
    return out


def metric_names(expr):
    """The metric names one query selects."""
    s = expr
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', s)  # string literals (label values, regexes)
    s = re.sub(r"'(?:[^'\\]|\\.)*'", "''", s)
    s = re.sub(r"\$\{?\w+\}?", " ", s)  # Grafana variables
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # ranges and subqueries
    s = re.sub(r"\boffset\s+\S+", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    # label_values(metric, label) selects metric; label_values(label) selects none.
    s = re.sub(r"\blabel_values\s*\(\s*([A-Za-z_:][\w:]*)?\s*,\s*\w+\s*\)", r" \1 ", s)
    s = re.sub(r"\blabel_values\s*\(\s*\w+\s*\)", " ", s)
    s = re.sub(r"(?<![\w.])\d+(\.\d+)?([eE][+-]?\d+)?(?![\w.])", " ", s)  # numbers
    names = set()
    for m in re.finditer(r"[A-Za-z_:][\w:]*", s):
        word = m.group(0)
        if word.lower() in KEYWORDS:
            continue
        if re.match(r"\s*\(", s[m.end():]):  # a function or an aggregation
            continue
        for suffix in HISTOGRAM_SUFFIXES:
            if word.endswith(suffix):
                word = word[: -len(suffix)]
                break
        names.add(word)
    return names


def as_rules(dashboard):
    """A rule file (JSON, which is YAML) recording every panel query."""
    exprs = [q for q in queries(dashboard) if not q.lstrip().startswith("label_values")]
    rules = []
    for i, q in enumerate(exprs, 1):
        q = re.sub(r"\$\{?__rate_interval\}?|\$\{?__interval\}?|\$\{?__range\}?", "5m", q)
        q = re.sub(r"\$\{?\w+\}?", ".*", q)
        rules.append({"record": f"dashboard:query_{i}", "expr": q})
    return json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}, indent=2)


def main(argv):
    args = argv[1:]
    rules = "--rules" in args
    args = [a for a in args if a != "--rules"]
    path = args[0] if args else "deploy/grafana/enlace.json"
    try:
        with open(path, encoding="utf-8") as f:
            dashboard = json.load(f)
    except (OSError, ValueError) as e:
        print(f"{path}: {e}", file=sys.stderr)
        return 1
    if not isinstance(dashboard, dict):
        print(f"{path}: not a dashboard (a JSON object)", file=sys.stderr)
        return 1
    if rules:
        print(as_rules(dashboard))
        return 0
    names = set()
    for q in queries(dashboard):
        names |= metric_names(q)
    if not names:
        print(f"{path}: no query names a metric", file=sys.stderr)
        return 1
    for name in sorted(names):
        print(name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
