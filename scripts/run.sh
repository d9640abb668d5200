#!/usr/bin/env bash
# `make run`: pgmux on 127.0.0.1:6432 (admin on 127.0.0.1:9127) in front of the
# PostgreSQL on 127.0.0.1:5432, with testdata/pgmux.yaml (trust auth, any
# database name passed through). If nothing answers on 5432, a throwaway
# cluster is started there for the length of the run. Then:
#   psql "host=127.0.0.1 port=6432 dbname=postgres user=postgres"
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh

bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
export PATH="$PATH:${bindir}"

tmp=""
cleanup() {
  if [ -n "$tmp" ]; then
    runas pg_ctl -D "$tmp/data" -m fast stop >/dev/null 2>&1 || true
    rm -rf "$tmp"
  fi
}
runas() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  tmp=$(mktemp -d /tmp/pgmux-run-XXXXXX)
  chmod 755 "$tmp"
  [ "$(id -u)" = 0 ] && chown postgres: "$tmp"
  trap cleanup EXIT
  echo "run: no PostgreSQL on 127.0.0.1:5432; starting a throwaway one in $tmp" >&2
  runas initdb -D "$tmp/data" -U postgres -A trust -E UTF8 --locale=C --no-sync >/dev/null
  runas pg_ctl -D "$tmp/data" -l "$tmp/server.log" -w \
    -o "-p 5432 -k $tmp -c listen_addresses=127.0.0.1" start >/dev/null
fi

echo "run: pgmux listening on 127.0.0.1:6432; try: psql \"host=127.0.0.1 port=6432 dbname=postgres user=postgres\"" >&2
bin/pgmux --config testdata/pgmux.yaml "$@"
