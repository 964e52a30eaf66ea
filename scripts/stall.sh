#!/usr/bin/env bash
# The server process stopped in the middle of a run: does it blame its clients for its stop?
#
#   scripts/stall.sh [connections=100000] [stop_s=15]
#
# Starts c10m with its default liveness settings (30 s pings, 10 s pong timeout, 120 s idle
# timeout; only shards, listeners and ring sizes are set, as scripts/c1m.sh does), opens
# N idle WebSocket connections with c10m-loadgen, holds them for a ping interval, stops the
# server with SIGSTOP for stop_s seconds, continues it, holds for another two ping intervals
# and prints the server's closes by reason before and after the stop, its liveness counters
# (uncredited stall time, postponed timeouts, guard engagements) and what the load generator
# saw. Bounded: the load generator's hold ends the run; everything started here is stopped
# on exit. C10M_BIN and LOADGEN_BIN choose other binaries (to compare builds side by side).
set -euo pipefail
N=${1:-100000}
STOP_S=${2:-15}
cd "$(dirname "$0")/.."
BIN=${C10M_BIN:-target/release/c10m}
LG=${LOADGEN_BIN:-target/release/c10m-loadgen}
[ -n "${C10M_BIN:-}${LOADGEN_BIN:-}" ] || cargo build --release -q -p c10m -p c10m-loadgen
BASE_PORT=${STALL_BASE_PORT:-19500}
ADMIN=127.0.0.1:$((BASE_PORT + 99))
OUT=$(mktemp -d /tmp/stall.XXXXXX)
SHARDS=$(( (N + 17999) / 18000 ))
SOURCES=$(( (N + 9999) / 10000 + 1 ))
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "logs in $OUT"
}
trap cleanup EXIT
T0=$(date +%s)
say() { printf '[%4ds] %s\n' $(($(date +%s) - T0)) "$*"; }
closes() {
  curl -s --max-time 10 "http://$ADMIN/metrics" | awk -F'reason="' '/^c10m_closes_total/ {
    split($2, a, "\""); n = $0; sub(/.* /, "", n); s[a[1]] += n }
    END { out = ""; for (k in s) if (s[k]) out = out " " k "=" s[k]; print (out == "" ? " none" : out) }'
}
counters() {
  curl -s --max-time 10 "http://$ADMIN/metrics" | awk '
    /^c10m_(liveness_uncredited_ms_total|liveness_postponed_total|mass_timeout_guards_total|closes_reset_total|liveness_draining_total)\{/ {
      n = $0; sub(/.* /, "", n); name = $1; sub(/\{.*/, "", name); s[name] += n }
    END { for (k in s) printf " %s=%d", k, s[k]; print "" }'
}
held() { curl -s --max-time 10 "http://$ADMIN/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["connections"])'; }

"$BIN" serve --shards "$SHARDS" --listen "127.0.0.1:$BASE_PORT" --listen "127.0.0.1:$((BASE_PORT + 1))" \
  --admin "$ADMIN" --ring-entries 256 --recv-buffers 64 --mesh-ring-entries 64 \
  --listen-backlog 16384 --no-pin >"$OUT/server.log" 2>&1 &
SERVER=$!
pids+=("$SERVER")
for _ in $(seq 100); do grep -q listening "$OUT/server.log" && break; sleep 0.1; done
grep -q listening "$OUT/server.log" || { cat "$OUT/server.log"; exit 1; }
RAMP_S=$(( N / 8000 + 5 ))
HOLD_S=$(( 30 + STOP_S + 60 ))
"$LG" --proto ws --target "127.0.0.1:$BASE_PORT" --target "127.0.0.1:$((BASE_PORT + 1))" \
  --admin "$ADMIN" --sources "127.0.0.2-127.0.0.$((1 + SOURCES))" --conns "$N" --rate 8000 \
  --hold "${HOLD_S}s" --json "$OUT/loadgen.json" >"$OUT/loadgen.txt" 2>"$OUT/loadgen.progress" &
LGP=$!
pids+=("$LGP")
say "c10m $SHARDS shards, default liveness settings; loadgen $N connections, hold ${HOLD_S}s"
for _ in $(seq $((RAMP_S * 2 + 30))); do
  [ "$(held)" -ge "$N" ] && break
  sleep 1
done
say "ramp: server holds $(held)"
sleep 30
say "before the stop: held $(held); closes:$(closes);$(counters)"
kill -STOP "$SERVER"
say "server stopped (SIGSTOP) for ${STOP_S}s"
sleep "$STOP_S"
kill -CONT "$SERVER"
say "server continued (SIGCONT)"
for k in 1 2 3 4 5 6; do
  sleep 10
  say "+$((k * 10))s after: held $(held); closes:$(closes);$(counters)"
done
wait "$LGP" || true
say "loadgen: $(grep -E 'failures|established|closed' "$OUT/loadgen.txt" | tr -s ' ' | head -3 | tr '\n' ';')"
