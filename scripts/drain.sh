#!/usr/bin/env bash
# Measures a paced drain: N idle WebSocket connections (spread over several client processes,
# each limited to ~19,000 descriptors here), then `POST /drain?rate=R`; prints how long the
# drain took and how many connections received a goaway before their close.
#
#   scripts/drain.sh [connections=20000] [rate=2000] [processes=2] [shards=2]
#
# Loopback only; every wait is bounded; everything started here is stopped on exit.
set -euo pipefail
N=${1:-20000}
RATE=${2:-2000}
PROCS=${3:-2}
SHARDS=${4:-2}
cd "$(dirname "$0")/.."
cargo build --release -q -p c10m
LOG=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

target/release/c10m serve --shards "$SHARDS" --listen 127.0.0.1:0 --admin 127.0.0.1:0 \
  --shutdown-timeout-ms 120000 >"$LOG/server" 2>&1 &
SERVER=$!
pids+=("$SERVER")
for _ in $(seq 100); do grep -q listening "$LOG/server" && break; sleep 0.1; done
CLIENT_PORT=$(sed -n 's/.*clients=127.0.0.1:\([0-9]*\).*/\1/p' "$LOG/server")
ADMIN=$(sed -n 's/.*admin=\(127.0.0.1:[0-9]*\).*/\1/p' "$LOG/server")
stat_conns() { curl -s --max-time 2 "http://$ADMIN/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["connections"])' 2>/dev/null || echo 0; }

per=$((N / PROCS))
for i in $(seq 0 $((PROCS - 1))); do
  python3 scripts/ws_hold.py --port "$CLIENT_PORT" --source "127.0.0.$((60 + i))" --conns "$per" \
    --first $((i * per)) --until-close --hold-s 300 >"$LOG/hold$i" 2>&1 &
  pids+=("$!")
done
total=$((per * PROCS))
deadline=$(( $(date +%s) + 180 ))
while [ "$(stat_conns)" -lt "$total" ]; do
  [ "$(date +%s)" -lt "$deadline" ] || { echo "only $(stat_conns) of $total connected"; exit 1; }
  sleep 1
done
echo "connections held: $total"
start=$(python3 -c 'import time; print(time.time())')
curl -s -X POST "http://$ADMIN/drain?rate=$RATE"; echo
deadline=$(( $(date +%s) + 240 ))
for i in $(seq 0 $((PROCS - 1))); do
  until grep -qE "^(closes|timeout)" "$LOG/hold$i"; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "holder $i did not finish"; cat "$LOG/hold$i"; exit 1; }
    sleep 0.5
  done
done
python3 - "$start" "$total" "$RATE" "$LOG"/hold* <<'PY'
import sys
start, total, rate = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
closes = goaways = 0
first, last = float("inf"), 0.0
for path in sys.argv[4:]:
    for line in open(path):
        if line.startswith("closes"):
            f = line.split()
            closes += int(f[1]); goaways += int(f[3])
            first = min(first, float(f[5])); last = max(last, float(f[7]))
print(f"closes received: {closes} of {total}; with a goaway: {goaways}")
print(f"drain took {last - start:.2f} s (first goaway after {first - start:.2f} s); "
      f"expected about {total / rate:.1f} s at {rate}/s")
PY
for _ in $(seq 150); do kill -0 "$SERVER" 2>/dev/null || break; sleep 0.1; done
kill -0 "$SERVER" 2>/dev/null && echo "server still running after the drain" || echo "server exited after the drain"
