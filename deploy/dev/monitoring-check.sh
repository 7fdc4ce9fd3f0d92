#!/usr/bin/env bash
# Checks the Prometheus alert rules of deploy/monitoring/: syntax (`promtool check rules`) and
# behaviour (`promtool test rules`: each alert fires on the series it is meant for and stays
# quiet on the others), and that the Grafana dashboard is valid JSON naming only metrics the
# rules' source, relay/src/metrics.rs and agent/src/metrics.rs, define. Installs the Debian
# package `prometheus` (for promtool) when missing.
#
#   deploy/dev/monitoring-check.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v promtool >/dev/null; then
  echo "==> installing promtool (Debian package prometheus)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null
fi
cd deploy/monitoring
promtool check rules pwrelay.rules.yml
promtool test rules pwrelay.rules.test.yml

echo "==> every metric the rules and the dashboard name is defined"
defined=$(grep -ohE '`pwrelay_[a-z_]+`' ../../relay/src/metrics.rs ../../agent/src/metrics.rs | tr -d '`' | sort -u)
used=$(grep -ohE 'pwrelay_[a-z_]+' pwrelay.rules.yml grafana-dashboard.json | sort -u)
missing=0
for name in $used; do
  base=${name%_bucket}; base=${base%_count}; base=${base%_sum}
  if ! grep -qx "$base" <<<"$defined"; then echo "not a pwrelay metric: $name"; missing=1; fi
done
python3 -c 'import json,sys; json.load(open("grafana-dashboard.json"))' || { echo "grafana-dashboard.json is not valid JSON"; exit 1; }
[ "$missing" = 0 ] || exit 1
echo "monitoring checks passed"
