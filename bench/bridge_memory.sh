#!/usr/bin/env bash
# What the cluster bridge costs a node in memory per connection, against a standalone node.
#
#   bench/bridge_memory.sh                  # this build, cluster and standalone, 5 runs each
#   BINS="/tmp/old/c10m target/release/c10m" RUNS=7 bench/bridge_memory.sh
#
# One run: Redis and NATS (JetStream) on loopback, node a and node b (one shard each, the
# defaults otherwise), CONNS WebSocket users (u0..) connecting to node b at RATE a second,
# PUBLISH_RATE user publishes a second through node a's admin API during a HOLD, so every
# one crosses the cluster; the load generator reads node b's RSS before the wave and at the
# end of the hold and reports the growth per connection. A standalone run is the same wave
# on one node without --registry and --bus (publishes through its own admin API).
# A binary built with --features alloc-census (src/census.rs) also reports node b's live heap
# growth per connection, from before the wave to the end of the hold.
# Builds (BINS) and modes (MODES) alternate run by run, so a noisy box spreads over all of
# them alike; the summary gives each one's median and range.
#
# Environment: BINS (c10m binaries, default target/release/c10m), LOADGEN
# (target/release/c10m-loadgen), MODES ("cluster standalone"), RUNS (5), CONNS (19000),
# RATE (2000 connects a second; a wave at full speed leaves a transient peak behind that
# spreads the figure by ±150 B run to run),
# PUBLISH_RATE (200), HOLD (15s), SHARDS (node b's shards, 1: one ring holds about 19,900
# connections, so more connections need more), SOURCES (source addresses for the load generator, default
# 127.0.0.2-127.0.0.9: each has its own ephemeral ports), OUT (a directory for the logs and
# JSON reports).
set -euo pipefail
cd "$(dirname "$0")/.."
BINS=${BINS:-target/release/c10m}
LOADGEN=${LOADGEN:-target/release/c10m-loadgen}
MODES=${MODES:-cluster standalone}
RUNS=${RUNS:-5}
CONNS=${CONNS:-19000}
RATE=${RATE:-2000}
SHARDS=${SHARDS:-1}
PUBLISH_RATE=${PUBLISH_RATE:-200}
HOLD=${HOLD:-15s}
SOURCES=${SOURCES:-127.0.0.2-127.0.0.9}
OUT=${OUT:-$(mktemp -d /tmp/c10m-bridge-mem.XXXXXX)}
REDIS_PORT=16391
NATS_PORT=14231
NATS_MON=18231
A_LISTEN=127.0.0.1:18310
A_ADMIN=127.0.0.1:18311
B_LISTEN=127.0.0.1:18320
B_ADMIN=127.0.0.1:18321
DEADLINE_S=30

for b in $BINS "$LOADGEN"; do
  [ -x "$b" ] || { echo "missing $b (cargo build --release --bins; cargo build --release -p c10m-loadgen)" >&2; exit 1; }
done
for t in redis-server nats-server curl; do
  command -v "$t" >/dev/null || { echo "missing $t (apt-get install redis-server nats-server curl)" >&2; exit 1; }
done
mkdir -p "$OUT"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
}
trap cleanup EXIT

# Waits (bounded) until a URL answers 200.
wait_http() {
  local url=$1 i
  for ((i = 0; i < DEADLINE_S * 10; i++)); do
    curl -fsS -o /dev/null "$url" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "no answer from $url in ${DEADLINE_S}s" >&2
  return 1
}

start_backends() {
  local dir=$OUT/js
  rm -rf "$dir"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    >"$OUT/redis.log" 2>&1 &
  PIDS+=($!)
  nats-server -a 127.0.0.1 -p "$NATS_PORT" -m "$NATS_MON" -js -sd "$dir" \
    >"$OUT/nats.log" 2>&1 &
  PIDS+=($!)
  wait_http "http://127.0.0.1:$NATS_MON/healthz?js-enabled-only=true"
  local i
  for ((i = 0; i < DEADLINE_S * 10; i++)); do
    redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "redis did not answer" >&2
  return 1
}

# Waits (bounded) until a process's RSS holds still for three one-second reads: a cluster
# node reads the history store and connects after its start, and growth measured from a
# start still settling comes out low by megabytes.
settle() {
  local pid=$1 last=-1 same=0 i rss
  for ((i = 0; i < DEADLINE_S && same < 3; i++)); do
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
    if [ "$rss" = "$last" ]; then same=$((same + 1)); else same=0; fi
    last=$rss
    sleep 1
  done
}

# run BIN MODE N: one wave; prints the bytes per connection.
run() {
  local bin=$1 mode=$2 n=$3 tag
  tag=$(echo "$bin" | md5sum | cut -c1-6)-$mode-$n
  local cluster_a=() cluster_b=() admin=$B_ADMIN
  if [ "$mode" = cluster ]; then
    start_backends
    local reg=redis://127.0.0.1:$REDIS_PORT bus=nats://127.0.0.1:$NATS_PORT
    cluster_a=(--node-id a --registry "$reg" --bus "$bus")
    cluster_b=(--node-id b --registry "$reg" --bus "$bus")
    "$bin" serve --listen "$A_LISTEN" --admin "$A_ADMIN" --shards 1 --no-pin \
      --control-socket off "${cluster_a[@]}" >"$OUT/$tag-a.log" 2>&1 &
    PIDS+=($!)
    wait_http "http://$A_ADMIN/healthz"
    admin=$A_ADMIN
  fi
  local census=$OUT/$tag.census
  C10M_ALLOC_CENSUS=$census "$bin" serve --listen "$B_LISTEN" --admin "$B_ADMIN" \
    --shards "$SHARDS" --no-pin --control-socket off "${cluster_b[@]}" >"$OUT/$tag-b.log" 2>&1 &
  local pid=$!
  PIDS+=($pid)
  wait_http "http://$B_ADMIN/healthz"
  settle "$pid"
  # A binary with the allocation census (--features alloc-census) writes its live heap every
  # half second: keep the one before the wave, and the last two during it (the older one is
  # from before the load generator's connections close).
  local keeper=
  if [ -f "$census" ]; then
    cp "$census" "$census.before"
    (for ((i = 0; i < 7200; i++)); do
      [ -f "$census.last" ] && mv "$census.last" "$census.prev"
      cp "$census" "$census.last" 2>/dev/null || true
      sleep 0.5
    done) &
    keeper=$!
  fi
  "$LOADGEN" --quiet --target "$B_LISTEN" --sources "$SOURCES" --admin "$admin" \
    --conns "$CONNS" --rate "$RATE" \
    --hold "$HOLD" --publish-rate "$PUBLISH_RATE" --publish-to user --server-pid "$pid" \
    --json "$OUT/$tag.json" >"$OUT/$tag.txt" 2>&1 || true
  [ -n "$keeper" ] && { kill "$keeper" 2>/dev/null || true; wait "$keeper" 2>/dev/null || true; }
  cleanup
  python3 - "$OUT/$tag.json" "$census" <<'PY'
import json, os, sys
r = json.load(open(sys.argv[1]))
m, g = r["memory"], r["messages"]
line = f'{m["server_bytes_per_conn"]:.0f} {m["conns_held"]} {g["delivered"]}/{g["expected"]}'
census = sys.argv[2]
if os.path.exists(census + ".prev"):
    live = lambda p: sum(int(l.split()[3]) for l in open(p))
    grown = live(census + ".prev") - live(census + ".before")
    line += f' live {grown / max(m["conns_held"], 1):.0f}'
print(line)
PY
}

echo "bridge memory: CONNS=$CONNS SHARDS=$SHARDS RATE=$RATE PUBLISH_RATE=$PUBLISH_RATE HOLD=$HOLD RUNS=$RUNS, logs in $OUT"
declare -A RESULTS
for ((n = 1; n <= RUNS; n++)); do
  for bin in $BINS; do
    for mode in $MODES; do
      line=$(run "$bin" "$mode" "$n")
      echo "  run $n  $bin  $mode: $line (B per connection, connections held, delivered/expected[, live heap B per connection])"
      RESULTS["$bin $mode"]+="${line%% *} "
    done
  done
done
echo "medians (B of node RSS growth per connection):"
for bin in $BINS; do
  for mode in $MODES; do
    python3 -c 'import statistics,sys; v=[float(x) for x in sys.argv[3:]]; print(f"  {sys.argv[1]}  {sys.argv[2]}: median {statistics.median(v):.0f} (range {min(v):.0f}-{max(v):.0f}, {len(v)} runs)")' \
      "$bin" "$mode" ${RESULTS["$bin $mode"]}
  done
done
