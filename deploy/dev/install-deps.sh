#!/usr/bin/env bash
# Installs what the demo and the tests need beyond cargo: Samba AD DC, OpenLDAP clients, OpenSSL,
# PostgreSQL (the store's tests start their own cluster with deploy/dev/postgres.sh; the package's
# own cluster on 5432 is left alone),
# and for the agent's `kerberos` feature (tested by deploy/dev/test.sh) MIT Kerberos: the GSSAPI
# headers and library the libgssapi crate binds to (libkrb5-dev, found with pkg-config), libclang
# for its bindgen build step (libclang-dev), and kinit/klist for the tests (krb5-user); and
# Chromium with its WebDriver (chromium, chromium-driver) for the one-time link page's browser test;
# Python's venv module (python3-venv) for the API contract's schemathesis (deploy/dev/contract.sh);
# and what the install test needs (listed below).
# Debian/Ubuntu only; run as root. Does nothing when everything is present.
set -euo pipefail
packages=(samba samba-ad-provision samba-dsdb-modules samba-vfs-modules ldap-utils openssl curl postgresql
  libkrb5-dev libclang-dev pkg-config krb5-user chromium chromium-driver python3-venv)
# The install test (deploy/dev/install-test.sh): dpkg's user creation (adduser), systemd-analyze
# (systemd), the container image (buildah, ca-certificates), strace for the units' system call
# filters, pgrep (procps).
packages+=(adduser systemd buildah ca-certificates strace procps)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
echo "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The distribution's own samba service is not wanted: the throwaway DC runs from its own directory.
for unit in samba-ad-dc smbd nmbd winbind; do
  (systemctl disable --now "$unit" >/dev/null 2>&1 || true)
done
pkill -x smbd 2>/dev/null || true
pkill -x nmbd 2>/dev/null || true
