#!/usr/bin/env bash
# A server's user-space memory per idle connection, sampled 2, 5, 10 and 20 s after the
# connect ramp ends (bench/run.sh reads it once, 2 s after): is a figure transient or
# lasting? CONNS WebSockets from c10m-loadgen, offered at once, on loopback.
#
#   bench/idle_memory.sh BIN [SERVER FLAGS...]
#   CONNS=100000 SHARDS=6 bench/idle_memory.sh target/release/c10m --home-placement off
#
# A binary built with the allocation census (cargo build --release --features alloc-census
# --target-dir target/census) also gets its live heap per connection printed beside each
# sample ("live N B"): what is left of the figure is what the allocator keeps resident.
#
# Every wait is bounded; the server and the loadgen are stopped on exit.
set -euo pipefail
CONNS=${CONNS:-100000}
SHARDS=${SHARDS:-$(( (CONNS + 18999) / 19000 ))}
BIN=${1:?usage: bench/idle_memory.sh BIN [SERVER FLAGS...]}
shift
cd "$(dirname "$0")/.."
loadgen=target/release/c10m-loadgen
[ -x "$loadgen" ] || cargo build --release -q -p c10m-loadgen
err=$(mktemp)
census=$(mktemp -u)
C10M_ALLOC_CENSUS=$census "$BIN" serve --shards "$SHARDS" --listen 127.0.0.1:9100 --admin 127.0.0.1:9101 "$@" >/dev/null 2>&1 &
srv=$!
trap 'kill -INT $srv 2>/dev/null || true; kill ${lg:-} 2>/dev/null || true; wait 2>/dev/null; rm -f "$err" "$census"' EXIT
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/9101) 2>/dev/null && break; sleep 0.1; done
rss() { awk '/^VmRSS:/ {print $2}' "/proc/$srv/status"; }
# The census file's live usable bytes (0 without the census).
live() { [ -f "$census" ] && awk '{n += $4} END {print n}' "$census" || echo 0; }
sleep 1
rss0=$(rss)
live0=$(live)
"$loadgen" --target 127.0.0.1:9100 --admin 127.0.0.1:9101 --sources 127.0.0.2-127.0.0.11 \
  --conns "$CONNS" --rate 0 --hold 25s --connect-timeout 10s >/dev/null 2>"$err" &
lg=$!
for _ in $(seq 600); do grep -qE " up $CONNS/$CONNS " "$err" && break; sleep 0.1; done
line="$BIN $*:"
at=0
for t in 2 5 10 20; do
  sleep $((t - at)); at=$t
  sample="+${t}s $(( ($(rss) - rss0) * 1024 / CONNS )) B"
  [ -f "$census" ] && sample="$sample (live $(( ($(live) - live0) / CONNS )) B)"
  line="$line $sample"
done
echo "$line"
wait "$lg" || true
