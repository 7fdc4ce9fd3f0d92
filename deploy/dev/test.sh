#!/usr/bin/env bash
# Runs every test of the workspace against a real (throwaway) Samba AD DC on 127.0.0.1.
#
#   deploy/dev/test.sh [extra cargo test arguments]
#
# Installs Samba, the LDAP tools, PostgreSQL and the Kerberos build dependencies when missing
# (Debian/Ubuntu, via sudo when not root), starts the DC and a throwaway PostgreSQL cluster
# (deploy/dev/postgres.sh; its URL goes to the tests as PWRELAY_TEST_POSTGRES_URL, so the store's
# contract tests run against both backends), runs `cargo test --workspace` once, with the agent's
# `kerberos` feature (so its Kerberos bind is built and tested against the DC's KDC as well; the
# rest of the workspace is the same either way), then the API contract (deploy/dev/contract.sh:
# schemathesis against a relay alone, which needs python3-venv and PyPI), then the alert rules'
# promtool checks (deploy/dev/monitoring-check.sh), then the short run of the fault suite
# (relay/tests/fault_suite, see RELIABILITY.md; it halts and pauses this DC, so it runs alone, after
# the other tests; seed 11 unless FAULT_SEED is set, and the other FAULT_* variables pass through),
# then, as root, the install test (deploy/dev/install-test.sh: the Debian packages built, installed and
# run as their systemd units run them, and the relay's container image, each with a rotation against
# this DC; it leaves the host as it found it), and stops the DC and the cluster again.
set -euo pipefail
cd "$(dirname "$0")/../.."
# One build per run: incremental data only costs disk (gigabytes over the workspace's test builds).
export CARGO_INCREMENTAL=0
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo --preserve-env=DC_DIR,TEMPLATE_DIR,PG_DIR,PG_PORT "$@"; fi; }

echo "==> installing test dependencies (Samba AD DC, ldap-utils, PostgreSQL, MIT Kerberos) if missing"
as_root deploy/dev/install-deps.sh
stop_services() {
  echo "==> stopping the throwaway Samba AD DC and PostgreSQL cluster"
  as_root deploy/dev/samba-dc.sh stop >/dev/null || true
  as_root deploy/dev/postgres.sh stop >/dev/null || true
}
trap stop_services EXIT
echo "==> starting the throwaway Samba AD DC"
as_root deploy/dev/samba-dc.sh start
echo "==> starting the throwaway PostgreSQL cluster"
as_root deploy/dev/postgres.sh start
eval "$(as_root deploy/dev/postgres.sh env)"
export PWRELAY_TEST_POSTGRES_URL PWRELAY_TEST_POSTGRES_PASSWORD_FILE PWRELAY_TEST_POSTGRES_CA_FILE
echo "==> cargo test --workspace --features pwrelay-agent/kerberos"
cargo test --workspace --features pwrelay-agent/kerberos "$@"
echo "==> API contract: schemathesis (from PyPI, in target/contract-venv) against a live relay and its /v1/openapi.json (about 6 minutes)"
deploy/dev/contract.sh
echo "==> monitoring: promtool check and test the alert rules; the dashboard names only served metrics"
deploy/dev/monitoring-check.sh
if [ "$(id -u)" = 0 ]; then
  echo "==> fault suite, short run: the real relay and two agents under kills, pauses and DC outages (about two minutes)"
  FAULT_SEED=${FAULT_SEED:-11} FAULT_DC_EXCLUSIVE=1 FAULT_AGENT_FEATURES=kerberos \
    cargo test -p pwrelay-relay --features pwrelay-agent/kerberos --test fault_suite -- --ignored --nocapture
else
  echo "==> fault suite NOT run: it halts and pauses the DC's processes, which needs root (see RELIABILITY.md)"
fi
# --- install test: the Debian packages and the relay's container image (deploy/dev/install-test.sh) ---
if [ "$(id -u)" = 0 ]; then
  echo "==> install test: packages installed, both services run as their units run them, the relay's image; a rotation through each (about 9 minutes with its release build)"
  deploy/dev/install-test.sh
else
  echo "==> install test NOT run: it installs the packages and creates their users, which needs root"
fi
# --- end of the install test ---
