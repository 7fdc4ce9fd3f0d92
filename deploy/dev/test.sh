#!/usr/bin/env bash
# Runs every test of the workspace against a real (throwaway) Samba AD DC on 127.0.0.1.
#
#   deploy/dev/test.sh [extra cargo test arguments]
#
# Installs Samba, the LDAP tools and the Kerberos build dependencies when missing (Debian/Ubuntu,
# via sudo when not root), starts the DC, runs `cargo test --workspace` once, with the agent's
# `kerberos` feature (so its Kerberos bind is built and tested against the DC's KDC as well; the
# rest of the workspace is the same either way), and stops the DC again.
set -euo pipefail
cd "$(dirname "$0")/../.."
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo --preserve-env=DC_DIR,TEMPLATE_DIR "$@"; fi; }

echo "==> installing test dependencies (Samba AD DC, ldap-utils, MIT Kerberos) if missing"
as_root deploy/dev/install-deps.sh
echo "==> starting the throwaway Samba AD DC"
as_root deploy/dev/samba-dc.sh start
trap 'echo "==> stopping the throwaway Samba AD DC"; as_root deploy/dev/samba-dc.sh stop >/dev/null' EXIT
echo "==> cargo test --workspace --features pwrelay-agent/kerberos"
cargo test --workspace --features pwrelay-agent/kerberos "$@"
