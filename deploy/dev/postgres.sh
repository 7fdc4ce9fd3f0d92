#!/usr/bin/env bash
# Throwaway PostgreSQL cluster on 127.0.0.1 for the store's tests and the demo.
#
#   deploy/dev/postgres.sh start    create the cluster (first time) and start it; waits until it answers
#   deploy/dev/postgres.sh stop     stop it and delete its directory
#   deploy/dev/postgres.sh status   exit 0 when it answers
#   deploy/dev/postgres.sh url      print the URL the tests take (PWRELAY_TEST_POSTGRES_URL)
#   deploy/dev/postgres.sh env      print the test settings as shell variables (for eval)
#
# The cluster has its own directory and port, so it never touches a system cluster (Debian's
# package starts one on 5432). Connections over TCP need TLS-capable clients and a password:
# `start` makes a CA and a server certificate for 127.0.0.1 (PG_DIR/tls/ca.pem) and a random
# password for the user `postgres` (PG_DIR/password, mode 0600). Writes are not synced to disk:
# never keep anything in it. Install the packages first (deploy/dev/install-deps.sh). As root, the
# server runs as the `postgres` user, which owns PG_DIR.
#
# Environment: PG_DIR (default /tmp/pwrelay-pg), PG_PORT (55432), READY_TIMEOUT (seconds, 30).
set -euo pipefail

PG_DIR=${PG_DIR:-/tmp/pwrelay-pg}
PG_PORT=${PG_PORT:-55432}
READY_TIMEOUT=${READY_TIMEOUT:-30}

bin_dir() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$dir" ]; then
    echo "PostgreSQL is not installed: run deploy/dev/install-deps.sh (Debian package postgresql)" >&2
    exit 1
  fi
  echo "$dir"
}

# Runs a command as the cluster's owner: `postgres` when we are root, else ourselves.
as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

url() {
  echo "postgres://postgres@127.0.0.1:$PG_PORT/postgres?sslmode=require"
}

ready() {
  [ -f "$PG_DIR/password" ] || return 1
  PGPASSWORD=$(cat "$PG_DIR/password") PGSSLMODE=require \
    "$(bin_dir)/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -Atqc 'SELECT 1' >/dev/null 2>&1
}

create() {
  local bin
  bin=$(bin_dir)
  mkdir -p "$PG_DIR/tls"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -keyout "$PG_DIR/tls/ca-key.pem" -out "$PG_DIR/tls/ca.pem" -subj "/CN=pwrelay throwaway PostgreSQL CA" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$PG_DIR/tls/key.pem" -out "$PG_DIR/tls/req.csr" -subj "/CN=localhost" 2>/dev/null
  printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n' \
    > "$PG_DIR/tls/leaf.ext"
  openssl x509 -req -in "$PG_DIR/tls/req.csr" -CA "$PG_DIR/tls/ca.pem" -CAkey "$PG_DIR/tls/ca-key.pem" \
    -CAcreateserial -days 3650 -extfile "$PG_DIR/tls/leaf.ext" -out "$PG_DIR/tls/cert.pem" 2>/dev/null
  chmod 600 "$PG_DIR/tls/key.pem" "$PG_DIR/tls/ca-key.pem"
  head -c 24 /dev/urandom | base64 | tr -d '/+=' > "$PG_DIR/password"
  chmod 600 "$PG_DIR/password"
  if [ "$(id -u)" = 0 ]; then chown -R postgres: "$PG_DIR"; fi
  # Local socket connections are trusted (the owner only: the socket lives in PG_DIR); TCP needs
  # the password, over TLS.
  as_owner "$bin/initdb" -D "$PG_DIR/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
    --pwfile="$PG_DIR/password" -E UTF8 --locale=C.UTF-8 >"$PG_DIR/initdb.log"
  printf 'hostnossl all all 0.0.0.0/0 reject\nhostnossl all all ::/0 reject\n' > "$PG_DIR/hba.head"
  cat "$PG_DIR/hba.head" "$PG_DIR/data/pg_hba.conf" > "$PG_DIR/hba.new"
  mv "$PG_DIR/hba.new" "$PG_DIR/data/pg_hba.conf"
  rm -f "$PG_DIR/hba.head"
  if [ "$(id -u)" = 0 ]; then
    chown postgres: "$PG_DIR/data/pg_hba.conf"
    # The tests read the password: under sudo they run as the invoking user.
    if [ -n "${SUDO_USER:-}" ]; then chown "$SUDO_USER" "$PG_DIR/password"; fi
  fi
}

start() {
  if ready; then echo "PostgreSQL already running on 127.0.0.1:$PG_PORT ($PG_DIR)"; return; fi
  local bin
  bin=$(bin_dir)
  [ -d "$PG_DIR/data" ] || create
  as_owner "$bin/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/log" -w -t "$READY_TIMEOUT" \
    -o "-p $PG_PORT -k $PG_DIR -c listen_addresses=127.0.0.1 -c ssl=on \
        -c ssl_cert_file=$PG_DIR/tls/cert.pem -c ssl_key_file=$PG_DIR/tls/key.pem \
        -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
    start >/dev/null || {
    # `stop` deletes the directory, and its log with it: show why here.
    echo "PostgreSQL did not start; the end of $PG_DIR/log:" >&2
    tail -n 20 "$PG_DIR/log" >&2 || true
    exit 1
  }
  local waited=0
  until ready; do
    if [ "$waited" -ge "$READY_TIMEOUT" ]; then
      echo "PostgreSQL did not answer within ${READY_TIMEOUT}s; see $PG_DIR/log" >&2
      exit 1
    fi
    sleep 1
    waited=$((waited + 1))
  done
  echo "PostgreSQL running on 127.0.0.1:$PG_PORT ($PG_DIR)"
}

stop() {
  if [ -d "$PG_DIR/data" ]; then
    as_owner "$(bin_dir)/pg_ctl" -D "$PG_DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$PG_DIR"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) ready ;;
  url) url ;;
  env)
    echo "PWRELAY_TEST_POSTGRES_URL='$(url)'"
    echo "PWRELAY_TEST_POSTGRES_PASSWORD_FILE='$PG_DIR/password'"
    echo "PWRELAY_TEST_POSTGRES_CA_FILE='$PG_DIR/tls/ca.pem'"
    ;;
  *) echo "usage: $0 start|stop|status|url|env" >&2; exit 64 ;;
esac
