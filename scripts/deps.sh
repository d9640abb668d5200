#!/usr/bin/env bash
# Makes sure what the tests and `make run` need is installed: PostgreSQL's
# server binaries (initdb, pg_ctl, postgres), psql and pgbench. On Debian as
# root it installs what is missing; otherwise it stops with the command to run.
set -euo pipefail

have_server() {
  command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1 && return 0
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
}
have_pgbench() {
  command -v pgbench >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/pgbench >/dev/null 2>&1
}

missing=()
have_server || missing+=(postgresql)
command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
have_pgbench || missing+=(postgresql-contrib)
[ ${#missing[@]} -eq 0 ] && exit 0

# postgresql pulls in the client and pgbench on Debian.
pkgs="postgresql postgresql-contrib"
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "deps: installing $pkgs (missing: ${missing[*]})" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends $pkgs >&2
  exit 0
fi
echo "deps: missing ${missing[*]}. Install with:" >&2
echo "  sudo apt-get update && sudo apt-get install -y $pkgs" >&2
exit 1
