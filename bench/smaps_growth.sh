#!/usr/bin/env bash
# Which mappings of a server grow with a wave of idle WebSockets: /proc/PID/smaps Rss per
# mapping, idle against WAIT seconds after CONNS connections are up; the total and the ten
# that grew most.
#
#   bench/smaps_growth.sh BIN [SERVER FLAGS...]
#   CONNS=15000 SHARDS=2 WAIT=5 bench/smaps_growth.sh target/release/c10m
#
# One c10m-loadgen (--rate 0) on loopback; every wait is bounded; everything stops on exit.
set -euo pipefail
CONNS=${CONNS:-15000}
SHARDS=${SHARDS:-2}
WAIT=${WAIT:-5}
BIN=${1:?usage: bench/smaps_growth.sh BIN [SERVER FLAGS...]}
shift
cd "$(dirname "$0")/.."
loadgen=target/release/c10m-loadgen
[ -x "$loadgen" ] || cargo build --release -q -p c10m-loadgen
tmp=$(mktemp -d)
"$BIN" serve --shards "$SHARDS" --listen 127.0.0.1:9100 --admin 127.0.0.1:9101 "$@" >/dev/null 2>&1 &
srv=$!
trap 'kill -INT $srv 2>/dev/null || true; kill ${lg:-} 2>/dev/null || true; wait 2>/dev/null; rm -rf "$tmp"' EXIT
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/9101) 2>/dev/null && break; sleep 0.1; done
sleep 1
snap() { awk '/^[0-9a-f]+-[0-9a-f]+ / {m = $1 " " $6} /^Rss:/ {print m, $2}' "/proc/$srv/smaps"; }
snap >"$tmp/before"
"$loadgen" --target 127.0.0.1:9100 --admin 127.0.0.1:9101 --sources 127.0.0.2-127.0.0.6 \
  --conns "$CONNS" --rate 0 --hold $((WAIT + 30))s --connect-timeout 10s >/dev/null 2>"$tmp/lg" &
lg=$!
for _ in $(seq 600); do grep -qE " up $CONNS/$CONNS " "$tmp/lg" && break; sleep 0.1; done
sleep "$WAIT"
snap >"$tmp/after"
awk 'FNR == NR {a[$1 " " $2] = $NF; next} {k = $1 " " $2; d = $NF - a[k]; t += d; print d, k}
     END {print t, "total (KiB)"}' "$tmp/before" "$tmp/after" | sort -rn | head -11
