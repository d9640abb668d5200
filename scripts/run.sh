#!/usr/bin/env bash
# `make run`: pgmux on 127.0.0.1:6432 (admin on 127.0.0.1:9127) in front of the
# PostgreSQL on 127.0.0.1:5432, with testdata/pgmux.yaml (trust auth, any
# database name passed through). If nothing answers on 5432, a throwaway
# cluster is started there for the length of the run. Then:
#   psql "host=127.0.0.1 port=6432 dbname=postgres user=postgres"
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
scripts/deps.sh

tmp=""
cleanup() {
  if [ -n "$tmp" ]; then
    stop_pg "$tmp"
    rm -rf "$tmp"
  fi
}
trap cleanup EXIT

if ! "$(pg_bindir)/pg_isready" -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  tmp=$(mktemp -d /tmp/pgmux-run-XXXXXX)
  echo "run: no PostgreSQL on 127.0.0.1:5432; starting a throwaway one in $tmp" >&2
  start_pg "$tmp" 5432
fi

echo "run: pgmux listening on 127.0.0.1:6432; try: psql \"host=127.0.0.1 port=6432 dbname=postgres user=postgres\"" >&2
bin/pgmux --config testdata/pgmux.yaml "$@"
