#!/usr/bin/env bash
# Holds more connections in one c10m process than the open-files limit (20,000 here) allows
# for ordinary sockets, measures user-space memory per idle WebSocket connection, and checks
# that one publish to all reaches every connection.
#
#   scripts/c30k.sh [connections=30000] [processes=3] [shards=2]
#
# Traffic stays on loopback (127.0.0.10.. as client sources). Bounded: every wait has a
# deadline, and everything started here is stopped on exit.
set -euo pipefail
N=${1:-30000}
PROCS=${2:-3}
SHARDS=${3:-2}
PORT=${C10M_PORT:-18080}
ADMIN=${C10M_ADMIN:-18081}
cd "$(dirname "$0")/.."
cargo build --release -q -p c10m
BIN=target/release/c10m
LOG=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
slab_kib() { awk '/^Slab:/ {print $2}' /proc/meminfo; }
stat_conns() { curl -s --max-time 2 "http://127.0.0.1:$ADMIN/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["connections"])' 2>/dev/null || echo 0; }

"$BIN" serve --shards "$SHARDS" --listen "127.0.0.1:$PORT" --admin "127.0.0.1:$ADMIN" >"$LOG/server" 2>&1 &
SERVER=$!
pids+=("$SERVER")
for _ in $(seq 100); do grep -q listening "$LOG/server" && break; sleep 0.1; done
grep listening "$LOG/server"
sleep 1
RSS0=$(rss_kib "$SERVER"); SLAB0=$(slab_kib)

per=$((N / PROCS))
for i in $(seq 0 $((PROCS - 1))); do
  python3 scripts/ws_hold.py --port "$PORT" --source "127.0.0.$((10 + i))" --conns "$per" \
    --first $((i * per)) --expect 1 --hold-s 240 >"$LOG/hold$i" 2>&1 &
  pids+=("$!")
done
total=$((per * PROCS))
start=$(date +%s.%N)
deadline=$(( $(date +%s) + 180 ))
while [ "$(stat_conns)" -lt "$total" ]; do
  [ "$(date +%s)" -lt "$deadline" ] || { echo "only $(stat_conns) of $total connected"; cat "$LOG"/hold*; exit 1; }
  sleep 1
done
connected=$(date +%s.%N)
sleep 12  # let the handshake-timeout wheel entries fire, so the figure is the idle steady state
RSS1=$(rss_kib "$SERVER"); SLAB1=$(slab_kib)
curl -s "http://127.0.0.1:$ADMIN/stats" | python3 -c 'import json,sys; s=json.load(sys.stdin); print("per shard:", [x["connections"] for x in s["shards"]])'
echo "connections held: $(stat_conns) (fds open in server: $(ls /proc/$SERVER/fd | wc -l))"
echo "connect time: $(python3 -c "print(round($connected - $start, 1))") s"
echo "server RSS: ${RSS0} KiB idle -> ${RSS1} KiB with $total connections"
echo "user-space bytes per idle WebSocket connection: $(( (RSS1 - RSS0) * 1024 / total ))"
echo "kernel slab bytes per connection (both ends, whole host): $(( (SLAB1 - SLAB0) * 1024 / total ))"
pub=$(date +%s.%N)
curl -s -d "hello-all" "http://127.0.0.1:$ADMIN/publish?all"; echo
deadline=$(( $(date +%s) + 120 ))
for i in $(seq 0 $((PROCS - 1))); do
  until grep -qE "^(got|timeout)" "$LOG/hold$i"; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "holder $i did not finish"; break; }
    sleep 0.2
  done
done
done_t=$(date +%s.%N)
got=$(cat "$LOG"/hold* | awk '/^got/ {s += $2} END {print s + 0}')
echo "broadcast received by $got of $total connections in $(python3 -c "print(round($done_t - $pub, 2))") s"
curl -s "http://127.0.0.1:$ADMIN/metrics" | grep -E '^c10m_messages_(delivered|dropped)' | awk '{s[$1]+=$2} END {for (k in s) print k, s[k]}' | sort
[ "$got" -eq "$total" ]
