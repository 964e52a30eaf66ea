#!/usr/bin/env bash
# Where a broadcast delivery's server CPU goes: runs c10m (release, 2 shards) with CONNS
# WebSocket connections from c10m-loadgen on loopback, publishes COUNT broadcasts of 32 B at
# RATE/s, records the server with `perf record -g` for PERF_S seconds of the publishing, and
# prints the split by privilege level and the inclusive share of the kernel paths that matter.
#
#   bench/profile.sh                          CONNS=15000 RATE=5 COUNT=100 PERF_S=12
#   BIN=/path/to/c10m bench/profile.sh         another build (e.g. an older commit's)
#
# Needs perf (apt-get install linux-perf) and root (or kernel.perf_event_paranoid <= 1).
# Everything runs on 127.0.0.1 and stops by itself (loadgen under `timeout`).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
BIN=${BIN:-$root/target/release/c10m}
LG=$root/target/release/c10m-loadgen
CONNS=${CONNS:-15000}
RATE=${RATE:-5}
COUNT=${COUNT:-100}
PERF_S=${PERF_S:-12}
PORT=${PORT:-18080}
out=${OUT:-$(mktemp -d /tmp/c10m-profile.XXXXXX)}
command -v perf >/dev/null || { echo "bench/profile.sh: perf is missing (apt-get install linux-perf)"; exit 1; }
[[ -x $BIN && -x $LG ]] || (cd "$root" && cargo build --release -q -p c10m -p c10m-loadgen)

"$BIN" serve --listen "127.0.0.1:$PORT" --admin "127.0.0.1:$((PORT + 1))" --shards 2 \
    >"$out/server.out" 2>"$out/server.err" &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q "c10m listening" "$out/server.out" && break; sleep 0.1; done
hold=$((COUNT / RATE + 10))
timeout $((hold + 60)) "$LG" --proto ws --target "127.0.0.1:$PORT" --admin "127.0.0.1:$((PORT + 1))" \
    --sources 127.0.0.2-127.0.0.11 --conns "$CONNS" --rate 0 --hold "${hold}s" --drain 3s \
    --publish-to all --publish-rate "$RATE" --publish-count "$COUNT" --payload-bytes 32 \
    --publish-delay 3s --server-pid "$server" >"$out/loadgen.out" 2>"$out/loadgen.err" &
lg=$!
while ! grep -q " up $CONNS/$CONNS " "$out/loadgen.err" 2>/dev/null; do
    kill -0 $lg 2>/dev/null || break
    sleep 0.1
done
sleep 3 # into the publishing
perf record -F 2000 -g -p "$server" -o "$out/perf.data" -- sleep "$PERF_S" 2>"$out/perf.err"
wait $lg || true
grep -E "delivered|fan-out send" "$out/loadgen.out"
echo "--- samples by privilege level"
perf report -i "$out/perf.data" --no-children --sort dso --stdio 2>/dev/null | grep -E '^ +[0-9.]+%' | head -5
echo "--- inclusive share of the send path and what runs inside it"
perf report -i "$out/perf.data" --children --sort symbol --stdio -g none 2>/dev/null |
    grep -E '\] (io_send|tcp_sendmsg_locked|tcp_write_xmit|__dev_queue_xmit|handle_softirqs|tcp_v4_rcv|__release_sock|tcp_ack|sock_def_readable|__alloc_skb|io_submit_sqes)\b' |
    awk '{print "  " $1 "  " $4}'
echo "--- user space, top symbols"
perf report -i "$out/perf.data" --no-children --sort symbol --stdio -g none 2>/dev/null |
    grep -E '\[\.\]' | head -8 | sed -E 's/^ +([0-9.]+%) +\[\.\] +/  \1  /; s/ +-? +-? *$//' | cut -c1-110
echo "perf data and logs: $out"
