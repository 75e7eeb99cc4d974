#!/usr/bin/env bash
# Starts the real services the tests and cluster mode talk to — PostgreSQL and Redis from Debian
# packages, and an S3-compatible server (s3s-fs, Apache-2.0, built once with cargo and cached
# outside the repo) — in a private directory, on loopback ports, and prints the environment to use
# them.
#
#   eval "$(scripts/services.sh start)"   # exports DATABASE_URL, REDIS_URL, PROOFJOBS_SERVICES_DIR,
#                                         # and the TLS endpoints: PROOFJOBS_TLS_CA (a private CA),
#                                         # DATABASE_TLS_URL (sslmode=verify-full), REDIS_TLS_URL (rediss://),
#                                         # and S3: PROOFJOBS_S3_ENDPOINT, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
#   scripts/services.sh stop
#
# PostgreSQL accepts plain and TLS connections on one port; Redis serves TLS on a port of its
# own. Both present a certificate for 127.0.0.1 signed by a CA made here (openssl), as managed
# stores (RDS, ElastiCache) present theirs.
set -euo pipefail

DIR=${PROOFJOBS_SERVICES_DIR:-/tmp/proofjobs-services}
PG_PORT=${PROOFJOBS_PG_PORT:-55432}
REDIS_PORT=${PROOFJOBS_REDIS_PORT:-56379}
REDIS_TLS_PORT=${PROOFJOBS_REDIS_TLS_PORT:-56380}
S3_PORT=${PROOFJOBS_S3_PORT:-59014}
S3S_VERSION=0.14.1
S3S_BIN=${HOME}/.cache/proofjobs/s3s-fs-$S3S_VERSION/bin/s3s-fs
# Fixed test credentials: the server checks SigV4 signatures with them.
S3_KEY=proofjobs-test
S3_SECRET=proofjobs-test-secret

pg_bin() {
  local b
  for b in "$(command -v "$1" 2>/dev/null)" /usr/lib/postgresql/*/bin/"$1"; do
    [ -x "$b" ] && { echo "$b"; return; }
  done
  echo "missing PostgreSQL binary $1 (apt-get install postgresql)" >&2; exit 1
}

# A CA and a server certificate for 127.0.0.1, once per services directory.
tls_files() {
  local t="$DIR/tls"
  [ -f "$t/server.crt" ] && return 0
  mkdir -p "$t"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$t/ca.key" -out "$t/ca.crt" -days 3650 -subj "/CN=proofjobs-test-stores-ca" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -keyout "$t/server.key" -out "$t/server.csr" -subj "/CN=127.0.0.1" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' > "$t/san.ext"
  openssl x509 -req -in "$t/server.csr" -CA "$t/ca.crt" -CAkey "$t/ca.key" -CAcreateserial -out "$t/server.crt" -days 3650 -extfile "$t/san.ext" 2>/dev/null
  chmod 600 "$t/server.key"
  # PostgreSQL wants its key owned by the server's user and private.
  if [ "$(id -u)" = 0 ]; then chown postgres "$t/server.key" "$t/server.crt"; fi
}

start() {
  mkdir -p "$DIR"
  tls_files
  if ! [ -f "$DIR/pg/PG_VERSION" ]; then
    # initdb refuses to run as root; the data dir belongs to the postgres user when we are root.
    if [ "$(id -u)" = 0 ]; then
      mkdir -p "$DIR/pg" && chown postgres "$DIR/pg" "$DIR"
      su postgres -s /bin/sh -c "$(pg_bin initdb) -D $DIR/pg -A trust -U proofjobs --no-sync" >"$DIR/initdb.log"
    else
      "$(pg_bin initdb)" -D "$DIR/pg" -A trust -U proofjobs --no-sync >"$DIR/initdb.log"
    fi
  fi
  if ! "$(pg_bin pg_isready)" -q -h 127.0.0.1 -p "$PG_PORT"; then
    local opts="-c listen_addresses=127.0.0.1 -p $PG_PORT -c unix_socket_directories=$DIR -c fsync=off -c max_connections=400"
    opts="$opts -c ssl=on -c ssl_cert_file=$DIR/tls/server.crt -c ssl_key_file=$DIR/tls/server.key"
    if [ "$(id -u)" = 0 ]; then
      su postgres -s /bin/sh -c "$(pg_bin pg_ctl) -D $DIR/pg -l $DIR/pg.log -w -o '$opts' start" >/dev/null
    else
      "$(pg_bin pg_ctl)" -D "$DIR/pg" -l "$DIR/pg.log" -w -o "$opts" start >/dev/null
    fi
  fi
  if ! redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
    # noeviction + maxmemory: a write past the limit must fail loudly, never evict a live artifact.
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
      --tls-port "$REDIS_TLS_PORT" --tls-cert-file "$DIR/tls/server.crt" --tls-key-file "$DIR/tls/server.key" \
      --tls-ca-cert-file "$DIR/tls/ca.crt" --tls-auth-clients no \
      --maxmemory 4gb --maxmemory-policy noeviction --daemonize yes \
      --logfile "$DIR/redis.log" --pidfile "$DIR/redis.pid" >/dev/null
    for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
  fi
  if ! curl -s -o /dev/null "http://127.0.0.1:$S3_PORT/" 2>/dev/null; then
    [ -x "$S3S_BIN" ] || cargo install s3s-fs --version "$S3S_VERSION" --features binary --locked \
      --root "$(dirname "$(dirname "$S3S_BIN")")" >"$DIR/s3s-install.log" 2>&1
    mkdir -p "$DIR/s3"
    nohup "$S3S_BIN" --host 127.0.0.1 --port "$S3_PORT" --access-key "$S3_KEY" --secret-key "$S3_SECRET" "$DIR/s3" \
      >"$DIR/s3s.log" 2>&1 &
    echo $! > "$DIR/s3s.pid"
    for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$S3_PORT/" && break; sleep 0.1; done
  fi
  echo "export DATABASE_URL=postgres://proofjobs@127.0.0.1:$PG_PORT/postgres"
  echo "export REDIS_URL=redis://127.0.0.1:$REDIS_PORT"
  echo "export PROOFJOBS_SERVICES_DIR=$DIR"
  echo "export PROOFJOBS_TLS_CA=$DIR/tls/ca.crt"
  echo "export DATABASE_TLS_URL='postgres://proofjobs@127.0.0.1:$PG_PORT/postgres?sslmode=verify-full&sslrootcert=$DIR/tls/ca.crt'"
  echo "export REDIS_TLS_URL=rediss://127.0.0.1:$REDIS_TLS_PORT"
  echo "export PROOFJOBS_S3_ENDPOINT=http://127.0.0.1:$S3_PORT"
  echo "export AWS_ACCESS_KEY_ID=$S3_KEY AWS_SECRET_ACCESS_KEY=$S3_SECRET AWS_REGION=us-east-1"
}

stop() {
  redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
  if [ -f "$DIR/s3s.pid" ]; then kill "$(cat "$DIR/s3s.pid")" 2>/dev/null || true; rm -f "$DIR/s3s.pid"; fi
  if [ -f "$DIR/pg/postmaster.pid" ]; then
    if [ "$(id -u)" = 0 ]; then
      su postgres -s /bin/sh -c "$(pg_bin pg_ctl) -D $DIR/pg -m fast stop" >/dev/null || true
    else
      "$(pg_bin pg_ctl)" -D "$DIR/pg" -m fast stop >/dev/null || true
    fi
  fi
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 64 ;;
esac
