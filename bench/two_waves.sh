#!/usr/bin/env bash
# A server's resident memory idle, after a first wave of CONNS WebSockets and after a second
# one beside it: the second wave's growth is the cost of a connection once the first has
# warmed what a shard keeps whatever it holds (its receive pool, its tables).
#
#   bench/two_waves.sh BIN [SERVER FLAGS...]
#   CONNS=50000 SHARDS=6 bench/two_waves.sh target/release/c10m
#
# Each wave is one c10m-loadgen (--rate 0) from its own source addresses on loopback; every
# sample is VmRSS 5 s after a wave is up. A binary built with the allocation census
# (cargo build --release --features alloc-census --target-dir target/census) also gets the
# live heap per connection of each wave. Every wait is bounded; everything stops on exit.
set -euo pipefail
CONNS=${CONNS:-50000}
SHARDS=${SHARDS:-6}
BIN=${1:?usage: bench/two_waves.sh BIN [SERVER FLAGS...]}
shift
cd "$(dirname "$0")/.."
loadgen=target/release/c10m-loadgen
[ -x "$loadgen" ] || cargo build --release -q -p c10m-loadgen
census=$(mktemp -u)
logs=$(mktemp -d)
C10M_ALLOC_CENSUS=$census "$BIN" serve --shards "$SHARDS" --listen 127.0.0.1:9100 --admin 127.0.0.1:9101 "$@" >/dev/null 2>&1 &
srv=$!
trap 'kill -INT $srv 2>/dev/null || true; kill ${l1:-} ${l2:-} 2>/dev/null || true; wait 2>/dev/null; rm -rf "$census" "$logs"' EXIT
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/9101) 2>/dev/null && break; sleep 0.1; done
rss() { awk '/^VmRSS:/ {print $2}' "/proc/$srv/status"; }
huge() { awk '/^AnonHugePages:/ {print $2}' "/proc/$srv/smaps_rollup"; }
live() { [ -f "$census" ] && awk '{n += $4} END {print n}' "$census" || echo 0; }
wave() { # wave N SOURCES HOLD: starts a loadgen and waits until all its connections are up
    "$loadgen" --target 127.0.0.1:9100 --admin 127.0.0.1:9101 --sources "$2" --conns "$CONNS" \
        --rate 0 --hold "$3" --connect-timeout 10s >/dev/null 2>"$logs/$1" &
    for _ in $(seq 600); do grep -qE " up $CONNS/$CONNS " "$logs/$1" && return; sleep 0.1; done
    echo "wave $1: not every connection came up" >&2
}
sleep 1
r0=$(rss) v0=$(live)
echo "idle: ${r0} KiB ($(huge) KiB in huge pages)"
wave 1 127.0.0.2-127.0.0.6 60s; l1=$!
sleep 5
r1=$(rss) v1=$(live)
echo "first $CONNS: ${r1} KiB, $(( (r1 - r0) * 1024 / CONNS )) B per connection (live $(( (v1 - v0) / CONNS )) B)"
wave 2 127.0.0.7-127.0.0.11 40s; l2=$!
sleep 5
r2=$(rss) v2=$(live)
echo "second $CONNS: ${r2} KiB, $(( (r2 - r1) * 1024 / CONNS )) B per connection (live $(( (v2 - v1) / CONNS )) B)"
