#!/usr/bin/env bash
# Intake through the local RabbitMQ cluster with N engine nodes
# (docs/SCALE-OUT.md, "Measured per-node figures"): runs `movewatch demo
# --cluster --nodes N` with a fleet large enough to offer more than the
# machine takes, lets it warm up, then counts the points stored in
# PostgreSQL (position_keys) over a window once the first 1,000 are
# stored, and each node's RSS.
#
#   bash scripts/cluster-figures.sh BIN NODES [VEHICLES] [INTERVAL] [WARMUP_S] [WINDOW_S]
#
# Needs `bash scripts/cluster.sh up` and PostgreSQL on 127.0.0.1:5432.
set -euo pipefail
BIN=${1:?movewatch binary}
NODES=${2:?engine nodes}
VEHICLES=${3:-2000}
INTERVAL=${4:-200ms}
WARMUP=${5:-20}
WINDOW=${6:-30}
DB=movewatch_figures
OUT=$(mktemp -d)
count() { psql -h 127.0.0.1 -U postgres -d "$DB" -X -q -t -A -c 'SELECT count(*) FROM position_keys'; }
RUST_LOG=warn "$BIN" demo --cluster --nodes "$NODES" --vehicles "$VEHICLES" --interval "$INTERVAL" \
  --http-listen 127.0.0.1:0 --data-dir "$OUT" \
  --database-url "postgres://postgres@127.0.0.1:5432/$DB" >"$OUT/demo.out" 2>"$OUT/demo.err" &
DEMO=$!
trap 'kill -TERM $DEMO 2>/dev/null || true; wait $DEMO 2>/dev/null || true' EXIT
until grep -q '^Press Ctrl-C' "$OUT/demo.out"; do
  kill -0 $DEMO 2>/dev/null || { cat "$OUT/demo.out" "$OUT/demo.err" >&2; exit 1; }
  sleep 1
done
PIDS=$(sed -n 's/^  node \(n[0-9]\) *pid \([0-9]*\).*/\1=\2/p' "$OUT/demo.out")
# The demo registers the day's moves before its fleet publishes: wait for
# the first points, then the warm-up.
for _ in $(seq 1 240); do [ "$(count 2>/dev/null || echo 0)" -ge 1000 ] && break; sleep 1; done
sleep "$WARMUP"
a=$(count); t0=$(date +%s.%N)
sleep "$WINDOW"
b=$(count); t1=$(date +%s.%N)
echo "nodes=$NODES vehicles=$VEHICLES interval=$INTERVAL offered=$(awk "BEGIN{print $VEHICLES/$(echo "$INTERVAL" | sed 's/ms$//;')*1000}")/s"
awk -v a="$a" -v b="$b" -v t0="$t0" -v t1="$t1" 'BEGIN{printf "stored %d points in %.1f s: %.0f points/s\n", b-a, t1-t0, (b-a)/(t1-t0)}'
for p in $PIDS; do
  id=${p%%=*}; pid=${p##*=}
  echo "$id pid $pid $(grep -E 'VmRSS|VmHWM' /proc/$pid/status | tr -s ' \t' ' ' | tr '\n' ' ')"
done
for n in 1 2 3; do
  pid=$(cat "$(dirname "$0")/../.cluster/n$n/pid" 2>/dev/null || true)
  [ -n "$pid" ] && echo "broker mw$n pid $pid $(grep VmRSS /proc/$pid/status | tr -s ' \t' ' ')"
done
uptime
