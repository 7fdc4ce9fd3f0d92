#!/usr/bin/env bash
# Throwaway Samba AD DC on 127.0.0.1 for the demo and the integration tests.
#
#   deploy/dev/samba-dc.sh start    provision (or copy the cached template) and start; waits for LDAPS
#   deploy/dev/samba-dc.sh stop     stop it and delete its directory
#   deploy/dev/samba-dc.sh status   exit 0 when LDAPS answers
#   deploy/dev/samba-dc.sh env      print the connection settings as shell variables
#
# For fault tests (relay/tests/fault_suite), on a DC started with start; all keep the directory:
#   deploy/dev/samba-dc.sh halt     stop the DC's processes (a paused DC is resumed first)
#   deploy/dev/samba-dc.sh restart  halt if running, then start the processes again; waits for LDAPS
#   deploy/dev/samba-dc.sh pause    SIGSTOP every process of the DC: connections stay open, nothing answers
#   deploy/dev/samba-dc.sh resume   SIGCONT them again
#
# Needs root: Samba's LDAP ports are fixed (389, 636, 88 on 127.0.0.1). Install the packages first
# (deploy/dev/install-deps.sh). Never use this DC for anything but tests: the domain is
# PWRELAY.TEST, the administrator password is public, and writes are not synced to disk.
#
# Kerberos (the agent's bind = "kerberos"): the DC accepts SASL binds inside TLS, and start also
# writes $DC_DIR/krb5.conf (for KRB5_CONFIG), maps the DC's host name dc1.<realm> to 127.0.0.1 in
# /etc/hosts and registers the DC's ldap/ service principal name (see kerberos_clients). A running
# DC started by an older version of this script, without those settings, is restarted by start.
#
# Environment: DC_DIR (default /tmp/pwrelay-dc), REALM (PWRELAY.TEST), NETBIOS_DOMAIN (PWRELAY),
# ADMIN_PASS, TEMPLATE_DIR (cache of a provisioned directory; default /tmp/pwrelay-dc-template),
# READY_TIMEOUT (seconds, default 60).
set -euo pipefail

DC_DIR=${DC_DIR:-/tmp/pwrelay-dc}
REALM=${REALM:-PWRELAY.TEST}
NETBIOS_DOMAIN=${NETBIOS_DOMAIN:-PWRELAY}
ADMIN_PASS=${ADMIN_PASS:-Adm1n!Passw0rd}
TEMPLATE_DIR=${TEMPLATE_DIR:-/tmp/pwrelay-dc-template}
READY_TIMEOUT=${READY_TIMEOUT:-60}
realm_lc=$(echo "$REALM" | tr 'A-Z' 'a-z')
base_dn=$(echo "$realm_lc" | sed 's/^/DC=/; s/\./,DC=/g')

ldaps_ready() {
  LDAPTLS_CACERT="$DC_DIR/tls/ca.pem" ldapsearch -x -H ldaps://127.0.0.1 -s base -b '' -LLL dnsHostName >/dev/null 2>&1
}

provision() {
  mkdir -p "$DC_DIR/run" "$DC_DIR/tls"
  : > "$DC_DIR/empty.conf"   # keeps /etc/samba/smb.conf out of the generated configuration
  # A CA and a separate server certificate (rustls refuses a CA certificate used as a server's).
  local fqdn="dc1.$realm_lc"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -keyout "$DC_DIR/tls/ca-key.pem" -out "$DC_DIR/tls/ca.pem" -subj "/CN=pwrelay throwaway DC CA" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$DC_DIR/tls/key.pem" -out "$DC_DIR/tls/req.csr" -subj "/CN=$fqdn" 2>/dev/null
  printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:%s,DNS:localhost,IP:127.0.0.1,IP:::1\n' "$fqdn" > "$DC_DIR/tls/leaf.ext"
  openssl x509 -req -in "$DC_DIR/tls/req.csr" -CA "$DC_DIR/tls/ca.pem" -CAkey "$DC_DIR/tls/ca-key.pem" \
    -CAcreateserial -days 3650 -extfile "$DC_DIR/tls/leaf.ext" -out "$DC_DIR/tls/cert.pem" 2>/dev/null
  chmod 600 "$DC_DIR/tls/key.pem"
  samba-tool domain provision -s "$DC_DIR/empty.conf" --targetdir="$DC_DIR" \
    --server-role=dc --use-rfc2307 --dns-backend=NONE \
    --realm="$REALM" --domain="$NETBIOS_DOMAIN" --adminpass="$ADMIN_PASS" --host-name=dc1 \
    --option="netbios name = DC1" \
    --option="interfaces = lo" --option="bind interfaces only = yes" \
    --option="server services = ldap kdc" \
    --option="log file = $DC_DIR/log.%m" \
    --option="pid directory = $DC_DIR/run" \
    --option="ncalrpc dir = $DC_DIR/run/ncalrpc" \
    --option="ntp signd socket directory = $DC_DIR/run/ntp_signd" \
    --option="ldb:nosync = true" \
    --option="tls keyfile = $DC_DIR/tls/key.pem" \
    --option="tls certfile = $DC_DIR/tls/cert.pem" \
    --option="tls cafile = $DC_DIR/tls/ca.pem" \
    > "$DC_DIR/provision.log" 2>&1 \
    || { echo "provision failed, see $DC_DIR/provision.log" >&2; tail -20 "$DC_DIR/provision.log" >&2; exit 1; }
  # A reset password must stop working at once (Samba otherwise accepts it for 60 minutes more);
  # provision does not carry this option into smb.conf, so it is added here.
  sed -i 's/^\[global\]$/[global]\n\told password allowed period = 0/' "$DC_DIR/etc/smb.conf"
  # Tests and the demo change passwords repeatedly: no minimum age (AD's default is 1 day).
  samba-tool domain passwordsettings set --min-pwd-age=0 -H "$DC_DIR/private/sam.ldb" >/dev/null
}

# What a Kerberos (SASL GSSAPI) client of the DC needs; idempotent, run on every start (also when
# the DC is already running, so a DC started by an older version of this script gets it too).
# Failures only warn: the DC itself works without any of it.
kerberos_clients() {
  local fqdn="dc1.$realm_lc"
  # GSSAPI asks the KDC for a ticket to ldap/<host of the LDAP URL>, so a client must reach the DC
  # by its DNS name, never by 127.0.0.1; there is no DNS server for the test realm, hence a
  # hosts entry (appended once; nothing else in /etc/hosts is touched).
  if ! awk -v h="$fqdn" '$1 == "127.0.0.1" { for (i = 2; i <= NF; i++) if ($i == h) found = 1 } END { exit !found }' /etc/hosts; then
    if [ -w /etc/hosts ]; then
      printf '127.0.0.1 %s   # pwrelay throwaway Samba AD DC (deploy/dev/samba-dc.sh)\n' "$fqdn" >> /etc/hosts
    else
      echo "warning: /etc/hosts does not map $fqdn to 127.0.0.1 (run start as root); Kerberos tests will fail" >&2
    fi
  fi
  # The realm's KDC is the DC on 127.0.0.1:88; names are used as given (no DNS canonicalization).
  {
    printf '%s\n' '[libdefaults]' "	default_realm = $REALM" '	dns_lookup_realm = false' '	dns_lookup_kdc = false' \
      '	dns_canonicalize_hostname = false' '	rdns = false' \
      '[realms]' "	$REALM = {" '		kdc = 127.0.0.1:88' '	}' \
      '[domain_realm]' "	.$realm_lc = $REALM" "	$realm_lc = $REALM" > "$DC_DIR/krb5.conf.tmp" \
      && mv "$DC_DIR/krb5.conf.tmp" "$DC_DIR/krb5.conf"
  } 2>/dev/null || echo "warning: cannot write $DC_DIR/krb5.conf" >&2
  # Samba registers a DC's ldap/ SPNs from samba_spnupdate, which belongs to the dns service this
  # DC does not run; without ldap/<fqdn> the KDC answers "server not found" to a GSSAPI bind.
  # Exit code 20 (the value exists) means it is there already.
  local rc=0
  printf 'dn: CN=DC1,OU=Domain Controllers,%s\nchangetype: modify\nadd: servicePrincipalName\nservicePrincipalName: ldap/%s\n' "$base_dn" "$fqdn" \
    | LDAPTLS_CACERT="$DC_DIR/tls/ca.pem" ldapmodify -x -H ldaps://127.0.0.1 -D "CN=Administrator,CN=Users,$base_dn" \
      -y <(printf '%s' "$ADMIN_PASS") >/dev/null 2>&1 || rc=$?
  if [ "$rc" != 0 ] && [ "$rc" != 20 ]; then echo "warning: registering the SPN ldap/$fqdn failed (ldapmodify exit $rc)" >&2; fi
}

start() {
  if [ -f "$DC_DIR/samba.launch.pid" ] && kill -0 "$(cat "$DC_DIR/samba.launch.pid")" 2>/dev/null; then
    if ldaps_ready; then
      if grep -q '^[[:space:]]*ldap server require strong auth' "$DC_DIR/etc/smb.conf"; then
        kerberos_clients
        echo "Samba AD DC already running (pid $(cat "$DC_DIR/samba.launch.pid"))"; return 0
      fi
      # Started by an older version of this script: Samba reads this option only at start-up (a
      # reload does not change it), so the DC is started afresh, once.
      if [ "$(id -u)" != 0 ]; then
        echo "warning: the running DC lacks 'ldap server require strong auth'; Kerberos binds fail until" \
          "it is restarted as root" >&2
        return 0
      fi
      echo "restarting the Samba AD DC: it was started without the settings Kerberos binds need"
      stop >/dev/null
    fi
  fi
  command -v samba >/dev/null || { echo "samba is not installed; run deploy/dev/install-deps.sh" >&2; exit 1; }
  [ "$(id -u)" = 0 ] || { echo "the throwaway DC needs root (fixed LDAP ports)" >&2; exit 1; }
  local t0=$SECONDS
  rm -rf "$DC_DIR"
  if [ -n "$TEMPLATE_DIR" ] && grep -qs "private dir = $DC_DIR/private" "$TEMPLATE_DIR/etc/smb.conf"; then
    echo "starting Samba AD DC from the cached template $TEMPLATE_DIR"
    cp -a "$TEMPLATE_DIR" "$DC_DIR"
  else
    echo "provisioning Samba AD DC $REALM in $DC_DIR (about 10 s)"
    provision
    if [ -n "$TEMPLATE_DIR" ]; then rm -rf "$TEMPLATE_DIR"; cp -a "$DC_DIR" "$TEMPLATE_DIR"; fi
  fi
  # SASL (Kerberos) binds inside TLS with no SASL security layer, as Windows AD accepts them: a
  # GSSAPI bind over LDAPS or StartTLS asks for no sign/seal (Windows refuses sign/seal over TLS).
  # Samba's default ("yes") allows only simple binds over TLS. Plaintext binds stay refused as
  # before. Added here, not at provision, so that a DC started from an older template has it too.
  grep -q '^[[:space:]]*ldap server require strong auth' "$DC_DIR/etc/smb.conf" \
    || sed -i 's/^\[global\]$/[global]\n\tldap server require strong auth = allow_sasl_over_tls/' "$DC_DIR/etc/smb.conf"
  launch
  kerberos_clients
  echo "Samba AD DC ready in $((SECONDS - t0)) s: ldaps://127.0.0.1:636, realm $REALM, CA $DC_DIR/tls/ca.pem"
}

# Starts samba on the directory in $DC_DIR (its own process group, so that halt, pause and resume
# reach every child) and waits for LDAPS.
launch() {
  setsid samba -s "$DC_DIR/etc/smb.conf" -F --debug-stdout -d 1 >> "$DC_DIR/samba.out" 2>&1 < /dev/null &
  echo $! > "$DC_DIR/samba.launch.pid"
  local deadline=$((SECONDS + READY_TIMEOUT))
  until ldaps_ready; do
    if ! kill -0 "$(cat "$DC_DIR/samba.launch.pid")" 2>/dev/null; then
      echo "samba exited during start-up, see $DC_DIR/samba.out" >&2; tail -20 "$DC_DIR/samba.out" >&2; exit 1
    fi
    [ $SECONDS -lt $deadline ] || { echo "LDAPS not ready after ${READY_TIMEOUT}s" >&2; exit 1; }
    sleep 0.2
  done
}

# The process group of the running DC (its launch pid), or nothing when none runs.
dc_group() {
  local pidf="$DC_DIR/samba.launch.pid"
  [ -f "$pidf" ] || return 0
  local pid; pid=$(cat "$pidf")
  if [ -n "$(ps -eo pgid= | awk -v p="$pid" '$1==p')" ]; then echo "$pid"; fi
}

# Stops the DC's processes and keeps its directory (a paused DC is resumed first, so that it can
# handle SIGTERM).
halt() {
  local pid; pid=$(dc_group)
  [ -n "$pid" ] || return 0
  kill -CONT -- "-$pid" 2>/dev/null || true
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  # samba's children share its process group (setsid in launch)
  if [ -n "$(ps -eo pgid= | awk -v p="$pid" '$1==p')" ]; then kill -KILL -- "-$pid" 2>/dev/null || true; fi
  for _ in $(seq 1 50); do [ -n "$(ps -eo pgid= | awk -v p="$pid" '$1==p')" ] || break; sleep 0.1; done
  echo "Samba AD DC halted (directory kept)"
}

restart() {
  [ -f "$DC_DIR/etc/smb.conf" ] || { echo "no DC in $DC_DIR; use start" >&2; exit 1; }
  [ "$(id -u)" = 0 ] || { echo "the throwaway DC needs root (fixed LDAP ports)" >&2; exit 1; }
  local t0=$SECONDS
  halt >/dev/null
  launch
  echo "Samba AD DC restarted in $((SECONDS - t0)) s"
}

# SIGSTOP / SIGCONT to every process of the DC.
signal_dc() {
  local pid; pid=$(dc_group)
  [ -n "$pid" ] || { echo "no running DC in $DC_DIR" >&2; exit 1; }
  kill "-$1" -- "-$pid"
}

stop() {
  if [ -f "$DC_DIR/samba.launch.pid" ]; then
    halt >/dev/null
    echo "Samba AD DC stopped"
  fi
  rm -rf "$DC_DIR"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) ldaps_ready ;;
  halt) halt ;;
  restart) restart ;;
  pause) signal_dc STOP; echo "Samba AD DC paused" ;;
  resume) signal_dc CONT; echo "Samba AD DC resumed" ;;
  env)
    echo "PWRELAY_TEST_DC_DIR=$DC_DIR"
    echo "PWRELAY_TEST_REALM=$realm_lc"
    echo "PWRELAY_TEST_BASE_DN=$base_dn"
    echo "PWRELAY_TEST_ADMIN_DN=CN=Administrator,CN=Users,$base_dn"
    echo "PWRELAY_TEST_ADMIN_PASS=$ADMIN_PASS"
    echo "PWRELAY_TEST_DC_HOST=dc1.$realm_lc"
    echo "PWRELAY_TEST_KRB5_CONFIG=$DC_DIR/krb5.conf"
    ;;
  *) echo "usage: $0 start|stop|status|env|halt|restart|pause|resume" >&2; exit 64 ;;
esac
