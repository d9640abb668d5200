#!/usr/bin/env bash
# bench/report.sh [DIR]: from DIR/results.csv (every round of every point,
# written by bench/run.sh) and DIR/memory.csv, writes DIR/summary.csv (the
# median of the rounds of each point), DIR/table.txt (the table of ratios,
# printed too) and DIR/chart.png. DIR is bench/results by default; run it
# again on saved results to redo the table. BENCH_POOL and BENCH_DURATION
# (as run.sh ran with) only label the table and chart; so does BENCH_ROUNDS,
# the rounds being counted from results.csv unless it says.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench/results}
CSV="$OUT/results.csv"
MEM="$OUT/memory.csv"
POOL=${BENCH_POOL:-20}
DURATION=${BENCH_DURATION:-10}
# The rounds of a point through a pooler: "5", or "5-11" when points ran
# different numbers (run.sh gives the closest points more).
ROUNDS=${BENCH_ROUNDS:-$(awk -F, 'NR > 1 && $4 != "direct" {k = $1 "," $2 "," $3 "," $4; if ($5 > r[k]) r[k] = $5}
  END {for (k in r) {if (lo == "" || r[k] < lo) lo = r[k]; if (r[k] > hi) hi = r[k]}; print (lo == hi ? lo + 0 : lo "-" hi)}' "$CSV")}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Medians over the rounds, then the table of ratios (from the medians).
SUM="$OUT/summary.csv"
# MEDIAN: an awk function, the median of a[1..m] (sorted in place), for the
# medians of the rounds here and of the rounds' ratios below.
MEDIAN='function median(a, m,   i, j, x) {
  for (i=2; i<=m; i++) { x=a[i]; for (j=i-1; j>=1 && a[j]>x; j--) a[j+1]=a[j]; a[j+1]=x }
  return m % 2 ? a[(m+1)/2] : (a[m/2]+a[m/2+1])/2 }'
median() { awk "$MEDIAN"' {v[NR]=$1} END {if (NR) print median(v, NR)}'; }
# CI: awk functions for a 90% confidence interval of a median from m values
# sorted in place (by median above), free of any assumption about their
# distribution: [a[k], a[m+1-k]] with k the largest for which the binomial
# (m, 1/2) puts at most 5% below k on each side (k=1 for m=5, 3 for m=11;
# none for fewer than 5). ci() gives "lo..hi", or "-".
CI='function cik(m,   i, c, p, k) { c=1; p=0; k=0
  for (i=0; i<m; i++) { p+=c; if (2*p/2^m > 0.10) break; k=i+1; c=c*(m-i)/(i+1) }
  return k }
function ci(a, m, f,   k) { k=cik(m); return k ? sprintf(f".."f, a[k], a[m+1-k]) : "-" }'

echo "workload,mode,clients,target,rounds,tps,latency_avg_ms,p99_ms,cpu_us_per_tx,rss_kb" > "$SUM"
tail -n +2 "$CSV" | cut -d, -f1-4 | sort -u | while IFS=, read -r w m c t; do
  rows=$(awk -F, -v w="$w" -v m="$m" -v c="$c" -v t="$t" '$1==w && $2==m && $3==c && $4==t && $6!=""' "$CSV")
  n=$(printf '%s\n' "$rows" | { grep -c . || true; })
  line="$w,$m,$c,$t,$n"
  for f in 6 7 8 9 10; do line="$line,$(printf '%s\n' "$rows" | cut -d, -f$f | { grep . || true; } | median)"; done
  echo "$line" >> "$SUM"
done

echo
echo "pgbench, transaction mode, pool $POOL, pooler pinned to one core; ${DURATION}s per point, median of $ROUNDS rounds through each pooler"
sort -t, -k1,1 -k2,2 -k3,3n <(tail -n +2 "$SUM") | awk -F, '
  function r(a,b) { return (a!="" && b!="" && b>0) ? sprintf("%.2f", a/b) : "-" }
  function v(x) { return x=="" ? "-" : x }
  { k=$1","$2","$3; if (!(k in seen)) { seen[k]=1; order[++n]=k } tps[k","$4]=$6; p99[k","$4]=$8; cpu[k","$4]=$9 }
  END {
    fmt="%-8s %-9s %7s | %9s %9s %9s | %7s %7s | %8s %8s %8s | %7s %7s %5s | %9s %5s\n"
    printf fmt, "script","mode","clients","direct","pgbouncer","pgmux","mux/pgb","mux/dir","p99 dir","p99 pgb","p99 mux","cpu pgb","cpu mux","ratio","mux 2core","2c/1c"
    for (i=1;i<=n;i++) { k=order[i]; split(k, part, ",")
      printf fmt, part[1], part[2], part[3], v(tps[k",direct"]), v(tps[k",pgbouncer"]), v(tps[k",pgmux"]),
        r(tps[k",pgmux"],tps[k",pgbouncer"]), r(tps[k",pgmux"],tps[k",direct"]),
        v(p99[k",direct"]), v(p99[k",pgbouncer"]), v(p99[k",pgmux"]),
        v(cpu[k",pgbouncer"]), v(cpu[k",pgmux"]), r(cpu[k",pgmux"],cpu[k",pgbouncer"]),
        v(tps[k",pgmux-2cores"]), r(tps[k",pgmux-2cores"],tps[k",pgmux"]) }
  }' | tee "$OUT/table.txt"

# Round by round: the medians above hide how far the rounds spread, and a
# P99 difference smaller than the spread says little (a P99 rests on the
# slowest 1% of a round, which the host's stalls decide; see
# docs/benchmarks.md). Round i through pgmux ran next to round i through PgBouncer,
# so each pair is compared: the rounds pgmux won, the median of the rounds'
# ratios (pgmux over PgBouncer: when the machine's speed drifts during a run,
# as it did by a third within minutes in one run, it moves both of a
# pair, and the ratio of two medians can then fall on rounds that did not
# run side by side), and each one's range.
{
  echo
  echo "round by round (pgmux against PgBouncer in the same round): rounds won, the median of the rounds' ratios"
  echo "pgmux/PgBouncer (tps r, p99 r) with a 90% confidence interval of that median (none under 5 rounds),"
  echo "and the range over the rounds;"
  echo "2c>=1c: rounds pgmux on both cores (two event loops) made at least the TPS of pgmux pinned (one)"
  tail -n +2 "$CSV" | sort -t, -k1,1 -k2,2 -k3,3n | awk -F, "$MEDIAN$CI"'
    $6 == "" || ($4 != "pgbouncer" && $4 != "pgmux" && $4 != "pgmux-2cores") { next }
    { k=$1","$2","$3; if (!(k in seen)) { seen[k]=1; order[++n]=k }
      t=$4; tps[k,t,$5]=$6; p99[k,t,$5]=$8; cpu[k,t,$5]=$9; if ($5 > rounds[k]) rounds[k]=$5 }
    function span(a, k, t,   i, lo, hi) { lo=""; hi=""
      for (i=1; i<=rounds[k]; i++) if ((k,t,i) in a) { if (lo=="" || a[k,t,i]+0 < lo+0) lo=a[k,t,i]; if (hi=="" || a[k,t,i]+0 > hi+0) hi=a[k,t,i] }
      return sprintf("%.1f-%.1f", lo, hi) }
    END {
      fmt="%-8s %-9s %7s | %-6s %-6s %-6s | %-5s %-10s %-5s %-10s | %-17s %-17s | %-15s %-15s | %s\n"
      printf fmt, "script","mode","clients","tps>=","p99<=","cpu<=","tps r","90% CI","p99 r","90% CI","p99 pgb","p99 mux","tps pgb","tps mux","2c>=1c"
      for (j=1; j<=n; j++) { k=order[j]; split(k, part, ","); w1=w2=w3=m=w4=m4=0; split("", rt); split("", rp)
        for (i=1; i<=rounds[k]; i++) {
          if (!((k,"pgbouncer",i) in tps) || !((k,"pgmux",i) in tps)) continue
          if ((k,"pgmux-2cores",i) in tps) { m4++; if (tps[k,"pgmux-2cores",i]+0 >= tps[k,"pgmux",i]+0) w4++ }
          m++
          rt[m] = tps[k,"pgbouncer",i] > 0 ? tps[k,"pgmux",i] / tps[k,"pgbouncer",i] : 0
          rp[m] = p99[k,"pgbouncer",i] > 0 ? p99[k,"pgmux",i] / p99[k,"pgbouncer",i] : 0
          if (tps[k,"pgmux",i]+0 >= tps[k,"pgbouncer",i]+0) w1++
          if (p99[k,"pgmux",i]+0 <= p99[k,"pgbouncer",i]+0) w2++
          if (cpu[k,"pgmux",i] != "" && cpu[k,"pgmux",i]+0 <= cpu[k,"pgbouncer",i]+0) w3++
        }
        if (m == 0) continue
        mt=sprintf("%.2f", median(rt, m)); mp=sprintf("%.2f", median(rp, m)) # sorts rt and rp for ci
        printf fmt, part[1], part[2], part[3], w1"/"m, w2"/"m, w3"/"m,
          mt, ci(rt, m, "%.2f"), mp, ci(rp, m, "%.2f"), span(p99, k, "pgbouncer"), span(p99, k, "pgmux"), span(tps, k, "pgbouncer"), span(tps, k, "pgmux"),
          m4 ? w4"/"m4 : "-" }
    }'

  # The latency each pooler adds over direct at 10 clients (the issue's
  # target): the medians of the rounds' average latency less direct's one
  # round, and pgmux's average less PgBouncer's round by round, its median
  # and 90% CI: "less" or "more" when the interval leaves out zero, else
  # "level".
  tail -n +2 "$CSV" | awk -F, "$MEDIAN$CI"'
    $1 != "select" || $3 != 10 || $7 == "" { next }
    $4 == "direct" { dir[$2]=$7; next }
    $4 == "pgbouncer" || $4 == "pgmux" { if (!($2 in seen)) { seen[$2]=1; order[++n]=$2 } lat[$2,$4,$5]=$7; if ($5 > rounds[$2]) rounds[$2]=$5 }
    END {
      if (!n) exit
      print ""
      print "latency added over direct at 10 clients, average latency in ms: the medians over the rounds, and"
      print "pgmux less PgBouncer round by round (its median, and a 90% confidence interval of that median)"
      fmt="%-9s | %7s %10s %10s | %8s %-16s %s\n"
      printf fmt, "mode", "direct", "+pgbouncer", "+pgmux", "mux-pgb", "90% CI", "pgmux adds"
      for (j=1; j<=n; j++) { mo=order[j]; if (!(mo in dir)) continue; a=b=m=0; split("", lb); split("", lm); split("", d)
        for (i=1; i<=rounds[mo]; i++) {
          if ((mo,"pgbouncer",i) in lat) lb[++a]=lat[mo,"pgbouncer",i]
          if ((mo,"pgmux",i) in lat) lm[++b]=lat[mo,"pgmux",i]
          if ((mo,"pgbouncer",i) in lat && (mo,"pgmux",i) in lat) d[++m]=lat[mo,"pgmux",i]-lat[mo,"pgbouncer",i]
        }
        if (!a || !b || !m) continue
        mb=median(lb, a); mm=median(lm, b); md=median(d, m); k=cik(m) # median sorts d for the interval
        verdict = !k ? "-" : d[m+1-k] < 0 ? "less" : d[k] > 0 ? "more" : "level"
        printf fmt, mo, sprintf("%.3f", dir[mo]), sprintf("%+.3f", mb-dir[mo]), sprintf("%+.3f", mm-dir[mo]),
          sprintf("%+.3f", md), ci(d, m, "%+.3f"), verdict }
    }'

  # The session-state look (statelook): pgmux as shipped over pgmux with
  # track_session_state off, round by round: the median of the TPS and CPU
  # ratios, with their 90% CI.
  tail -n +2 "$CSV" | awk -F, "$MEDIAN$CI"'
    $1 != "statelook" || $6 == "" { next }
    { k=$2","$3; if (!(k in seen)) { seen[k]=1; order[++n]=k } tps[k,$4,$5]=$6; cpu[k,$4,$5]=$9; if ($5 > rounds[k]) rounds[k]=$5 }
    END {
      if (!n) exit
      print ""
      print "the session-state look: pgmux over pgmux with track_session_state off, round by round (median, 90% CI)"
      fmt="%-9s %7s | %-6s %-5s %-10s | %-5s %-10s | %s\n"
      printf fmt, "mode", "clients", "rounds", "tps r", "90% CI", "cpu r", "90% CI", "within noise"
      for (j=1; j<=n; j++) { k=order[j]; split(k, part, ","); m=0; split("", rt); split("", rc)
        for (i=1; i<=rounds[k]; i++) {
          if (!((k,"pgmux",i) in tps) || !((k,"pgmux-nolook",i) in tps) || tps[k,"pgmux-nolook",i] == 0) continue
          m++; rt[m]=tps[k,"pgmux",i]/tps[k,"pgmux-nolook",i]
          rc[m]=cpu[k,"pgmux-nolook",i] > 0 ? cpu[k,"pgmux",i]/cpu[k,"pgmux-nolook",i] : 0
        }
        if (!m) continue
        mt=sprintf("%.3f", median(rt, m)); c=ci(rt, m, "%.3f"); kk=cik(m)
        noise = !kk ? "-" : (rt[kk] <= 1 && rt[m+1-kk] >= 1 ? "yes" : "no")
        mc=sprintf("%.3f", median(rc, m))
        printf fmt, part[1], part[2], m, mt, c, mc, ci(rc, m, "%.3f"), noise }
    }'
} | tee -a "$OUT/table.txt"
echo
echo "idle clients (RSS growth per client connection):"
# Aligned as column -t would (not on a minimal Debian: bsdextrautils).
awk -F, '{for (i=1; i<=NF; i++) {c[NR,i]=$i; if (length($i) > w[i]) w[i]=length($i)}; if (NF > nf) nf=NF}
  END {for (r=1; r<=NR; r++) {l=""; for (i=1; i<=nf; i++) l=l sprintf(i < nf ? "%-" w[i]+2 "s" : "%s", c[r,i]); print l}}' "$MEM"

# Chart: TPS and P99 by clients, select-only, simple and extended.
if command -v gnuplot >/dev/null && grep -q '^select,' "$SUM"; then # no select point (BENCH_ONLY): no chart
  for m in simple extended; do
    for t in direct pgbouncer pgmux; do
      awk -F, -v m=$m -v t=$t '$1=="select" && $2==m && $4==t && $6!="" {print $3, $6, $8}' "$SUM" | sort -n > "$tmp/$m-$t.dat"
    done
  done
  # The x range from the client counts, half the fewest to twice the most:
  # with one count (BENCH_CLIENTS=10) gnuplot's own range is empty and warns.
  # No select point at all: no range, gnuplot's own.
  xrange=$(awk -F, '$1=="select" {if (lo=="" || $3+0<lo) lo=$3+0; if ($3+0>hi) hi=$3+0}
    END {if (lo!="") printf "set xrange [%g:%g]", lo/2, hi*2}' "$SUM")
  gnuplot <<GP
set terminal pngcairo size 1200,800 font ",10" noenhanced
set output "$OUT/chart.png"
set multiplot layout 2,2 title "pgbench -S, transaction mode, pool $POOL, pooler on one core (${DURATION}s per point, median of $ROUNDS rounds)"
set logscale x
$xrange
set xlabel "clients"
set key left top
do for [m in "simple extended"] {
  set title "TPS, -M ".m
  set ylabel "TPS"
  plot for [t in "direct pgbouncer pgmux"] "$tmp/".m."-".t.".dat" using 1:2 with linespoints title t
}
set logscale y # direct's P99 at 1,000 clients is 10-30 s, the poolers' 0.1-0.3
do for [m in "simple extended"] {
  set title "P99 latency, -M ".m." (log scale)"
  set ylabel "ms"
  plot for [t in "direct pgbouncer pgmux"] "$tmp/".m."-".t.".dat" using 1:3 with linespoints title t
}
unset multiplot
GP
  echo "chart: $OUT/chart.png"
fi
echo "csv: $CSV (every round), $SUM (medians), $MEM"
