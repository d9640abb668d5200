#!/usr/bin/env bash
# `make demo`: the demo workload through pgmux, on embedded defaults.
# Starts a throwaway PostgreSQL and Redis (or uses DEMO_DATABASE_URL, a
# direct URL to a PostgreSQL whose host and port pgmux will front, and
# DEMO_REDIS_URL), pgmux in transaction mode, the demo API, and a load of
# DEMO_DURATION (20s) from DEMO_CONCURRENCY (64) clients; prints the report
# and stops every process it started, on success, failure or Ctrl-C.
# Tracing is on (DEMO_TRACING=0 turns it off): pgmux and the demo API
# export their spans to a collector inside the demo API, and the report ends
# with where each route's slowest requests spent their time.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
scripts/deps.sh

DURATION=${DEMO_DURATION:-20s}
CONCURRENCY=${DEMO_CONCURRENCY:-64}
work=$(mktemp -d /tmp/pgmux-demo-XXXXXX)
chmod 755 "$work" # PostgreSQL runs as postgres when we are root
pids=()
pg_started=""
cleanup() {
  local code=$?
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  [ -n "$pg_started" ] && stop_pg "$work/pg"
  rm -rf "$work"
  exit $code
}
trap cleanup EXIT
trap 'exit 130' INT TERM

pg_host=127.0.0.1
if [ -n "${DEMO_DATABASE_URL:-}" ]; then
  pg_host=$(python3 -c 'import sys,urllib.parse as u; p=u.urlparse(sys.argv[1]); print(p.hostname or "127.0.0.1")' "$DEMO_DATABASE_URL")
  pg_port=$(python3 -c 'import sys,urllib.parse as u; p=u.urlparse(sys.argv[1]); print(p.port or 5432)' "$DEMO_DATABASE_URL")
  pg_user=$(python3 -c 'import sys,urllib.parse as u; p=u.urlparse(sys.argv[1]); print(p.username or "postgres")' "$DEMO_DATABASE_URL")
else
  pg_port=$(free_port)
  pg_user=postgres
  echo "demo: starting PostgreSQL on 127.0.0.1:$pg_port" >&2
  start_pg "$work/pg" "$pg_port"
  pg_started=1
  runas "$(pg_bindir)/createdb" -h 127.0.0.1 -p "$pg_port" -U postgres demo
fi

if [ -n "${DEMO_REDIS_URL:-}" ]; then
  redis_url=$DEMO_REDIS_URL
else
  redis_port=$(free_port)
  echo "demo: starting Redis on 127.0.0.1:$redis_port" >&2
  redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" --logfile "$work/redis.log" &
  pids+=($!)
  redis_url="redis://127.0.0.1:$redis_port/0"
fi

pgmux_port=$(free_port)
admin_port=$(free_port)
tracing_yaml=""
demo_tracing=()
load_tracing=()
if [ "${DEMO_TRACING:-1}" != 0 ]; then
  collector_port=$(free_port)
  tracing_yaml="tracing:
  otlp_endpoint: http://127.0.0.1:$collector_port"
  demo_tracing=(--collector "127.0.0.1:$collector_port")
  load_tracing=(--latency-split)
fi
cat > "$work/pgmux.yaml" <<YAML
listen: 127.0.0.1:$pgmux_port
admin_listen: 127.0.0.1:$admin_port
pool_mode: transaction
default_pool_size: 20
auth_type: trust
log_level: warn
databases:
  "*":
    host: $pg_host
    port: $pg_port
$tracing_yaml
YAML
echo "demo: starting pgmux on 127.0.0.1:$pgmux_port (admin $admin_port)" >&2
bin/pgmux --config "$work/pgmux.yaml" &
pids+=($!)
wait_http "http://127.0.0.1:$admin_port/healthz"

demo_port=$(free_port)
echo "demo: starting the demo API on 127.0.0.1:$demo_port" >&2
bin/pgmux-demo --listen "127.0.0.1:$demo_port" \
  --database-url "postgres://$pg_user@127.0.0.1:$pgmux_port/demo?sslmode=disable" \
  --redis-url "$redis_url" --max-conns 100 "${demo_tracing[@]}" 2>"$work/demo.log" &
pids+=($!)
wait_http "http://127.0.0.1:$demo_port/readyz" 60 || { cat "$work/demo.log" >&2; exit 1; }

echo "demo: $DURATION of load from $CONCURRENCY clients" >&2
bin/pgmux-load --url "http://127.0.0.1:$demo_port" --admin-url "http://127.0.0.1:$admin_port" \
  --duration "$DURATION" --concurrency "$CONCURRENCY" "${load_tracing[@]}"
