#!/usr/bin/env bash
# The pwrelay demo, end to end on this machine:
#   throwaway Samba AD DC → PKI → relay + agent → a rotation through the HTTPS API →
#   proof that the new password binds and the old one no longer does.
#
#   deploy/dev/demo.sh          (KEEP=1 leaves the DC, relay and agent running afterwards)
#
# Uses ports 8443 (API), 7443 (agent link), 9444 (agent health) on 127.0.0.1 and writes to .demo/.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
demo=$root/.demo
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold='' plain=''; fi
step() { printf '\n%s==> %s%s\n' "$bold" "$*" "$plain"; }

step "installing Samba AD DC and LDAP tools if missing"
as_root deploy/dev/install-deps.sh

step "building pwrelay and pwrelay-agent"
cargo build --bins --quiet
bin=$root/target/debug

step "starting a throwaway Samba AD DC (realm PWRELAY.TEST) on 127.0.0.1"
as_root deploy/dev/samba-dc.sh start
eval "$(deploy/dev/samba-dc.sh env)"
export LDAPTLS_CACERT=$PWRELAY_TEST_DC_DIR/tls/ca.pem

pids=()
cleanup() {
  if [ "${KEEP:-0}" = 1 ]; then echo "KEEP=1: relay, agent and DC left running (logs in .demo/)"; return; fi
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  as_root deploy/dev/samba-dc.sh stop >/dev/null || true
}
trap cleanup EXIT

step "creating the AD user demo.user with an initial password"
user_dn="CN=demo.user,CN=Users,$PWRELAY_TEST_BASE_DN"
old_password='Initial!Passw0rd-1'
ldapdelete -x -H ldaps://127.0.0.1 -D "$PWRELAY_TEST_ADMIN_DN" -w "$PWRELAY_TEST_ADMIN_PASS" "$user_dn" 2>/dev/null || true
ldapadd -x -H ldaps://127.0.0.1 -D "$PWRELAY_TEST_ADMIN_DN" -w "$PWRELAY_TEST_ADMIN_PASS" >/dev/null <<LDIF
dn: $user_dn
objectClass: user
sAMAccountName: demo.user
userPrincipalName: demo.user@pwrelay.test
unicodePwd:: $(printf '"%s"' "$old_password" | iconv -f UTF-8 -t UTF-16LE | base64 -w0)
userAccountControl: 512
LDIF
echo "created $user_dn"

step "creating the private PKI, the store key and an API client"
rm -rf "$demo" && mkdir -p "$demo/agent"
"$bin/pwrelay" pki init --dir "$demo/pki" --relay-name localhost --relay-name 127.0.0.1
"$bin/pwrelay" store-key generate --out "$demo/store.key"
printf '%s' "$PWRELAY_TEST_ADMIN_PASS" > "$demo/agent/bind.secret" && chmod 600 "$demo/agent/bind.secret"
cat > "$demo/relay.toml" <<TOML
domains = ["pwrelay.test"]
[api]
listen = "127.0.0.1:8443"
cert_file = "pki/relay.pem"
key_file = "pki/relay.key"
[link]
listen = "127.0.0.1:7443"
cert_file = "pki/relay.pem"
key_file = "pki/relay.key"
agent_ca_file = "pki/ca.pem"
[enrollment]
issuer_cert_file = "pki/ca.pem"
issuer_key_file = "pki/ca.key"
[store]
path = "relay.db"
key_file = "store.key"
TOML
token=$("$bin/pwrelay" clients add demo-pam --config "$demo/relay.toml" 2>/dev/null)

step "starting the relay (API 127.0.0.1:8443, agent link 127.0.0.1:7443)"
"$bin/pwrelay" serve --config "$demo/relay.toml" > "$demo/relay.log" 2>&1 & pids+=($!)
for _ in $(seq 1 100); do
  curl -sf --cacert "$demo/pki/ca.pem" https://127.0.0.1:8443/healthz >/dev/null 2>&1 && break
  sleep 0.2
done

step "enrolling the agent: a one-time token on the relay, the key made on the agent's side"
enroll_token=$("$bin/pwrelay" agents enroll-token --name demo-agent --domain pwrelay.test --ttl 10m --config "$demo/relay.toml" 2>/dev/null)
PWRELAY_ENROLL_TOKEN=$enroll_token "$bin/pwrelay-agent" enroll --relay https://127.0.0.1:7443 --server-name localhost --out "$demo/agent"
cat > "$demo/agent/agent.toml" <<TOML
[relay]
url = "https://127.0.0.1:7443"
server_name = "localhost"
ca_file = "ca.pem"
cert_file = "agent.pem"
key_file = "agent.key"
[health]
listen = "127.0.0.1:9444"
[state]
dir = "state"
[[domains]]
name = "pwrelay.test"
urls = ["ldaps://127.0.0.1:636"]
ca_file = "$LDAPTLS_CACERT"
bind_dn = "$PWRELAY_TEST_ADMIN_DN"
bind_password_file = "bind.secret"
TOML

step "starting the agent"
"$bin/pwrelay-agent" run --config "$demo/agent/agent.toml" > "$demo/agent.log" 2>&1 & pids+=($!)
for _ in $(seq 1 100); do
  curl -sf http://127.0.0.1:9444/readyz >/dev/null 2>&1 && break
  sleep 0.2
done
curl -sf http://127.0.0.1:9444/readyz || { echo "agent not ready; see .demo/agent.log and .demo/relay.log" >&2; tail -5 "$demo/agent.log" >&2; exit 1; }
echo

step "requesting a rotation through the API"
new_password="Rotated!$(date +%s)-Zq"
api=(curl -sS --cacert "$demo/pki/ca.pem" -H "Authorization: Bearer $token")
reply=$("${api[@]}" -H 'Content-Type: application/json' -X POST https://127.0.0.1:8443/v1/rotations \
  -d "{\"domain\":\"pwrelay.test\",\"target\":{\"upn\":\"demo.user@pwrelay.test\"},\"password\":\"$new_password\"}")
echo "POST /v1/rotations → $reply"
job_id=$(printf '%s' "$reply" | sed -n 's/.*"job_id":"\([^"]*\)".*/\1/p')
[ -n "$job_id" ] || { echo "no job id in the reply" >&2; exit 1; }

step "waiting for job $job_id"
job=$("${api[@]}" "https://127.0.0.1:8443/v1/jobs/$job_id?wait=30")
echo "GET /v1/jobs/$job_id → $job"
printf '%s' "$job" | grep -q '"state":"succeeded"' || { echo "the job did not succeed" >&2; exit 1; }

step "proving it with LDAP binds as demo.user"
if ldapsearch -x -H ldaps://127.0.0.1 -D "$user_dn" -w "$new_password" -b "$user_dn" -s base -LLL dn >/dev/null 2>&1; then
  echo "new password: bind succeeded"
else
  echo "new password: bind FAILED" >&2; exit 1
fi
if ldapsearch -x -H ldaps://127.0.0.1 -D "$user_dn" -w "$old_password" -b "$user_dn" -s base -LLL dn >/dev/null 2>&1; then
  echo "old password: bind still succeeds (unexpected)" >&2; exit 1
else
  echo "old password: bind refused (invalid credentials)"
fi
step "demo complete: the password was set in AD by the agent, verified by a bind"
