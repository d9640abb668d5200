# Shell helpers shared by the scripts under scripts/ and bench/: source it.

pg_bindir() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
  echo "${d}"
}

# runas CMD...: as the postgres OS user when root (PostgreSQL refuses root).
runas() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# free_port: a TCP port nothing listens on now.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null \
    || echo $((20000 + RANDOM % 20000))
}

# start_pg DIR PORT: a throwaway cluster in DIR, trust auth, on 127.0.0.1:PORT.
start_pg() {
  local dir=$1 port=$2
  mkdir -p "$dir"
  chmod 755 "$dir"
  [ "$(id -u)" = 0 ] && chown postgres: "$dir"
  runas "$(pg_bindir)/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C --no-sync >/dev/null
  runas "$(pg_bindir)/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off -c synchronous_commit=off" start >/dev/null
}

# stop_pg DIR: stop the cluster started by start_pg.
stop_pg() {
  runas "$(pg_bindir)/pg_ctl" -D "$1/data" -m fast stop >/dev/null 2>&1 || true
}

# wait_http URL [SECONDS]: until URL answers 200.
wait_http() {
  local url=$1 n=$(( ${2:-30} * 10 ))
  for _ in $(seq "$n"); do
    curl -fsS -o /dev/null "$url" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "no answer from $url" >&2
  return 1
}

# apt_install WHO PKG...: installs the Debian packages PKG when run as root
# with apt-get, else stops with the command to run; WHO names the caller in
# the messages.
apt_install() {
  local who=$1
  shift
  [ $# -gt 0 ] || return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "$who: installing $*" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2 \
      || { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2; }
  else
    echo "$who: missing $*; install with: sudo apt-get install -y $*" >&2
    exit 1
  fi
}
