#!/usr/bin/env bash
# The install test: pwrelay as an administrator installs it, on this host.
#
#   deploy/dev/install-test.sh
#
# 1. One statically linked release build of both binaries; the Debian packages pwrelay and
#    pwrelay-agent from it (cargo-deb, installed with cargo when missing); their contents checked.
# 2. dpkg -i both; the users, directories and modes the maintainer scripts make are checked, and
#    the installed units with systemd-analyze verify and systemd-analyze security (at most 2.0).
# 3. The set-up of the README's "Running it", as root: PKI, store key, configuration files with the
#    owners and modes given there, an API client added as the service user.
# 4. Both services run the way their installed units run them (systemd is not PID 1 here): the
#    unit's ExecStart, as its User=/Group=, in its WorkingDirectory= with its UMask=, the
#    StateDirectory= made as systemd makes it, no capabilities, no new privileges, systemd's
#    environment. Under strace, so that every system call they made is checked against the units'
#    SystemCallFilter=.
# 5. A rotation through the relay's API against the throwaway Samba AD DC, proved by LDAP binds
#    (new password binds, old one refused); the files the services wrote are checked for owner,
#    mode and the absence of the password.
# 6. The relay's container image (deploy/container/build.sh, FROM scratch, same binary): its
#    configuration and file system checked, its root file system mounted (buildah mount) and the
#    image's own entrypoint and command run in it with chroot as the image's user, with the
#    standard devices and the hosts file an OCI runtime adds (`podman run` is not available in
#    this sandbox), /healthz, then a rotation submitted with the image's own `pwrelay rotate` and
#    carried out by the installed agent.
# 7. Everything is undone: services stopped, packages purged, users, directories, image and test
#    account removed, the DC stopped when this script started it.
#
# Needs root, and a host without pwrelay: it refuses to run when either package is installed or
# /etc/pwrelay, /var/lib/pwrelay, /var/lib/pwrelay-agent or the users pwrelay / pwrelay-agent
# exist. Uses 127.0.0.1 ports 8443, 7443 and 9444 (as the demo). Under a minute after the build;
# the release build takes about 8 minutes on 2 cores (15 CPU minutes), installing cargo-deb the
# first time about 2 more.
# DC_DIR and TEMPLATE_DIR pass through to deploy/dev/samba-dc.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
target=x86_64-unknown-linux-gnu
release=$root/target/$target/release
image=localhost/pwrelay:install-test
if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold='' plain=''; fi
step() { printf '%s--> %s%s\n' "$bold" "$*" "$plain"; }
fail() { echo "install test FAILED: $*" >&2; exit 1; }
check() { local what=$1; shift; "$@" || fail "$what"; echo "ok: $what"; }

[ "$(id -u)" = 0 ] || fail "needs root (dpkg -i, service users, the DC's fixed ports)"
for p in pwrelay pwrelay-agent; do
  if dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'installed'; then
    fail "the package $p is installed on this host; this test installs and purges it (remove it first)"
  fi
  getent passwd "$p" >/dev/null && fail "the user $p exists on this host; this test creates and removes it"
done
for d in /etc/pwrelay /var/lib/pwrelay /var/lib/pwrelay-agent; do
  [ -e "$d" ] && fail "$d exists on this host; this test creates and removes it"
done
for c in cargo setpriv runuser systemd-analyze buildah strace ldapsearch ldapadd curl readelf; do
  command -v "$c" >/dev/null || fail "$c is missing; run deploy/dev/install-deps.sh"
done

work=$(mktemp -d /tmp/pwrelay-install-test.XXXXXX)
chmod 0755 "$work"
pids=()
dc_started=0
ctr=''
# Stops a service started below: SIGTERM to the service itself (a traced service is the child of
# its strace; strace passes the exit status on), then waits for its exit status.
stop_service() {
  local pid=$1 child
  child=$(pgrep -P "$pid" || true)
  kill -TERM "${child:-$pid}" 2>/dev/null || true
  wait "$pid"
}
cleanup() {
  local rc=$?
  set +e
  for pid in "${pids[@]}"; do stop_service "$pid" 2>/dev/null; done
  if [ -n "$ctr" ]; then buildah umount "$ctr" >/dev/null 2>&1; buildah rm "$ctr" >/dev/null 2>&1; fi
  buildah rmi "$image" >/dev/null 2>&1
  if [ -n "${user_dn:-}" ]; then
    ldapdelete -x -H ldaps://127.0.0.1 -D "$PWRELAY_TEST_ADMIN_DN" -w "$PWRELAY_TEST_ADMIN_PASS" "$user_dn" >/dev/null 2>&1
  fi
  dpkg --purge pwrelay pwrelay-agent >/dev/null 2>&1
  rm -rf /etc/pwrelay /var/lib/pwrelay /var/lib/pwrelay-agent
  for u in pwrelay pwrelay-agent; do
    getent passwd "$u" >/dev/null && userdel "$u"
    getent group "$u" >/dev/null && groupdel "$u"
  done
  [ "$dc_started" = 1 ] && deploy/dev/samba-dc.sh stop >/dev/null
  if [ "$rc" != 0 ]; then
    for log in "$work"/*.log; do [ -f "$log" ] && { echo "--- last lines of $log"; tail -15 "$log"; }; done >&2
  fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT

step "release build of pwrelay and pwrelay-agent, statically linked ($target)"
# getrandom's Linux backend calls getrandom(2) directly: a static binary cannot find glibc's
# wrapper through dlsym, and would need /dev/urandom instead.
RUSTFLAGS='-C target-feature=+crt-static --cfg getrandom_backend="linux_getrandom"' cargo build --release --quiet --target "$target" \
  -p pwrelay-relay -p pwrelay-agent --bins
for b in pwrelay pwrelay-agent; do
  readelf -l "$release/$b" | grep -q INTERP && fail "$release/$b is dynamically linked"
done
echo "ok: both binaries are static"

step "Debian packages (cargo-deb)"
if ! command -v cargo-deb >/dev/null; then
  echo "installing cargo-deb with cargo"
  cargo install --quiet --locked cargo-deb --version 3.8.0
fi
cargo deb --quiet -p pwrelay-relay --no-build --target "$target" --output "$work/deb/"
cargo deb --quiet -p pwrelay-agent --no-build --target "$target" --output "$work/deb/"
relay_deb=$(ls "$work"/deb/pwrelay_*.deb)
agent_deb=$(ls "$work"/deb/pwrelay-agent_*.deb)
has_files() {
  local deb=$1; shift
  local listing; listing=$(dpkg-deb -c "$deb" | awk '{print $1, $6}')
  for f in "$@"; do
    grep -qx -- "$f" <<< "$listing" || { echo "$deb lacks $f; it has:" >&2; echo "$listing" >&2; return 1; }
  done
}
check "pwrelay package contents" has_files "$relay_deb" \
  '-rwxr-xr-x ./usr/bin/pwrelay' '-rw-r--r-- ./usr/lib/systemd/system/pwrelay.service' \
  '-rw-r--r-- ./usr/share/pwrelay/relay.full.toml' '-rw-r--r-- ./usr/share/doc/pwrelay/README.md'
check "pwrelay-agent package contents" has_files "$agent_deb" \
  '-rwxr-xr-x ./usr/bin/pwrelay-agent' '-rw-r--r-- ./usr/lib/systemd/system/pwrelay-agent.service' \
  '-rw-r--r-- ./usr/share/pwrelay-agent/agent.full.toml' '-rw-r--r-- ./usr/share/pwrelay-agent/Grant-PwRelayRights.ps1'
check "each package carries only its own unit" \
  bash -c "! dpkg-deb -c '$relay_deb' | grep -q pwrelay-agent.service && ! dpkg-deb -c '$agent_deb' | grep -q 'system/pwrelay.service'"

step "dpkg -i $(basename "$relay_deb") $(basename "$agent_deb")"
dpkg -i "$relay_deb" "$agent_deb" > "$work/dpkg.log" 2>&1 || fail "dpkg -i (see $work/dpkg.log)"
grep -q 'pwrelay pki init' "$work/dpkg.log" || fail "the relay's postinst printed no next steps"
grep -q 'pwrelay-agent check-config' "$work/dpkg.log" || fail "the agent's postinst printed no next steps"
echo "ok: installed; both postinst scripts printed the next steps"
owner_mode() { [ "$(stat -c '%U:%G %a' "$1")" = "$2" ] || { echo "$1 is $(stat -c '%U:%G %a' "$1"), expected $2" >&2; return 1; }; }
for u in pwrelay pwrelay-agent; do
  shell=$(getent passwd "$u" | cut -d: -f7)
  uid=$(id -u "$u")
  check "system user $u (uid $uid, shell $shell)" test "$uid" -lt 1000 -a "$shell" = /usr/sbin/nologin
  check "/var/lib/$u is $u:$u 700" owner_mode "/var/lib/$u" "$u:$u 700"
done
check "/etc/pwrelay is root:root 755" owner_mode /etc/pwrelay "root:root 755"
units=(/usr/lib/systemd/system/pwrelay.service /usr/lib/systemd/system/pwrelay-agent.service)
systemd-analyze verify "${units[@]}" > "$work/verify.log" 2>&1 || { cat "$work/verify.log" >&2; fail "systemd-analyze verify"; }
grep -i 'pwrelay' "$work/verify.log" && fail "systemd-analyze verify warned about the units"
echo "ok: systemd-analyze verify ${units[*]}"
if ! systemd-analyze security --help 2>/dev/null | grep -q -- '--offline'; then
  echo "note: this systemd-analyze cannot rate unit files offline (systemd < 250); security rating skipped"
  units_to_rate=()
else
  units_to_rate=("${units[@]}")
fi
for u in "${units_to_rate[@]}"; do
  exposure=$(systemd-analyze security --offline=yes "$u" 2>&1 | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
  systemd-analyze security --offline=yes --threshold=20 "$u" >/dev/null 2>&1 \
    || fail "systemd-analyze security rates $(basename "$u") at ${exposure:-?}, above 2.0"
  echo "ok: systemd-analyze security rates $(basename "$u") at $exposure (at most 2.0)"
done

step "the throwaway Samba AD DC and a test account"
if ! deploy/dev/samba-dc.sh status; then deploy/dev/samba-dc.sh start; dc_started=1; fi
eval "$(deploy/dev/samba-dc.sh env)"
export LDAPTLS_CACERT=$PWRELAY_TEST_DC_DIR/tls/ca.pem
user_dn="CN=install.test,CN=Users,$PWRELAY_TEST_BASE_DN"
upn=install.test@$PWRELAY_TEST_REALM
old_password='Initial!Passw0rd-1'
ldapdelete -x -H ldaps://127.0.0.1 -D "$PWRELAY_TEST_ADMIN_DN" -w "$PWRELAY_TEST_ADMIN_PASS" "$user_dn" >/dev/null 2>&1 || true
ldapadd -x -H ldaps://127.0.0.1 -D "$PWRELAY_TEST_ADMIN_DN" -w "$PWRELAY_TEST_ADMIN_PASS" >/dev/null <<LDIF
dn: $user_dn
objectClass: user
sAMAccountName: install.test
userPrincipalName: $upn
unicodePwd:: $(printf '"%s"' "$old_password" | iconv -f UTF-8 -t UTF-16LE | base64 -w0)
userAccountControl: 512
LDIF
binds() { ldapsearch -x -H ldaps://127.0.0.1 -D "$user_dn" -w "$1" -b "$user_dn" -s base -LLL dn >/dev/null 2>&1; }
check "the test account binds with its first password" binds "$old_password"

step "relay set-up as in the README (PKI, store key, relay.toml, an API client)"
pwrelay pki init --dir /etc/pwrelay/pki --relay-name localhost --relay-name 127.0.0.1 >/dev/null
pwrelay store-key generate --out /etc/pwrelay/store.key >/dev/null
chown pwrelay:pwrelay /etc/pwrelay/pki/relay.key /etc/pwrelay/store.key
cat > "$work/relay.toml" <<TOML
domains = ["$PWRELAY_TEST_REALM"]
[api]
listen = "127.0.0.1:8443"
cert_file = "pki/relay.pem"
key_file = "pki/relay.key"
[link]
listen = "127.0.0.1:7443"
cert_file = "pki/relay.pem"
key_file = "pki/relay.key"
agent_ca_file = "pki/ca.pem"
[store]
path = "/var/lib/pwrelay/relay.db"
key_file = "/etc/pwrelay/store.key"
TOML
install -o root -g pwrelay -m 0640 "$work/relay.toml" /etc/pwrelay/relay.toml
check "the CA key stays root's" owner_mode /etc/pwrelay/pki/ca.key "root:root 600"
check "relay.key is pwrelay's" owner_mode /etc/pwrelay/pki/relay.key "pwrelay:pwrelay 600"
check "the relay user cannot read the CA key" bash -c '! runuser -u pwrelay -- cat /etc/pwrelay/pki/ca.key >/dev/null 2>&1'
token=$(runuser -u pwrelay -- pwrelay clients add install-test --config /etc/pwrelay/relay.toml 2>/dev/null)
[ -n "$token" ] || fail "pwrelay clients add printed no token"
check "relay.db, made by clients add as pwrelay, is pwrelay's 600" owner_mode /var/lib/pwrelay/relay.db "pwrelay:pwrelay 600"

step "agent set-up as in the README's air-gapped path (pki issue-agent, service account password, agent.toml)"
pwrelay pki issue-agent --ca-dir /etc/pwrelay/pki --name install-agent --domain "$PWRELAY_TEST_REALM" --out "$work/agent" >/dev/null
printf '%s' "$PWRELAY_TEST_ADMIN_PASS" > "$work/svc.secret"
install -m 0644 "$work/agent/ca.pem" "$work/agent/agent.pem" /etc/pwrelay/
install -o pwrelay-agent -g pwrelay-agent -m 0600 "$work/agent/agent.key" /etc/pwrelay/
install -o pwrelay-agent -g pwrelay-agent -m 0600 "$work/svc.secret" /etc/pwrelay/bind.secret
install -m 0644 "$LDAPTLS_CACERT" /etc/pwrelay/ad-ca.pem
cat > "$work/agent.toml" <<TOML
[relay]
url = "https://127.0.0.1:7443"
server_name = "localhost"
ca_file = "ca.pem"
cert_file = "agent.pem"
key_file = "agent.key"
[health]
listen = "127.0.0.1:9444"
[state]
dir = "/var/lib/pwrelay-agent"
[[domains]]
name = "$PWRELAY_TEST_REALM"
urls = ["ldaps://127.0.0.1:636"]
ca_file = "ad-ca.pem"
bind_dn = "$PWRELAY_TEST_ADMIN_DN"
bind_password_file = "bind.secret"
TOML
install -o root -g pwrelay-agent -m 0640 "$work/agent.toml" /etc/pwrelay/agent.toml
check "the agent user cannot read the relay's store key" bash -c '! runuser -u pwrelay-agent -- cat /etc/pwrelay/store.key >/dev/null 2>&1'
check "the relay user cannot read the agent's key" bash -c '! runuser -u pwrelay -- cat /etc/pwrelay/agent.key >/dev/null 2>&1'
runuser -u pwrelay-agent -- pwrelay-agent check-config > "$work/check-config.log" 2>&1 \
  || fail "pwrelay-agent check-config as pwrelay-agent (see $work/check-config.log)"
echo "ok: pwrelay-agent check-config as pwrelay-agent"

# The value of KEY in the [Service] section of a unit file (the last one when repeated).
unit_value() {
  awk -v key="$2" '/^\[/ { service = ($0 == "[Service]") } service && index($0, key "=") == 1 { v = substr($0, length(key) + 2) } END { print v }' "$1"
}
# Runs a unit's ExecStart= as systemd would (see the header), in the background, traced.
run_unit() {
  local unit=$1 name; name=$(basename "$unit" .service)
  local exec user group wd umask state mode home
  exec=$(unit_value "$unit" ExecStart) user=$(unit_value "$unit" User) group=$(unit_value "$unit" Group)
  wd=$(unit_value "$unit" WorkingDirectory) umask=$(unit_value "$unit" UMask)
  state=$(unit_value "$unit" StateDirectory) mode=$(unit_value "$unit" StateDirectoryMode)
  [ -n "$exec" ] && [ -n "$user" ] && [ -n "$state" ] || fail "$unit lacks ExecStart=, User= or StateDirectory="
  grep -qx 'DynamicUser=yes' "$unit" && fail "$unit uses DynamicUser=yes"
  home=$(getent passwd "$user" | cut -d: -f6)
  # StateDirectory=: made if missing, owned by User=/Group= and given StateDirectoryMode= on every start.
  install -d "/var/lib/$state"
  chown -R "$user:${group:-$user}" "/var/lib/$state"
  chmod "${mode:-0755}" "/var/lib/$state"
  local envs=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin "USER=$user" "LOGNAME=$user"
    "HOME=$home" SHELL=/usr/sbin/nologin "STATE_DIRECTORY=/var/lib/$state" LANG=C.UTF-8)
  while IFS= read -r e; do envs+=("$e"); done < <(awk '/^\[/ { s = ($0 == "[Service]") } s && /^Environment=/ { print substr($0, 13) }' "$unit")
  # The trace is written by the service's user.
  install -m 0600 -o "$user" /dev/null "$work/$name.strace"
  # shellcheck disable=SC2086 # ExecStart= is split on spaces, as systemd does for these units
  (cd "${wd:-/}" && umask "${umask:-0022}" && exec env -i "${envs[@]}" \
    setpriv --reuid="$user" --regid="${group:-$user}" --init-groups --no-new-privs \
      --inh-caps=-all --bounding-set=-all -- \
      strace -f -qq -o "$work/$name.strace" $exec) > "$work/$name.log" 2>&1 &
  pids+=($!)
  echo "started $name: $exec (as $user:${group:-$user}, in ${wd:-/}, umask ${umask:-0022})"
}
wait_for() {
  local what=$1; shift
  for _ in $(seq 1 150); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  fail "$what"
}

step "both services, run as their units run them"
run_unit /usr/lib/systemd/system/pwrelay.service
run_unit /usr/lib/systemd/system/pwrelay-agent.service
api=(curl -sS --cacert /etc/pwrelay/pki/ca.pem -H "Authorization: Bearer $token")
wait_for "the relay's /healthz did not answer (see $work/pwrelay.log)" curl -sf --cacert /etc/pwrelay/pki/ca.pem https://127.0.0.1:8443/healthz
wait_for "the agent's /readyz did not answer ready (see $work/pwrelay-agent.log)" curl -sf http://127.0.0.1:9444/readyz
echo "ok: relay /healthz and agent /readyz"

# A rotation through the relay's API: the job must succeed and the account bind with the new password only.
rotate_with_curl() {
  local password=$1 reply job_id job
  reply=$("${api[@]}" -H 'Content-Type: application/json' https://127.0.0.1:8443/v1/rotations \
    -d "{\"domain\":\"$PWRELAY_TEST_REALM\",\"target\":{\"upn\":\"$upn\"},\"password\":\"$password\"}")
  job_id=$(printf '%s' "$reply" | sed -n 's/.*"job_id":"\([^"]*\)".*/\1/p')
  [ -n "$job_id" ] || fail "POST /v1/rotations answered $reply"
  job=$("${api[@]}" "https://127.0.0.1:8443/v1/jobs/$job_id?wait=30")
  printf '%s' "$job" | grep -q '"state":"succeeded"' || fail "job $job_id did not succeed: $job"
  echo "ok: job $job_id succeeded"
}

step "a rotation through the installed relay and agent"
# Fixed passwords, not time-based ones: under the banned-password check's normalization digits
# read as letters, and a time such as 1796173574 spells "test", a part of the account's name.
new_password='Pkg!Rotated-Kwq9-Hjx'
rotate_with_curl "$new_password"
check "the new password binds" binds "$new_password"
check "the old password is refused" bash -c "! ldapsearch -x -H ldaps://127.0.0.1 -D '$user_dn' -w '$old_password' -b '$user_dn' -s base dn >/dev/null 2>&1"
check "the agent's journal is pwrelay-agent's 600" owner_mode /var/lib/pwrelay-agent/journal.jsonl "pwrelay-agent:pwrelay-agent 600"
check "the agent's audit log is pwrelay-agent's 600" owner_mode /var/lib/pwrelay-agent/audit.jsonl "pwrelay-agent:pwrelay-agent 600"
check "the audit log has the job" grep -q "$upn" /var/lib/pwrelay-agent/audit.jsonl
check "no file the services wrote holds the password" \
  bash -c "! grep -rqaF -- '$new_password' /var/lib/pwrelay /var/lib/pwrelay-agent '$work/pwrelay.log' '$work/pwrelay-agent.log'"

step "the relay stops on SIGTERM; the units' SystemCallFilter= covers every system call made"
stop_service "${pids[0]}" || fail "the relay did not exit 0 on SIGTERM (see $work/pwrelay.log)"
pids=("${pids[@]:1}")
# The syscalls allowed by "SystemCallFilter=@system-service" minus "~@privileged @resources".
expand_set() {
  systemd-analyze syscall-filter "$1" | awk 'NR > 1 && $1 !~ /^#/ && NF { print $1 }' | while read -r s; do
    case $s in @*) expand_set "$s" ;; *) echo "$s" ;; esac
  done
}
filter_allows() {
  local unit=$1 allowed denied
  [ "$(grep -c '^SystemCallFilter=' "$unit")" = 2 ] && grep -qx 'SystemCallFilter=@system-service' "$unit" \
    && grep -qx 'SystemCallFilter=~@privileged @resources' "$unit" || { echo "$unit: unexpected SystemCallFilter= lines" >&2; return 1; }
  allowed=$(expand_set @system-service | sort -u)
  denied=$( { expand_set @privileged; expand_set @resources; } | sort -u)
  comm -23 <(echo "$allowed") <(echo "$denied") > "$work/allowed.txt"
  # The traced process's own syscalls before its execve (strace's) are not the service's.
  sed -E 's/^[0-9]+ +//' "$2" | grep -E '^[a-z_0-9]+\(' | sed 's/(.*//' | sort -u > "$work/used.txt"
  local outside; outside=$(comm -23 "$work/used.txt" "$work/allowed.txt")
  [ -z "$outside" ] || { echo "$unit: system calls outside its filter: $outside" >&2; return 1; }
}
check "pwrelay.service: $(wc -l < "$work/pwrelay.strace") traced calls, all within its filter" \
  filter_allows /usr/lib/systemd/system/pwrelay.service "$work/pwrelay.strace"

step "the relay's container image (FROM scratch, the same static binary)"
deploy/container/build.sh "$release/pwrelay" "$image"
image_field() { buildah inspect --type image --format "$1" "$image"; }
check "the image runs as 65532:65532" test "$(image_field '{{.OCIv1.Config.User}}')" = 65532:65532
ctr=$(buildah from --pull-never "$image")
mnt=$(buildah mount "$ctr")
check "the image holds only the relay, the CA bundle and its skeleton" \
  bash -c "[ \"\$(cd '$mnt' && find . -type f | sort | tr '\n' ' ')\" = './etc/group ./etc/nsswitch.conf ./etc/passwd ./etc/ssl/certs/ca-certificates.crt ./pwrelay ' ]"
check "/var/lib/pwrelay in the image is 65532's 700" bash -c "[ \"\$(stat -c '%u:%g %a' '$mnt/var/lib/pwrelay')\" = '65532:65532 700' ]"
# The configuration, as a runtime would mount it at /etc/pwrelay (readable by the image's user),
# and what a runtime adds: the hosts file and the standard devices.
install -d -m 0750 -o 0 -g 65532 "$mnt/etc/pwrelay/pki"
install -m 0644 /etc/pwrelay/pki/relay.pem /etc/pwrelay/pki/ca.pem "$mnt/etc/pwrelay/pki/"
install -m 0600 -o 65532 -g 65532 /etc/pwrelay/pki/relay.key "$mnt/etc/pwrelay/pki/"
install -m 0600 -o 65532 -g 65532 /etc/pwrelay/store.key "$mnt/etc/pwrelay/"
install -m 0640 -o 0 -g 65532 /etc/pwrelay/relay.toml "$mnt/etc/pwrelay/relay.toml"
printf '127.0.0.1 localhost\n' > "$mnt/etc/hosts"
# The devices every OCI runtime creates in a container's /dev (the static binary reads
# /dev/urandom for job ids: its getrandom crate cannot find glibc's getrandom() without dlsym).
install -d -m 0755 "$mnt/dev"
while read -r dev major minor; do mknod -m 0666 "$mnt/dev/$dev" c "$major" "$minor"; done <<'DEVICES'
null 1 3
zero 1 5
full 1 7
random 1 8
urandom 1 9
tty 5 0
DEVICES
# The image's entrypoint and command, its user and working directory, its environment only.
entrypoint=$(image_field '{{range .OCIv1.Config.Entrypoint}}{{.}} {{end}}')
cmd=$(image_field '{{range .OCIv1.Config.Cmd}}{{.}} {{end}}')
workdir=$(image_field '{{.OCIv1.Config.WorkingDir}}')
mapfile -t image_env < <(image_field '{{range .OCIv1.Config.Env}}{{println .}}{{end}}' | sed '/^$/d')
echo "image: user $(image_field '{{.OCIv1.Config.User}}'), entrypoint $entrypoint, command $cmd, workdir $workdir, env ${image_env[*]:-none}"
[ "$entrypoint" = '/pwrelay ' ] || fail "the image's entrypoint is $entrypoint"
chroot=$(command -v chroot)
in_image() { env -i "${image_env[@]}" "$chroot" --userspec=65532:65532 "$mnt" "$@"; }
# shellcheck disable=SC2086 # the image's entrypoint, word-split as a runtime does
ctr_token=$(in_image $entrypoint clients add container-test --config /etc/pwrelay/relay.toml 2>/dev/null)
[ -n "$ctr_token" ] || fail "clients add inside the image printed no token"
echo "ok: clients add with the image's own binary"
# shellcheck disable=SC2086 # the image's entrypoint and command, word-split as a runtime does
(cd "$mnt/${workdir#/}" && exec env -i "${image_env[@]}" "$chroot" --userspec=65532:65532 "$mnt" $entrypoint $cmd) \
  > "$work/container-relay.log" 2>&1 &
pids+=($!)
echo "started the image's $entrypoint$cmd in a chroot of its root file system, as 65532:65532"
wait_for "the container's /healthz did not answer (see $work/container-relay.log)" \
  curl -sf --cacert /etc/pwrelay/pki/ca.pem https://127.0.0.1:8443/healthz
echo "ok: /healthz of the relay in the image"
check "the container relay's store is in its volume, 65532's 600" \
  bash -c "[ \"\$(stat -c '%u:%g %a' '$mnt/var/lib/pwrelay/relay.db')\" = '65532:65532 600' ]"

step "a rotation submitted with the image's own pwrelay rotate, carried out by the installed agent"
ctr_password='Ctr!Rotated-Vzq9-Bmk'
printf '%s' "$ctr_token" > "$mnt/tmp/token"
printf '%s' "$ctr_password" > "$mnt/tmp/new-password"
chown 65532:65532 "$mnt/tmp/token" "$mnt/tmp/new-password" && chmod 600 "$mnt/tmp/token" "$mnt/tmp/new-password"
# The agent reconnects to the new relay by itself (same link certificate); the job waits for it.
# By name (localhost, from the hosts file): the static binary resolves names in the image.
# shellcheck disable=SC2086
in_image $entrypoint rotate --url https://localhost:8443 \
  --ca-file /etc/pwrelay/pki/ca.pem --token-file /tmp/token --domain "$PWRELAY_TEST_REALM" --upn "$upn" \
  --password-file /tmp/new-password --wait 60 > "$work/container-rotate.log" 2>&1 \
  || { cat "$work/container-rotate.log" >&2; fail "pwrelay rotate against the container relay"; }
cat "$work/container-rotate.log"
check "the container's new password binds" binds "$ctr_password"
check "the previous password is refused" bash -c "! ldapsearch -x -H ldaps://127.0.0.1 -D '$user_dn' -w '$new_password' -b '$user_dn' -s base dn >/dev/null 2>&1"

step "the agent stops on SIGTERM; its unit's SystemCallFilter= covers every system call made"
stop_service "${pids[1]}" || fail "the container relay did not exit 0 on SIGTERM (see $work/container-relay.log)"
stop_service "${pids[0]}" || fail "the agent did not exit 0 on SIGTERM (see $work/pwrelay-agent.log)"
pids=()
check "pwrelay-agent.service: $(wc -l < "$work/pwrelay-agent.strace") traced calls, all within its filter" \
  filter_allows /usr/lib/systemd/system/pwrelay-agent.service "$work/pwrelay-agent.strace"

step "uninstall"
buildah umount "$ctr" >/dev/null && buildah rm "$ctr" >/dev/null && ctr=''
buildah rmi "$image" >/dev/null
dpkg --purge pwrelay pwrelay-agent > "$work/purge.log" 2>&1 || fail "dpkg --purge (see $work/purge.log)"
check "purged: no pwrelay binary is left" bash -c '! command -v pwrelay >/dev/null && ! command -v pwrelay-agent >/dev/null'
echo "install test passed: packages, units as their users, a rotation through each; the image, a rotation through it"
