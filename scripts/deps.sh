#!/usr/bin/env bash
# Makes sure what the tests, `make run` and `make demo` need is installed:
# PostgreSQL's server binaries (initdb, pg_ctl, postgres), psql, pgbench,
# redis-server, curl. On Debian as root it installs what is missing; otherwise
# it stops with the command to run.
set -euo pipefail

have_server() {
  command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1 && return 0
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
}
have_pgbench() {
  command -v pgbench >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/pgbench >/dev/null 2>&1
}

pkgs=()
have_server || pkgs+=(postgresql)
command -v psql >/dev/null 2>&1 || pkgs+=(postgresql-client)
have_pgbench || pkgs+=(postgresql-contrib)
command -v redis-server >/dev/null 2>&1 || pkgs+=(redis-server)
command -v curl >/dev/null 2>&1 || pkgs+=(curl)
[ ${#pkgs[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "deps: installing ${pkgs[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >&2
  exit 0
fi
echo "deps: missing ${pkgs[*]}. Install with:" >&2
echo "  sudo apt-get update && sudo apt-get install -y ${pkgs[*]}" >&2
exit 1
