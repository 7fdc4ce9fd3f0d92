#!/usr/bin/env bash
# Holds the relay's API to its own OpenAPI document: starts a relay alone (no agent, no DC) on
# 127.0.0.1 and runs schemathesis (from PyPI, in a virtualenv) with every check but one against
# /v1/openapi.json, bounded in examples and time. Fails on any failing check.
#
# The one check left out is `use_after_free` (a read that succeeds after a successful DELETE):
# `DELETE /v1/jobs/{id}` cancels a job, and the cancelled job stays readable as a record of what
# was asked (state `cancelled`), as its documentation says; that is the contract, not a leak.
# deploy/dev/contract_hooks.py gives generated requests the domains this relay serves, which
# the document cannot list (see the file).
#
#   deploy/dev/contract.sh
#
# Environment: CONTRACT_MAX_EXAMPLES (per operation, default 50), CONTRACT_MAX_SECONDS (the whole
# run, default 300), CONTRACT_SEED (default 1: reproducible), CONTRACT_VENV (default
# target/contract-venv), CONTRACT_KEEP=1 keeps the relay's directory and schemathesis's report.
set -euo pipefail
cd "$(dirname "$0")/../.."

max_examples=${CONTRACT_MAX_EXAMPLES:-50}
max_seconds=${CONTRACT_MAX_SECONDS:-300}
seed=${CONTRACT_SEED:-1}
venv=${CONTRACT_VENV:-target/contract-venv}
schemathesis_version=4.32.5
domains=corp.example.com,other.example.com

if [ ! -x "$venv/bin/schemathesis" ] || ! "$venv/bin/schemathesis" --version | grep -q "$schemathesis_version"; then
  echo "==> installing schemathesis $schemathesis_version into $venv"
  # --clear: a venv whose interpreter path moved or is gone is made again, not reused.
  python3 -m venv --clear "$venv"
  "$venv/bin/pip" install --quiet "schemathesis==$schemathesis_version"
fi

echo "==> building pwrelay"
cargo build -p pwrelay-relay --bin pwrelay
bin=target/debug/pwrelay

dir=$(mktemp -d)
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  if [ "${CONTRACT_KEEP:-}" = 1 ]; then echo "kept $dir"; else rm -rf "$dir"; fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
api_port=$(free_port)
link_port=$(free_port)
"$bin" pki init --dir "$dir/pki" --relay-name localhost --relay-name 127.0.0.1 >/dev/null
"$bin" store-key generate --out "$dir/store.key" >/dev/null
# The rate limits are raised: schemathesis sends hundreds of requests a second from one address,
# and the run is about the contract, not the limits (relay/tests/edge.rs tests those).
cat > "$dir/relay.toml" <<TOML
domains = ["${domains//,/\", \"}"]
[api]
listen = "127.0.0.1:$api_port"
cert_file = "pki/relay.pem"
key_file = "pki/relay.key"
[api.limits]
requests_per_second_per_address = 100000
burst_per_address = 100000
requests_per_second_per_client = 100000
burst_per_client = 100000
[link]
listen = "127.0.0.1:$link_port"
cert_file = "pki/relay.pem"
key_file = "pki/relay.key"
agent_ca_file = "pki/ca.pem"
[store]
path = "relay.db"
key_file = "store.key"
[log]
level = "warn"
TOML
# Every operation a client gets without --operation, and audit (GET /v1/audit is granted only
# explicitly), so the run reaches every route's success answers.
token=$("$bin" clients add contract-pam --operation rotate --operation verify --operation unlock \
  --operation reconcile --operation status --operation audit --config "$dir/relay.toml" 2>/dev/null)

echo "==> starting the relay on 127.0.0.1:$api_port"
"$bin" serve --config "$dir/relay.toml" > "$dir/relay.log" 2>&1 & pid=$!
base=https://127.0.0.1:$api_port
for _ in $(seq 1 100); do
  curl -sf --cacert "$dir/pki/ca.pem" "$base/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -sf --cacert "$dir/pki/ca.pem" "$base/healthz" >/dev/null || { echo "the relay did not start; see $dir/relay.log" >&2; tail -20 "$dir/relay.log" >&2; exit 1; }

# Requests may take up to the 60 s long poll (`GET /v1/jobs/{id}?wait=60`), so the request timeout
# and the response time check are above it.
echo "==> schemathesis: every check but use_after_free, at most $max_examples examples per operation and ${max_seconds}s, seed $seed"
status=0
PYTHONPATH="$PWD/deploy/dev" SCHEMATHESIS_HOOKS=contract_hooks CONTRACT_DOMAINS="$domains" \
timeout --kill-after=30 "$((max_seconds + 120))" \
  "$venv/bin/schemathesis" --no-color run "$base/v1/openapi.json" \
    --checks all \
    --exclude-checks use_after_free \
    --max-examples "$max_examples" \
    --max-time "$max_seconds" \
    --seed "$seed" \
    --request-timeout 70 \
    --max-response-time 65 \
    --tls-verify "$dir/pki/ca.pem" \
    --header "Authorization: Bearer $token" \
    --report junit --report-dir "$dir/report" || status=$?
if ! kill -0 "$pid" 2>/dev/null; then
  echo "the relay exited during the run; see $dir/relay.log" >&2
  status=1
fi
if grep -q panicked "$dir/relay.log"; then
  echo "the relay panicked during the run:" >&2
  grep -A3 panicked "$dir/relay.log" >&2
  status=1
fi
exit "$status"
