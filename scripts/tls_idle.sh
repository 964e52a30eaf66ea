#!/usr/bin/env bash
# What an idle TLS WebSocket connection costs the server beyond a plain one.
#
# Starts two servers side by side (one plain, one with --tls-cert), one shard each, opens N idle
# WebSocket connections to each (scripts/ws_hold.py, plain and --tls-ca), and prints each
# server's RSS growth per connection and the difference. Then it broadcasts BROADCASTS 32-byte
# messages to both and prints the server CPU time per delivery (per-connection encryption is
# the TLS part), from /proc/PID/stat (10 ms ticks: hence several broadcasts). The certificate is the test fixture
# (ECDSA P-256); clients negotiate what Python's OpenSSL prefers (TLS 1.3, AES-256-GCM).
#
#   scripts/tls_idle.sh [N]        N defaults to 10000 (one shard holds up to ~19,900 here)
set -euo pipefail
cd "$(dirname "$0")/.."

N=${1:-10000}
PROCS=2                    # client processes per server (each is limited to ~20,000 fds)
UP_S=300                   # the longest the clients may take to open their connections
BROADCASTS=20              # broadcasts for the CPU figure
python3 -c 'import asyncio, ssl' || { echo "tls_idle.sh: python3 with ssl is needed"; exit 1; }

cargo build --release -q -p c10m
BIN=target/release/c10m
FIX=tests/fixtures/tls
TMP=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT

# start NAME [flags]: starts a server, sets NAME_PID, NAME_PORT and NAME_ADMIN.
start() {
  local name=$1; shift
  "$BIN" serve --listen 127.0.0.1:0 --admin 127.0.0.1:0 --shards 1 --no-pin \
    --conns-per-shard-max $((N + 1000)) --ping-interval-ms 3600000 \
    --handshake-timeout-ms 120000 "$@" \
    >"$TMP/$name.out" 2>"$TMP/$name.err" &
  local pid=$!
  PIDS+=("$pid")
  for _ in $(seq 200); do
    grep -q '^c10m listening' "$TMP/$name.out" 2>/dev/null && break
    sleep 0.1
  done
  local line
  line=$(grep '^c10m listening' "$TMP/$name.out") || { cat "$TMP/$name.err"; exit 1; }
  printf -v "${name}_PID" '%s' "$pid"
  printf -v "${name}_PORT" '%s' "$(sed -E 's/.*clients=127.0.0.1:([0-9]+).*/\1/' <<<"$line")"
  printf -v "${name}_ADMIN" '%s' "$(sed -E 's/.*admin=127.0.0.1:([0-9]+).*/\1/' <<<"$line")"
}

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

# Waits until RSS stops moving (two samples 1 s apart within 0.2%, at most 15 s).
settled_rss_kb() {
  local prev cur
  prev=$(rss_kb "$1")
  for _ in $(seq 15); do
    sleep 1
    cur=$(rss_kb "$1")
    if (( (cur > prev ? cur - prev : prev - cur) * 500 <= cur )); then break; fi
    prev=$cur
  done
  echo "$cur"
}

connections() {
  curl -s "http://127.0.0.1:$1/metrics" | awk '/^c10m_connections\{/ {s += $2} END {print s + 0}'
}

# hold NAME SOURCE_BASE [ws_hold flags]: opens N connections to server NAME, waits until up.
hold() {
  local name=$1 base=$2; shift 2
  local port_var="${name}_PORT" per=$((N / PROCS))
  for i in $(seq 0 $((PROCS - 1))); do
    python3 scripts/ws_hold.py --port "${!port_var}" --source "127.0.0.$((base + i))" \
      --conns "$per" --first $((i * per)) --user-prefix "$name" --expect 0 \
      --hold-s 3600 "$@" >"$TMP/$name.hold$i" 2>&1 &
    PIDS+=("$!")
  done
  local deadline=$((SECONDS + UP_S))
  for i in $(seq 0 $((PROCS - 1))); do
    until grep -q '^up ' "$TMP/$name.hold$i"; do
      if (( SECONDS > deadline )) || grep -q '^timeout\|Error' "$TMP/$name.hold$i"; then
        echo "tls_idle.sh: $name clients did not come up:"; cat "$TMP/$name.hold$i"; exit 1
      fi
      sleep 0.5
    done
  done
}

start plain
start tls --tls-cert "$FIX/server.pem" --tls-key "$FIX/server.key"
plain_base=$(settled_rss_kb "$plain_PID")
tls_base=$(settled_rss_kb "$tls_PID")

hold plain 70
hold tls 80 --tls-ca "$FIX/ca.pem"
plain_after=$(settled_rss_kb "$plain_PID")
tls_after=$(settled_rss_kb "$tls_PID")
plain_conns=$(connections "$plain_ADMIN")
tls_conns=$(connections "$tls_ADMIN")
handshakes=$(curl -s "http://127.0.0.1:$tls_ADMIN/metrics" |
  awk '/^c10m_tls_handshakes_total\{/ {s += $2} END {print s + 0}')

# CPU ticks (user + system) of a process.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
metric() {
  curl -s "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 ~ "^"m"\\{" {s += $2} END {print s + 0}'
}
# broadcast NAME: BROADCASTS broadcasts, waits (bounded) until all are queued and sent; prints
# the server's CPU ticks spent.
broadcast() {
  local name=$1 admin_var="${1}_ADMIN" pid_var="${1}_PID"
  local admin=${!admin_var} pid=${!pid_var}
  local before want
  before=$(ticks "$pid")
  want=$(( $(metric "$admin" c10m_messages_delivered_total) + BROADCASTS * N ))
  for _ in $(seq "$BROADCASTS"); do
    curl -s -o /dev/null -X POST --data 'tls-idle-broadcast-32-bytes-abc.' \
      "http://127.0.0.1:$admin/publish?all"
  done
  for _ in $(seq 600); do
    (( $(metric "$admin" c10m_messages_delivered_total) >= want )) && break
    sleep 0.1
  done
  sleep 1   # the sends complete after queueing
  echo $(( $(ticks "$pid") - before ))
}

(( plain_conns == N && tls_conns == N )) ||
  { echo "tls_idle.sh: expected $N each, plain=$plain_conns tls=$tls_conns"; exit 1; }
awk -v n="$N" -v pb="$plain_base" -v pa="$plain_after" -v tb="$tls_base" -v ta="$tls_after" \
  -v hs="$handshakes" 'BEGIN {
  p = (pa - pb) * 1024 / n; t = (ta - tb) * 1024 / n
  printf "connections       %d plain, %d TLS (%d TLS handshakes)\n", n, n, hs
  printf "plain server RSS  %d -> %d KiB: %.0f B per idle connection\n", pb, pa, p
  printf "TLS server RSS    %d -> %d KiB: %.0f B per idle connection\n", tb, ta, t
  printf "TLS extra         %.0f B per idle connection\n", t - p
}'
hz=$(getconf CLK_TCK)
plain_ticks=$(broadcast plain)
tls_ticks=$(broadcast tls)
awk -v n="$N" -v b="$BROADCASTS" -v hz="$hz" -v p="$plain_ticks" -v t="$tls_ticks" 'BEGIN {
  d = n * b
  printf "broadcast CPU     %d x 32 B to %d each: plain %.2f us, TLS %.2f us per delivery\n", \
    b, n, p * 1e6 / hz / d, t * 1e6 / hz / d
}'
