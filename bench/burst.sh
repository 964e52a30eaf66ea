#!/usr/bin/env bash
# Broadcast bursts, two c10m builds side by side: each repetition runs OLD then NEW (fresh
# server, 2 shards) with CONNS WebSocket connections from c10m-loadgen, and COUNT broadcasts
# of 32 B offered at RATE/s, faster than the connections drain them, so messages queue per
# connection. Prints per run the deliveries, the server's CPU (utime+stime, from /proc, from
# the moment every connection is up to the end) per delivery, and the fan-out times.
#
#   OLD=/tmp/c10m-old NEW=target/release/c10m bench/burst.sh     CONNS=5000 RATE=200 COUNT=200 REPS=3
#   RATE=2 COUNT=20 CONNS=15000 ...                               the benchmark's pace (no queueing)
#
# Build OLD from another commit, e.g.: git worktree add /tmp/old <commit> &&
# (cd /tmp/old && cargo build --release -p c10m) && OLD=/tmp/old/target/release/c10m.
# Loopback only; every run is under `timeout`.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
OLD=${OLD:?give OLD=path of the older c10m binary}
NEW=${NEW:-$root/target/release/c10m}
LG=$root/target/release/c10m-loadgen
CONNS=${CONNS:-5000}
RATE=${RATE:-200}
COUNT=${COUNT:-200}
REPS=${REPS:-3}
HOLD=${HOLD:-8s}
out=$(mktemp -d /tmp/c10m-burst.XXXXXX)
tck=$(getconf CLK_TCK)
for rep in $(seq "$REPS"); do
    for which in old new; do
        bin=$OLD
        [[ $which == new ]] && bin=$NEW
        port=$((19000 + RANDOM % 500 * 2))
        "$bin" serve --listen "127.0.0.1:$port" --admin "127.0.0.1:$((port + 1))" --shards 2 \
            >"$out/server.out" 2>"$out/server.err" &
        server=$!
        for _ in $(seq 100); do grep -q "c10m listening" "$out/server.out" && break; sleep 0.1; done
        log=$out/$which-$rep
        timeout 300 "$LG" --proto ws --target "127.0.0.1:$port" --admin "127.0.0.1:$((port + 1))" \
            --sources 127.0.0.2-127.0.0.11 --conns "$CONNS" --rate 0 --hold "$HOLD" --drain 5s \
            --publish-to all --publish-rate "$RATE" --publish-count "$COUNT" --payload-bytes 32 \
            --publish-delay 2s >"$log.out" 2>"$log.err" &
        lg=$!
        while ! grep -q " up $CONNS/$CONNS " "$log.err" 2>/dev/null; do
            kill -0 $lg 2>/dev/null || break
            sleep 0.05
        done
        c0=$(awk '{print $14 + $15}' "/proc/$server/stat")
        wait $lg
        c1=$(awk '{print $14 + $15}' "/proc/$server/stat")
        kill $server
        wait $server 2>/dev/null
        delivered=$(grep -oP 'delivered\s+\K[0-9]+' "$log.out")
        lost=$(grep -oP 'lost \K[0-9]+' "$log.out")
        fanout=$(grep 'fan-out send→last' "$log.out" | awk '{print $4 " / " $6}')
        published=$(grep -oP 'published\s+\K[0-9]+' "$log.out")
        awk -v r="$rep" -v w="$which" -v d="$delivered" -v l="$lost" -v p="$published" \
            -v c=$((c1 - c0)) -v t="$tck" -v f="$fanout" 'BEGIN {
            ms = c * 1000 / t
            printf "rep %d %-3s published %s delivered %s lost %s server CPU %d ms = %.2f us/delivery, fan-out send->last p50 / p99 %s\n",
                r, w, p, d, l, ms, (d > 0 ? ms * 1000 / d : 0), f }'
    done
done
echo "logs: $out"
