#!/usr/bin/env bash
# `make bench`: the same pgbench matrix against PostgreSQL directly, through
# PgBouncer and through pgmux, interleaved point by point, then idle-client
# memory through each pooler. Writes bench/results/results.csv,
# bench/results/memory.csv, bench/results/chart.png and prints a table of
# ratios. See README.md, "Benchmarks".
#
# CPU pinning: each pooler runs on core 0 only (taskset -c 0; pgmux then runs
# with GOMAXPROCS=1, as the Go runtime follows the affinity mask), pgbench on
# core 1 (taskset -c 1), PostgreSQL unpinned. Both poolers get the same pool
# size (20) in transaction mode. A second pgmux, allowed both cores, runs the
# select-only points at 100 and 1,000 clients in the same rounds, between the
# two pinned poolers, so that "mux 2core" is a median of rounds run beside
# the pinned ones. Each runs as shipped, with loops at its default of one
# event loop per core it may use: the pinned pgmux runs one, the other two.
#
# Sessions: each pooler runs in a session of its own (setsid), as a daemon
# (pgbouncer -d) or a service does. With the kernel's autogroup scheduling
# (sched_autogroup_enabled, on here) a session is one scheduling group, so a
# pooler left in this script's session would share its CPU weight with
# pgbench, and how much CPU it got against PostgreSQL's backends on its core
# would follow pgbench's load. PostgreSQL has a session of its own (pg_ctl
# starts it with setsid).
#
# Scheduling: each pooler runs as shipped. pgmux asks the kernel for a short
# scheduling slice (sched_slice, 100 us by default), so that it is picked
# soon after it wakes on the core it shares with PostgreSQL's backends;
# PgBouncer keeps the kernel's default. Given the same 100 us slice (set from
# outside with sched_setattr), PgBouncer was slower, not faster: lower TPS in
# 7 of 8 select-only rounds at 100 clients (docs/tried-and-dropped.md, Scheduling).
#
# Rounds: each pooler point runs BENCH_ROUNDS times (default 5), PgBouncer and
# pgmux alternating and taking turns to go first; the table and the chart show
# the median of the rounds (this machine's figures drift 10-40% from one run
# to the next, and one round a point let a single slow run decide a ratio;
# with three, the rounds of one pooler at one point still spread 20-30%, more
# than the differences the targets ask about).
#
# The points where the two poolers run level, select-only under 100 clients
# (simple and extended) and TPC-B, run BENCH_ROUNDS_LEVEL rounds (default
# 11): at five, which pooler a median put ahead changed from run to run there
# (docs/benchmarks.md, Rounds), and the 90% confidence interval
# report.sh gives the rounds' ratios is their whole range; at eleven it
# leaves out the outermost two on each side.
#
# Environment: BENCH_DURATION (seconds per point, default 10), BENCH_ROUNDS
# (default 5), BENCH_ROUNDS_LEVEL (default 11), BENCH_CLIENTS (default
# "10 100 1000"), BENCH_IDLE (default "1000 10000 100000"; set and empty for
# none), BENCH_SCALE (pgbench scale, default 10), BENCH_OUT (where results
# go, default bench/results), BENCH_ONLY (the workloads to run, of select,
# tpcb, appnames, statelook and tls; default all).
#
# statelook: select-only at 100 clients, simple protocol, through pgmux as
# shipped and through a second pgmux, pinned to the same core, with
# track_session_state off, which reads no statement's text for the session
# state it leaves: the cost of that look, BENCH_ROUNDS_LEVEL rounds paired.
#
# TLS: PostgreSQL runs with ssl = on (a self-signed certificate made here)
# and takes plain text too. The plain points keep server_tls_sslmode at
# disable on both poolers (both default to prefer). The tls point (select-only,
# 100 clients) runs both poolers afresh with TLS on both legs: pgbench with
# sslmode=require, the poolers with client and server sslmode require, the
# same certificate and protocols (TLS 1.3) for both.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
scripts/deps.sh

DURATION=${BENCH_DURATION:-10}
ROUNDS=${BENCH_ROUNDS:-5}
ROUNDS_LEVEL=${BENCH_ROUNDS_LEVEL:-11}
CLIENTS=${BENCH_CLIENTS:-"10 100 1000"}
IDLE=${BENCH_IDLE-"1000 10000 100000"} # set and empty: no idle points
SCALE=${BENCH_SCALE:-10}
POOL=20
OUT=${BENCH_OUT:-bench/results}
ONLY=${BENCH_ONLY:-select,tpcb,appnames,statelook,tls}
wanted() { [[ ",$ONLY," == *",$1,"* ]]; }
mkdir -p "$OUT"

need=()
command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || need+=(pgbouncer)
command -v gnuplot >/dev/null 2>&1 || need+=(gnuplot-nox)
apt_install bench "${need[@]}"
PGBOUNCER=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
PGBENCH=$(command -v pgbench || echo "$(pg_bindir)/pgbench")
echo "bench: $($PGBOUNCER --version | head -1), $("$PGBENCH" --version), $(go version | cut -d' ' -f3), $(nproc) cores" >&2

make -s build
go build -o bin/idleclients ./bench/idleclients

work=$(mktemp -d /tmp/pgmux-bench-XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  stop_pg "$work/pg"
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# PostgreSQL, tuned for benchmarking: no fsync, room for 1,000 direct clients.
pg_port=$(free_port)
mkdir -p "$work/pg"
chmod 755 "$work/pg"
[ "$(id -u)" = 0 ] && chown postgres: "$work/pg"
runas "$(pg_bindir)/initdb" -D "$work/pg/data" -U postgres -A trust -E UTF8 --locale=C --no-sync >/dev/null
# One self-signed certificate for PostgreSQL and both poolers' TLS points.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost -days 2 \
  -keyout "$work/tls.key" -out "$work/tls.crt" 2>/dev/null
chmod 644 "$work/tls.crt" "$work/tls.key" # read by PgBouncer as the postgres user
cp "$work/tls.crt" "$work/pg/data/server.crt"; cp "$work/tls.key" "$work/pg/data/server.key"
chmod 600 "$work/pg/data/server.key"
[ "$(id -u)" = 0 ] && chown postgres: "$work/pg/data/server.crt" "$work/pg/data/server.key"
runas "$(pg_bindir)/pg_ctl" -D "$work/pg/data" -l "$work/pg/server.log" -w -o "-p $pg_port -k $work/pg \
  -c listen_addresses=127.0.0.1 -c max_connections=1200 -c fsync=off -c synchronous_commit=off \
  -c full_page_writes=off -c shared_buffers=256MB -c ssl=on" start >/dev/null
"$PGBENCH" -i -q -s "$SCALE" -h 127.0.0.1 -p "$pg_port" -U postgres postgres >/dev/null 2>&1

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

bouncer_port=$(free_port)
# TLS: both legs' settings for the tls point, else plain text on both.
BOUNCER_TLS="server_tls_sslmode = disable"
PGMUX_TLS="server_tls_sslmode: disable"
# start_bouncer [K]: K PgBouncers (default 1) on bouncer_port, sharing it
# through so_reuseport when K > 1 (for more clients than one process may
# open files for); their pids in bouncer_pids, the first's in bouncer_pid.
start_bouncer() {
  local k=${1:-1} i reuse=""
  [ "$k" -gt 1 ] && reuse="so_reuseport = 1"
  echo '"postgres" ""' > "$work/userlist.txt"
  bouncer_pids=()
  for i in $(seq "$k"); do
    cat > "$work/pgbouncer$i.ini" <<INI
[databases]
postgres = host=127.0.0.1 port=$pg_port dbname=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $bouncer_port
$reuse
unix_socket_dir =
auth_type = trust
auth_file = $work/userlist.txt
pool_mode = transaction
default_pool_size = $POOL
max_client_conn = 20000
ignore_startup_parameters = extra_float_digits
logfile = $work/pgbouncer$i.log
pidfile =
log_connections = 0
log_disconnections = 0
$BOUNCER_TLS
INI
    chmod 644 "$work/pgbouncer$i.ini" "$work/userlist.txt"
    : > "$work/pgbouncer$i.log"; chmod 666 "$work/pgbouncer$i.log"
    # setsid (not a group leader here, so it does not fork), taskset and
    # setpriv exec: $! is PgBouncer's pid.
    if [ "$(id -u)" = 0 ]; then
      # setpriv, unlike runuser, keeps the raised open-files limit.
      setsid taskset -c 0 setpriv --reuid=postgres --regid=postgres --clear-groups "$PGBOUNCER" -q "$work/pgbouncer$i.ini" &
    else
      setsid taskset -c 0 "$PGBOUNCER" -q "$work/pgbouncer$i.ini" &
    fi
    bouncer_pids+=($!)
    pids+=($!)
  done
  bouncer_pid=${bouncer_pids[0]}
  for i in $(seq "$k"); do
    local up=""
    for _ in $(seq 100); do
      grep -q "listening on 127.0.0.1:$bouncer_port" "$work/pgbouncer$i.log" && { up=1; break; }
      kill -0 "${bouncer_pids[$((i - 1))]}" 2>/dev/null || break
      sleep 0.1
    done
    [ -n "$up" ] || { echo "pgbouncer did not start" >&2; cat "$work/pgbouncer$i.log" >&2; exit 1; }
  done
}

pgmux_port=$(free_port)
pgmux2_port=$(free_port)
pgmux3_port=$(free_port)
# free_port's ports are free when it looks, not reserved: pgmux's SO_REUSEPORT
# would let two of these processes share one without a word.
while [ "$pgmux_port" = "$bouncer_port" ]; do pgmux_port=$(free_port); done
while [ "$pgmux2_port" = "$bouncer_port" ] || [ "$pgmux2_port" = "$pgmux_port" ]; do pgmux2_port=$(free_port); done
while [[ " $bouncer_port $pgmux_port $pgmux2_port " == *" $pgmux3_port "* ]]; do pgmux3_port=$(free_port); done
# start_pgmux CPUS [K] [PORT]: K pgmux processes (default 1) on PORT (default
# pgmux_port; pgmux listens with SO_REUSEPORT), each with an admin port of its
# own, on the taskset CPU list CPUS; their pids in pgmux_pids, the first's in
# pgmux_pid.
start_pgmux() {
  local k=${2:-1} port=${3:-$pgmux_port} i admin
  pgmux_pids=()
  for i in $(seq "$k"); do
    admin=$(free_port)
    cat > "$work/pgmux$port-$i.yaml" <<YAML
listen: 127.0.0.1:$port
admin_listen: 127.0.0.1:$admin
pool_mode: transaction
default_pool_size: $POOL
max_client_conn: 20000
auth_type: trust
log_level: error
$PGMUX_TLS
${PGMUX_EXTRA:-}
databases:
  postgres: {host: 127.0.0.1, port: $pg_port}
YAML
    setsid taskset -c "$1" bin/pgmux --config "$work/pgmux$port-$i.yaml" &
    pgmux_pids+=($!)
    pids+=($!)
    wait_http "http://127.0.0.1:$admin/healthz"
  done
  pgmux_pid=${pgmux_pids[0]}
}
stop_pid() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

start_bouncer
start_pgmux 0,1 1 "$pgmux2_port"
pgmux2_pid=$pgmux_pid
start_pgmux 0

CSV="$OUT/results.csv"
echo "workload,mode,clients,target,round,tps,latency_avg_ms,p99_ms,cpu_us_per_tx,rss_kb" > "$CSV"
round=1

# point WORKLOAD MODE CLIENTS TARGET PORT POOLER_PID (round: $round)
point() {
  local workload=$1 mode=$2 clients=$3 target=$4 port=$5 pid=${6:-}
  # pgbench counts its connection time in -T; 1,000 direct connections (1,000
  # backends forked) took up to 17 s here, so those points get 30 s more. TPS
  # is reported without the connection time either way.
  local duration=$DURATION
  [ "$target" = direct ] && [ "$clients" -ge 1000 ] && duration=$((DURATION + 30))
  # appnames: select-only from two pgbench at once, half the clients each,
  # with application names a and b, so that a server is often matched to
  # the other half's settings and is brought in line before a transaction.
  local apps=(pgbench) each=$clients
  [ "$workload" = appnames ] && apps=(a b) each=$((clients / 2))
  local args=(-h 127.0.0.1 -p "$port" -U postgres -c "$each" -j 2 -T "$duration" -M "$mode" -n -l
    --log-prefix="$work/log" postgres)
  [ "$workload" != tpcb ] && args=(-S "${args[@]}")
  rm -f "$work"/log.* "$work"/out.*
  local t0=0
  [ -n "$pid" ] && t0=$(cpu_ticks "$pid")
  local app failed=0
  for app in "${apps[@]}"; do
    PGAPPNAME=$app PGSSLMODE=${SSLMODE:-disable} taskset -c 1 "$PGBENCH" "${args[@]}" > "$work/out.$app" 2>&1 &
  done
  for app in "${apps[@]}"; do wait -n || failed=1; done
  if [ $failed = 1 ]; then
    echo "bench: $workload -M $mode -c $clients via $target failed:" >&2
    tail -q -n 5 "$work"/out.* >&2
    echo "$workload,$mode,$clients,$target,$round,,,,," >> "$CSV"
    return 0
  fi
  # Summed over the pgbench runs: TPS, transactions; latency weighted by them
  # (pgbench prints a run's count before its average, so each run is added
  # up when the next begins, and at the end).
  local tps lat n p99 cpu="" rss=""
  read -r tps lat n < <(awk -F'= |: ' '
    function add() { all += n; sum += l * n; n = 0; l = 0 }
    FNR == 1 {add()}
    /^tps = .*without initial connection time/ {split($2,a," "); tps+=a[1]}
    /^latency average/ {split($2,a," "); l=a[1]}
    /number of transactions actually processed/ {n=$2}
    END {add(); printf "%f %.3f %d\n", tps, all ? sum/all : 0, all}' "$work"/out.*)
  if [ "${n:-0}" = 0 ]; then
    echo "bench: $workload -M $mode -c $clients via $target: no transaction within ${duration}s (connecting took it all)" >&2
  fi
  p99=$(cat "$work"/log.* | awk '{print $3}' | sort -n | awk '{v[NR]=$1} END {i=int(NR*0.99); if (i<1) i=1; printf "%.3f", v[i]/1000}')
  if [ -n "$pid" ]; then
    local t1; t1=$(cpu_ticks "$pid")
    cpu=$(awk -v d=$((t1 - t0)) -v n="$n" 'BEGIN {if (n>0) printf "%.1f", d*10000/n}') # 100 ticks/s: 1 tick = 10000 µs
    rss=$(rss_kb "$pid")
  fi
  echo "$workload,$mode,$clients,$target,$round,$tps,$lat,$p99,$cpu,$rss" >> "$CSV"
  printf "  %-8s %-9s %5s clients  %-12s r%s %9s tps  p99 %8s ms  cpu %6s us/tx\n" "$workload" "$mode" "$clients" "$target" "$round" "$tps" "$p99" "${cpu:--}" >&2
}

# poolers ROUNDS WORKLOAD MODE CLIENTS [TARGET...]: the point through each
# target (pgbouncer and pgmux unless named), ROUNDS times, the order reversed
# every other round. point sees this round number (bash's dynamic scope).
poolers() {
  local rounds=$1 workload=$2 mode=$3 clients=$4 round t
  shift 4
  local targets=("$@")
  [ ${#targets[@]} -gt 0 ] || targets=(pgbouncer pgmux)
  for round in $(seq "$rounds"); do
    local order=("${targets[@]}")
    if [ $((round % 2)) = 0 ]; then
      order=(); for t in "${targets[@]}"; do order=("$t" "${order[@]}"); done
    fi
    for t in "${order[@]}"; do
      case $t in
        pgbouncer) point "$workload" "$mode" "$clients" pgbouncer "$bouncer_port" "$bouncer_pid" ;;
        pgmux) point "$workload" "$mode" "$clients" pgmux "$pgmux_port" "$pgmux_pid" ;;
        pgmux-2cores) point "$workload" "$mode" "$clients" pgmux-2cores "$pgmux2_port" "$pgmux2_pid" ;;
        pgmux-nolook) point "$workload" "$mode" "$clients" pgmux-nolook "$pgmux3_port" "$pgmux3_pid" ;;
      esac
    done
  done
}

echo "bench: pgbench points of ${DURATION}s: direct once, then PgBouncer and pgmux $ROUNDS rounds each ($ROUNDS_LEVEL under 100 clients and at TPC-B), interleaved" >&2
wanted select || CLIENTS=""
for c in $CLIENTS; do
  for mode in simple extended; do
    point select "$mode" "$c" direct "$pg_port"
    if [ "$c" -ge 100 ]; then
      poolers "$ROUNDS" select "$mode" "$c" pgbouncer pgmux-2cores pgmux
    else
      poolers "$ROUNDS_LEVEL" select "$mode" "$c"
    fi
  done
  point select prepared "$c" direct "$pg_port"
  # PgBouncer before 1.21 cannot keep prepared statements in transaction mode.
  if "$PGBOUNCER" --version | head -1 | awk '{split($2,v,"."); exit !(v[1]>1 || v[2]>=21)}'; then
    poolers "$ROUNDS" select prepared "$c"
  else
    poolers "$ROUNDS" select prepared "$c" pgmux
  fi
done
if wanted tpcb; then
  point tpcb simple 100 direct "$pg_port"
  poolers "$ROUNDS_LEVEL" tpcb simple 100
fi
if wanted appnames && [[ " $CLIENTS " == *" 100 "* ]]; then
  point appnames simple 100 direct "$pg_port"
  poolers "$ROUNDS" appnames simple 100
fi

stop_pid "$pgmux2_pid"

# The session-state look's cost: pgmux as shipped beside one without it,
# on the same core (the pinned pgmux's), one at a time.
if wanted statelook; then
  main_pgmux_pid=$pgmux_pid main_pgmux_pids=("${pgmux_pids[@]}")
  PGMUX_EXTRA="track_session_state: false" start_pgmux 0 1 "$pgmux3_port"
  pgmux3_pid=$pgmux_pid
  pgmux_pid=$main_pgmux_pid pgmux_pids=("${main_pgmux_pids[@]}")
  poolers "$ROUNDS_LEVEL" statelook simple 100 pgmux pgmux-nolook
  stop_pid "$pgmux3_pid"
fi

# TLS on both legs, select-only at 100 clients, through poolers started
# afresh with it.
if wanted tls; then
  for p in "${bouncer_pids[@]}" "${pgmux_pids[@]}"; do stop_pid "$p"; done
  BOUNCER_TLS="client_tls_sslmode = require
client_tls_key_file = $work/tls.key
client_tls_cert_file = $work/tls.crt
client_tls_protocols = tlsv1.3
server_tls_sslmode = require
server_tls_protocols = tlsv1.3"
  PGMUX_TLS="client_tls_sslmode: require
client_tls_key_file: $work/tls.key
client_tls_cert_file: $work/tls.crt
client_tls_protocols: tlsv1.3
server_tls_sslmode: require
server_tls_protocols: tlsv1.3"
  start_bouncer
  start_pgmux 0
  SSLMODE=require point tls simple 100 direct "$pg_port"
  SSLMODE=require poolers "$ROUNDS" tls simple 100
  BOUNCER_TLS="server_tls_sslmode = disable"
  PGMUX_TLS="server_tls_sslmode: disable"
fi

# Memory: N idle clients after one query each, through each pooler, fresh.
# A process may open only so many files (ulimit -Hn: 20,000 on the machine
# this was written on, and no raising it there). Past three quarters of that
# limit the clients are spread over K processes of each pooler sharing the
# port (PgBouncer's so_reuseport; pgmux always listens with SO_REUSEPORT),
# and over K idleclients, each from a loopback address of its own (one
# source address has only ~28,000 ephemeral ports towards one port).
MEM="$OUT/memory.csv"
echo "target,clients,processes,rss_base_kb,rss_kb,bytes_per_client" > "$MEM"
hard=$(ulimit -Hn)
[[ $hard =~ ^[0-9]+$ ]] || hard=1048576
per_process=$((hard * 3 / 4))
rss_sum() { local p t=0; for p in "$@"; do t=$((t + $(rss_kb "$p"))); done; echo "$t"; }
memory_point() { # target port k n pid...
  local target=$1 port=$2 k=$3 n=$4
  shift 4
  # One query first, so that the base counts a pool's servers (spread over
  # the processes when there are several, as the kernel spreads clients).
  PGSSLMODE=disable "$PGBENCH" -h 127.0.0.1 -p "$port" -U postgres -S -c $((4 * k)) -t 10 -n postgres >/dev/null 2>&1
  local base; base=$(rss_sum "$@")
  rm -f "$work/hold" "$work"/idle.*.out
  mkfifo "$work/hold"
  local holders=() i src=()
  for i in $(seq "$k"); do
    [ "$k" -gt 1 ] && src=(-src "127.0.0.$((i + 1))")
    bin/idleclients -addr "127.0.0.1:$port" -n $((n / k + (i <= n % k ? 1 : 0))) "${src[@]}" \
      < "$work/hold" > "$work/idle.$i.out" 2>&1 &
    holders+=($!)
  done
  exec 7>"$work/hold" # the idleclients hold their connections until this closes
  local ready=0 h gone=""
  for _ in $(seq 6000); do # 10 minutes
    ready=$(cat "$work"/idle.*.out 2>/dev/null | grep -c '^ready$' || true)
    [ "$ready" = "$k" ] && break
    for h in "${holders[@]}"; do kill -0 "$h" 2>/dev/null || gone=1; done # they exit only on failure
    [ -n "$gone" ] && break
    sleep 0.1
  done
  if [ "$ready" != "$k" ]; then
    echo "bench: $n idle clients through $target failed: $(grep -hv '^ready$' "$work"/idle.*.out | head -3)" >&2
    echo "$target,$n,$k,$base,," >> "$MEM"
  else
    sleep 3 # idle for a few seconds: pgmux parks idle clients after one to two (see proxy/park.go)
    local rss; rss=$(rss_sum "$@")
    local per=$(( (rss - base) * 1024 / n ))
    echo "$target,$n,$k,$base,$rss,$per" >> "$MEM"
    printf "  %-9s %6s idle clients  %s process(es)  RSS %7s KiB -> %7s KiB  %6s bytes/client\n" \
      "$target" "$n" "$k" "$base" "$rss" "$per" >&2
  fi
  exec 7>&-
  for h in "${holders[@]}"; do wait "$h" 2>/dev/null || true; done
}
echo "bench: idle clients" >&2
for p in "${bouncer_pids[@]}" "${pgmux_pids[@]}"; do stop_pid "$p"; done
for n in $IDLE; do
  k=$(( (n + per_process - 1) / per_process ))
  start_bouncer "$k"
  memory_point pgbouncer "$bouncer_port" "$k" "$n" "${bouncer_pids[@]}"
  for p in "${bouncer_pids[@]}"; do stop_pid "$p"; done
  start_pgmux 0 "$k"
  memory_point pgmux "$pgmux_port" "$k" "$n" "${pgmux_pids[@]}"
  for p in "${pgmux_pids[@]}"; do stop_pid "$p"; done
done

# The medians, the table of ratios and the chart.
BENCH_POOL=$POOL BENCH_DURATION=$DURATION BENCH_ROUNDS= bench/report.sh "$OUT"
