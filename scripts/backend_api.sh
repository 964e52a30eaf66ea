#!/usr/bin/env bash
# The backend API side by side: USERS connected users (one WebSocket each, --users u{n}),
# COUNT targeted publishes (random users) offered at RATE per second through
#   single     one POST /publish per message on a keep-alive connection,
#   pipelined  PIPELINE requests written back to back before their answers are read,
#   batch      POST /publish/batch of BATCH lines,
# each a fresh load-generator run against one server (SHARDS shards, its defaults otherwise).
# Per run: the publish rate achieved, deliveries, publish-to-delivery latency p50/p99, and
# server CPU per message ((run CPU - idle run CPU) / deliveries, utime+stime from
# /proc/PID/stat). During the idle run (the users held, nothing published) it also times
# PRESENCE_N keep-alive GET /presence?user= requests and ?users= requests of 1,000 names.
#
#   scripts/backend_api.sh                         USERS=100000 COUNT=100000 RATE=50000
#   USERS=20000 COUNT=20000 scripts/backend_api.sh a quick look
#   USERS=1000000 SHARDS=53 PRESENCE_ONLY=1 scripts/backend_api.sh
#                                                  presence and memory at a million (the idle
#                                                  run only; tcp_mem raised, restored on exit)
#
# All traffic on 127.0.0.0/8; every step under `timeout`. Prints a Markdown table; the raw
# reports stay in target/backend_api/.
set -euo pipefail
cd "$(dirname "$0")/.."
USERS=${USERS:-100000}
COUNT=${COUNT:-100000}
RATE=${RATE:-50000}
BATCH=${BATCH:-1000}
PIPELINE=${PIPELINE:-64}
SHARDS=${SHARDS:-6}
PRESENCE_N=${PRESENCE_N:-2000}
# 10,000 connections per source address, at least 10 sources.
SOURCES=${SOURCES:-127.0.0.2-127.0.0.$(( (USERS + 9999) / 10000 > 10 ? 1 + (USERS + 9999) / 10000 : 11 ))}
PRESENCE_ONLY=${PRESENCE_ONLY:-0}
out=target/backend_api
rm -rf "$out"
mkdir -p "$out"
cargo build --release --quiet -p c10m -p c10m-loadgen
bin=target/release/c10m
loadgen=target/release/c10m-loadgen
log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

"$bin" serve --shards "$SHARDS" --listen 127.0.0.1:0 --admin 127.0.0.1:0 --no-pin \
    >"$out/server.log" 2>&1 &
server=$!
saved_tcp_mem=$(cat /proc/sys/net/ipv4/tcp_mem)
trap 'kill -TERM $server 2>/dev/null || true; wait $server 2>/dev/null || true; echo "$saved_tcp_mem" >/proc/sys/net/ipv4/tcp_mem 2>/dev/null || true' EXIT
if [ "$USERS" -gt 200000 ]; then
    # Millions of sockets: tcp_mem (pages) as scripts/c1m.sh sets it; restored on exit.
    pages=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 4 ))
    echo "$((pages / 8)) $((pages / 6)) $((pages / 4))" >/proc/sys/net/ipv4/tcp_mem
fi
for _ in $(seq 200); do grep -q '^c10m listening' "$out/server.log" && break; sleep 0.05; done
line=$(grep -m1 '^c10m listening' "$out/server.log") || { cat "$out/server.log" >&2; exit 1; }
client=$(sed -n 's/.* clients=\([^ ,]*\).*/\1/p' <<<"$line")
admin=$(sed -n 's/.* admin=\([^ ,]*\).*/\1/p' <<<"$line")
log "server $server: $line"

# Hold long enough for the ramp and the slowest mode (single requests, a few thousand/s).
hold=$((USERS / 5000 + COUNT / 2000 + 10))
base=(--target "$client" --admin "$admin" --sources "$SOURCES" --conns "$USERS" --rate 0
    --connect-timeout 30s --users 'u{n}' --server-pid "$server" --quiet --drain 3s)

run() {
    local tag=$1
    shift
    local c0 c1
    c0=$(cpu_ticks "$server")
    timeout $((hold + 120)) "$loadgen" run "${base[@]}" --json "$out/$tag.json" "$@" \
        >"$out/$tag.txt" 2>&1 || log "$tag: loadgen exited with $?"
    c1=$(cpu_ticks "$server")
    echo "$tag $((c1 - c0))" >>"$out/cpu.txt"
}

# The idle run: hold the users, time presence requests meanwhile.
log "idle: $USERS users"
run idle --hold "$((hold))s" &
idle=$!
for _ in $(seq $((600 + USERS / 1000))); do
    n=$(curl -s "http://$admin/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["connections"])' 2>/dev/null || echo 0)
    [[ $n -ge $USERS ]] && break
    sleep 0.5
done
log "presence: $PRESENCE_N requests with $n connections up"
python3 - "$admin" "$USERS" "$PRESENCE_N" >"$out/presence.txt" <<'PY'
import http.client, random, statistics, sys, time
host, port = sys.argv[1].rsplit(":", 1)
users, n = int(sys.argv[2]), int(sys.argv[3])
c = http.client.HTTPConnection(host, int(port), timeout=10)
def timed(path):
    t = time.perf_counter()
    c.request("GET", path)
    r = c.getresponse()
    body = r.read()
    assert r.status == 200, (path, r.status, body)
    return (time.perf_counter() - t) * 1e6, body
one = sorted(timed(f"/presence?user=u{random.randrange(users)}")[0] for _ in range(n))
names = lambda: ",".join(f"u{random.randrange(users)}" for _ in range(1000))
many = sorted(timed(f"/presence?users={names()}")[0] for _ in range(max(n // 20, 10)))
q = lambda v, p: v[min(len(v) - 1, int(len(v) * p))]
print(f"user  p50 {q(one, .5):.0f} us  p99 {q(one, .99):.0f} us  ({len(one)} requests)")
print(f"users p50 {q(many, .5):.0f} us  p99 {q(many, .99):.0f} us  ({len(many)} requests of 1,000 names)")
PY
cat "$out/presence.txt" >&2
wait "$idle" || true
if [ "$PRESENCE_ONLY" = 1 ]; then
    python3 - "$out" "$USERS" <<'PY'
import json, sys
out, users = sys.argv[1], int(sys.argv[2])
r = json.load(open(f"{out}/idle.json"))
print(f"{users:,} users connected (idle run): established {r['connections']['established']:,}")
bpc = r["memory"].get("server_bytes_per_conn")
if bpc:
    print(f"server user memory per connection: {bpc:.0f} B")
print("presence:")
print(open(f"{out}/presence.txt").read())
PY
    exit 0
fi

pub=(--publish-to user --publish-rate "$RATE" --publish-count "$COUNT" --publish-delay 1s
    --payload-bytes 64 --hold "${hold}s")
log "single"
run single "${pub[@]}"
log "pipelined $PIPELINE"
run pipelined "${pub[@]}" --publish-pipeline "$PIPELINE"
log "batch $BATCH"
run batch "${pub[@]}" --publish-batch "$BATCH"

python3 - "$out" "$USERS" "$COUNT" "$RATE" <<'PY'
import json, os, sys
out, users, count, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
hz = os.sysconf("SC_CLK_TCK")
cpu = dict(l.split() for l in open(f"{out}/cpu.txt"))
idle = int(cpu["idle"])
print(f"{users:,} users connected, {count:,} targeted publishes offered at {rate:,}/s (medians of one run each)\n")
print("| mode | publishes/s | delivered / lost | latency p50 | latency p99 | server CPU µs/message |")
print("|---|---:|---:|---:|---:|---:|")
for tag in ("single", "pipelined", "batch"):
    r = json.load(open(f"{out}/{tag}.json"))
    m, lat = r["messages"], r["latency_us"]
    per = max(int(cpu[tag]) - idle, 0) / hz * 1e6 / max(m["delivered"], 1)
    rate_s = m["accepted"] / max(m.get("publish_s", 0), 1e-3)
    print(f"| {tag} | {rate_s:,.0f} | {m['delivered']:,} / {m['lost']:,} | {lat['p50'] / 1000:.1f} ms | {lat['p99'] / 1000:.1f} ms | {per:.1f} |")
idle_r = json.load(open(f"{out}/idle.json"))
bpc = idle_r["memory"].get("server_bytes_per_conn")
if bpc:
    print(f"\nserver user memory per connection (idle run): {bpc:.0f} B")
print("\npresence during the idle run:")
print(open(f"{out}/presence.txt").read())
PY
