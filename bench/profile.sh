#!/usr/bin/env bash
# bench/profile.sh [BIN...]: the instructions pgmux runs in user space per
# transaction, counted by valgrind's callgrind, for bin/pgmux (built here) or
# for each binary given, so that two builds can be compared.
#
# Why: on this kind of shared two-core machine the same pgbench point moves
# 10-40% from run to run, so make bench resolves only differences larger
# than that, and a change worth 2% of the pooler's CPU cannot be seen there.
# An instruction count does not depend on how fast the machine runs; it
# still moves a little with how the events fall into wake-ups (see
# docs/benchmarks.md). It counts user space only
# (the kernel's part, most of a pooler's CPU, is not in it), and under
# valgrind pgmux runs many times slower (a TPC-B point at about a third of
# its TPS, the clients waiting on it), so a wake-up finds more events than
# at full speed: read the figures as what a change adds or saves, not as
# CPU time.
#
# What it does: a throwaway PostgreSQL (pgbench scale 10), pgmux in
# transaction mode with a pool of 20, started under callgrind; a warm-up,
# then PROFILE_TX transactions from each of PROFILE_CLIENTS clients, counted
# from a zeroed profile. Prints instructions per transaction, by package and
# by function (self cost). pgmux runs with GODEBUG=asyncpreemptoff=1:
# callgrind 3.19 aborts on the signals Go uses to preempt goroutines; and
# with cpu.rdtscp=off: it does not know RDTSCP, which the runtime reads its
# tick counter with where the CPU has it (it dies on SIGILL at the first
# contended lock).
# PgBouncer is not profiled beside it: callgrind_control reaches a process
# through vgdb, which waited for ever on an idle PgBouncer blocked in
# epoll_wait (Go's runtime wakes by itself, so pgmux is reached).
#
# Environment: PROFILE_PROCS (GOMAXPROCS, so event loops; 1), PROFILE_SCRIPT
# (tpcb, the default, or select: -S),
# PROFILE_MODE (simple, extended or prepared), PROFILE_CONFIG (lines added to
# pgmux's config, such as "relay_loop: false"), PROFILE_CLIENTS (20),
# PROFILE_TX (transactions per client, 200), PROFILE_TOP (functions listed,
# 25), PROFILE_OUT (a directory to keep the callgrind files in).
set -euo pipefail
bins=()
for b in "$@"; do bins+=("$(realpath "$b")"); done # before the cd below: paths as the caller gave them
cd "$(dirname "$0")/.."
source scripts/lib.sh
scripts/deps.sh

SCRIPT=${PROFILE_SCRIPT:-tpcb}
MODE=${PROFILE_MODE:-simple}
CLIENTS=${PROFILE_CLIENTS:-20}
TX=${PROFILE_TX:-200}
TOP=${PROFILE_TOP:-25}

command -v valgrind >/dev/null 2>&1 || apt_install profile valgrind
PGBENCH=$(command -v pgbench || echo "$(pg_bindir)/pgbench")
make -s build

work=$(mktemp -d /tmp/pgmux-profile-XXXXXX)
chmod 755 "$work"
mkdir "$work/cg"
pooler=""
cleanup() {
  [ -n "$pooler" ] && { kill "$pooler" 2>/dev/null || true; wait "$pooler" 2>/dev/null || true; }
  stop_pg "$work/pg"
  if [ -n "${PROFILE_OUT:-}" ]; then
    mkdir -p "$PROFILE_OUT" && cp "$work"/cg/*.cg.tx "$PROFILE_OUT"/ 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

pg_port=$(free_port)
start_pg "$work/pg" "$pg_port"
"$PGBENCH" -i -q -s 10 -h 127.0.0.1 -p "$pg_port" -U postgres postgres >/dev/null 2>&1

port=$(free_port)
admin=$(free_port)
cat > "$work/pgmux.yaml" <<YAML
listen: 127.0.0.1:$port
admin_listen: 127.0.0.1:$admin
pool_mode: transaction
default_pool_size: 20
max_client_conn: 1000
auth_type: trust
log_level: error
databases:
  postgres: {host: 127.0.0.1, port: $pg_port}
${PROFILE_CONFIG:-}
YAML

# bench_tx N: N transactions from each client through the pooler.
bench_tx() {
  local args=(-h 127.0.0.1 -p "$port" -U postgres -c "$CLIENTS" -j 2 -t "$1" -M "$MODE" -n postgres)
  [ "$SCRIPT" = select ] && args=(-S "${args[@]}")
  PGSSLMODE=disable "$PGBENCH" "${args[@]}" > "$work/pgbench.out" 2>&1 \
    || { echo "profile: pgbench failed:" >&2; tail -5 "$work/pgbench.out" >&2; exit 1; }
}

# profile NAME CMD...: CMD under callgrind, its profile of PROFILE_TX
# transactions a client left in $work/cg/NAME.cg.tx.
profile() {
  local name=$1 up=""
  shift
  valgrind --tool=callgrind --callgrind-out-file="$work/cg/$name.cg" "$@" > "$work/$name.valgrind" 2>&1 &
  pooler=$!
  for _ in $(seq 600); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then up=1; break; fi
    kill -0 "$pooler" 2>/dev/null || break
    sleep 0.1
  done
  [ -n "$up" ] || { echo "profile: $name did not start under valgrind:" >&2; tail -20 "$work/$name.valgrind" >&2; exit 1; }
  bench_tx 20 # logins, the pool filled, code paths warm
  callgrind_control -z "$pooler" >/dev/null
  bench_tx "$TX"
  callgrind_control -d "$pooler" >/dev/null
  kill "$pooler"; wait "$pooler" 2>/dev/null || true
  pooler=""
  mv "$(ls -t "$work/cg/$name.cg".* | head -1)" "$work/cg/$name.cg.tx"
}

# selfcost FILE: "function<TAB>instructions" for each function's own
# instructions (calls excluded) in a callgrind file with compressed names.
selfcost() {
  awk '
    /^c?fn=\(/ {
      id = $1; sub(/^c?fn=/, "", id)
      name = $0; sub(/^c?fn=\([0-9]+\) ?/, "", name)
      if (name != "") names[id] = name
      if ($0 ~ /^fn=/) fn = id
      next
    }
    /^calls=/ { skip = 1; next }
    /^[0-9+*-]/ { if (skip) { skip = 0; next } cost[fn] += $2; next }
    END { for (id in cost) printf "%s\t%d\n", (id in names ? names[id] : id), cost[id] }
  ' "$1"
}

n=$((TX * CLIENTS))
[ ${#bins[@]} -gt 0 ] || bins=(bin/pgmux)
echo "profile: user-space instructions per transaction, pgbench $SCRIPT -M $MODE, $CLIENTS clients x $TX transactions, pool 20, under callgrind"
export GODEBUG=asyncpreemptoff=1,cpu.rdtscp=off
# One P, so one event loop: the pooler as make bench runs it, pinned to one
# core (PROFILE_PROCS for another count).
export GOMAXPROCS=${PROFILE_PROCS:-1}
i=0
for bin in "${bins[@]}"; do
  i=$((i + 1))
  profile "pgmux$i" "$bin" --config "$work/pgmux.yaml"
  selfcost "$work/cg/pgmux$i.cg.tx" > "$work/self"
  echo "$bin: $(awk -F'\t' -v n=$n '{s += $2} END {printf "%d", s / n}' "$work/self") instructions per transaction; by package:"
  awk -F'\t' -v n=$n '{
    f = $1; sub(/^github\.com\/pgmux\/pgmux\//, "", f)
    if (f ~ /^runtime[.\/]/ || f ~ /^internal\/runtime/) p = "runtime"
    else { p = f; sub(/\.[^\/]*$/, "", p); if (p == f) p = "?" }
    s[p] += $2
  } END { for (p in s) if (s[p] / n >= 1) printf "  %8d  %s\n", s[p] / n, p }' "$work/self" | sort -k1,1nr
  echo "  top $TOP functions (own instructions per transaction):"
  # awk, not head, takes the top: head would leave sort to die of SIGPIPE,
  # and pipefail would end the script before the next binary.
  sort -t$'\t' -k2,2nr "$work/self" | awk -F'\t' -v n=$n -v top="$TOP" 'NR <= top {printf "  %8d  %s\n", $2 / n, $1}'
done
