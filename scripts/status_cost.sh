#!/usr/bin/env bash
# What an open status page costs the server: CPU time (all threads, from
# /proc/PID/task/*/schedstat, nanoseconds) and RSS over alternating windows with no page and
# with one status stream (GET /status/events, what the page reads), side by side in one run;
# prints each window, the medians, and the stream's bytes per hour.
#
#   WINDOW_S=30 ROUNDS=3 scripts/status_cost.sh
#
# The server runs on its defaults (loopback ports chosen by the kernel). Loopback only; every
# wait is bounded; everything started here is stopped on exit.
set -euo pipefail
WINDOW_S=${WINDOW_S:-30}
ROUNDS=${ROUNDS:-3}
cd "$(dirname "$0")/.."
cargo build --release -q -p c10m
DIR=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

target/release/c10m serve --listen 127.0.0.1:0 --admin 127.0.0.1:0 --control-socket off \
  >"$DIR/server.log" 2>&1 &
SERVER=$!
pids+=("$SERVER")
for _ in $(seq 100); do grep -q '^c10m listening' "$DIR/server.log" && break; sleep 0.1; done
ADMIN=$(sed -n 's/^c10m listening.* admin=\([^ ,]*\).*/\1/p' "$DIR/server.log")
[ -n "$ADMIN" ] || { cat "$DIR/server.log"; exit 1; }

cpu_ns() { cat /proc/"$SERVER"/task/*/schedstat | awk '{s += $1} END {print s}'; }
rss_kib() { awk '/^VmRSS/ {print $2}' /proc/"$SERVER"/status; }

printf '%-8s %6s %12s %10s %12s\n' window s cpu_ms rss_kib stream_bytes
: >"$DIR/none"
: >"$DIR/page"
for r in $(seq "$ROUNDS"); do
  for mode in none page; do
    stream=
    if [ "$mode" = page ]; then
      curl -sN --max-time $((WINDOW_S + 5)) "http://$ADMIN/status/events" >"$DIR/stream" &
      stream=$!
      pids+=("$stream")
      for _ in $(seq 50); do [ -s "$DIR/stream" ] && break; sleep 0.1; done
    fi
    c0=$(cpu_ns)
    b0=$(stat -c %s "$DIR/stream" 2>/dev/null || echo 0)
    sleep "$WINDOW_S"
    c1=$(cpu_ns)
    b1=$(stat -c %s "$DIR/stream" 2>/dev/null || echo 0)
    bytes=0
    if [ -n "$stream" ]; then
      bytes=$((b1 - b0))
      kill "$stream" 2>/dev/null || true
      wait "$stream" 2>/dev/null || true
    fi
    ms=$(awk -v a="$c0" -v b="$c1" 'BEGIN {printf "%.2f", (b - a) / 1e6}')
    printf '%-8s %6s %12s %10s %12s\n' "$mode" "$WINDOW_S" "$ms" "$(rss_kib)" "$bytes"
    echo "$ms $bytes" >>"$DIR/$mode"
  done
done
median() { sort -n | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
none=$(cut -d' ' -f1 "$DIR/none" | median)
page=$(cut -d' ' -f1 "$DIR/page" | median)
bytes=$(cut -d' ' -f2 "$DIR/page" | median)
awk -v n="$none" -v p="$page" -v b="$bytes" -v w="$WINDOW_S" 'BEGIN {
  printf "median CPU per %d s: no page %.2f ms, one page %.2f ms (+%.2f ms, %.4f %% of one core)\n",
    w, n, p, p - n, (p - n) / (w * 10)
  printf "one page for an hour: +%.0f ms of CPU, %.1f MiB sent over the admin connection\n",
    (p - n) * 3600 / w, b * 3600 / w / 1048576
}'
