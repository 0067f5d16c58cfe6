#!/usr/bin/env bash
# The monitoring files in deploy/: the alert rules checked and unit-tested with promtool
# (deploy/prometheus/alerts.test.yml, every alert firing and not), the example scrape
# configuration checked (with the rule file it names), and the Grafana dashboard read as JSON,
# every panel query parsed by promtool and the metric names they use listed
# (.ci/dashboard-metrics.py).
# promtool comes from Debian's `prometheus` package: installed here as root when missing
# (./test.sh installs it with the rest), otherwise named and the script fails.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v promtool >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing from Debian: prometheus (for promtool)"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus
  else
    echo "missing: promtool — as root on Debian: apt-get install -y --no-install-recommends prometheus" >&2
    exit 1
  fi
fi

echo "== promtool check rules deploy/prometheus/alerts.yml"
promtool check rules deploy/prometheus/alerts.yml

# prometheus.yml names its rule file relative to itself (as Prometheus reads it).
echo "== promtool check config deploy/prometheus/prometheus.yml"
promtool check config deploy/prometheus/prometheus.yml

echo "== promtool test rules deploy/prometheus/alerts.test.yml"
promtool test rules deploy/prometheus/alerts.test.yml

echo "== deploy/grafana/enlace.json: every panel query parses"
work="$(mktemp -d -t enlace-dashboard.XXXXXX)"
trap 'rm -rf "$work"' EXIT
python3 .ci/dashboard-metrics.py --rules deploy/grafana/enlace.json > "$work/dashboard-rules.yml"
promtool check rules "$work/dashboard-rules.yml"

echo "== deploy/grafana/enlace.json: the metric names its queries use"
python3 .ci/dashboard-metrics.py deploy/grafana/enlace.json
