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
#   USERS=10000 SHARDS=2 CLUSTER=1 scripts/backend_api.sh
#                                                  presence on a two-node cluster (idle run
#                                                  only): Redis and NATS on loopback, node one
#                                                  holds USERS, node two USERS/2 of the same
#                                                  names (TWO_USERS), presence asked at one
#
# TOPICS (loadgen --topics patterns, e.g. 't{n%100}'; CLUSTER=1 defaults to that) also times
# ?topic= requests on a random topic t0..t99.
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
CLUSTER=${CLUSTER:-0}
TWO_USERS=${TWO_USERS:-$((USERS / 2))}
if [ "$CLUSTER" = 1 ]; then
    PRESENCE_ONLY=1
    TOPICS=${TOPICS-'t{n%100}'}
fi
TOPICS=${TOPICS:-}
out=target/backend_api
rm -rf "$out"
mkdir -p "$out"
cargo build --release --quiet -p c10m -p c10m-loadgen
bin=${CARGO_TARGET_DIR:-target}/release/c10m
loadgen=${CARGO_TARGET_DIR:-target}/release/c10m-loadgen
log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# Started in the background, stopped on exit.
others=()
cluster_args=()
if [ "$CLUSTER" = 1 ]; then
    rport=$(free_port) nport=$(free_port)
    redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no >"$out/redis.log" 2>&1 &
    others+=($!)
    # JetStream: the nodes keep their history in it (src/cluster/store.rs).
    nats-server -a 127.0.0.1 -p "$nport" -js -sd "$out/jetstream" >"$out/nats.log" 2>&1 &
    others+=($!)
    for _ in $(seq 100); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
    cluster_args=(--registry "redis://127.0.0.1:$rport" --bus "nats://127.0.0.1:$nport")
fi
node_of() { if [ "$CLUSTER" = 1 ]; then echo --node-id "$1" "${cluster_args[@]}"; fi; }
"$bin" serve --shards "$SHARDS" --listen 127.0.0.1:0 --admin 127.0.0.1:0 --no-pin $(node_of one) \
    >"$out/server.log" 2>&1 &
server=$!
saved_tcp_mem=$(cat /proc/sys/net/ipv4/tcp_mem)
stop_all() {
    kill -TERM $server "${others[@]}" 2>/dev/null || true
    wait $server "${others[@]}" 2>/dev/null || true
    echo "$saved_tcp_mem" >/proc/sys/net/ipv4/tcp_mem 2>/dev/null || true
}
trap stop_all EXIT
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
if [ "$CLUSTER" = 1 ]; then
    "$bin" serve --shards "$SHARDS" --listen 127.0.0.1:0 --admin 127.0.0.1:0 --no-pin \
        $(node_of two) >"$out/server2.log" 2>&1 &
    two=$!
    others=($two "${others[@]}")
    for _ in $(seq 200); do grep -q '^c10m listening' "$out/server2.log" && break; sleep 0.05; done
    line2=$(grep -m1 '^c10m listening' "$out/server2.log") || { cat "$out/server2.log" >&2; exit 1; }
    client2=$(sed -n 's/.* clients=\([^ ,]*\).*/\1/p' <<<"$line2")
    admin2=$(sed -n 's/.* admin=\([^ ,]*\).*/\1/p' <<<"$line2")
    log "node two $two: $line2"
fi

# Hold long enough for the ramp and the slowest mode (single requests, a few thousand/s).
hold=$((USERS / 5000 + COUNT / 2000 + 10))
base=(--target "$client" --admin "$admin" --sources "$SOURCES" --conns "$USERS" --rate 0
    --connect-timeout 30s --users 'u{n}' --server-pid "$server" --quiet --drain 3s)
topic_args=()
if [ -n "$TOPICS" ]; then topic_args=(--topics "$TOPICS"); fi
base+=("${topic_args[@]}")

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
connections() {
    curl -s "http://$1/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["connections"])' 2>/dev/null || echo 0
}
if [ "$CLUSTER" = 1 ]; then
    timeout $((hold + 120)) "$loadgen" run --target "$client2" --sources "127.0.0.200-127.0.0.210" \
        --conns "$TWO_USERS" --rate 0 --connect-timeout 30s --users 'u{n}' "${topic_args[@]}" \
        --quiet --drain 3s --hold "${hold}s" >"$out/two.txt" 2>&1 &
    others=($! "${others[@]}")
    for _ in $(seq $((600 + TWO_USERS / 1000))); do
        [[ $(connections "$admin2") -ge $TWO_USERS ]] && break
        sleep 0.5
    done
    log "node two: $(connections "$admin2") connections"
    for _ in $(seq 100); do
        live=$(curl -s "http://$admin/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["cluster"]["live_nodes"])' 2>/dev/null || echo 0)
        [[ $live -ge 2 ]] && break
        sleep 0.1
    done
fi
for _ in $(seq $((600 + USERS / 1000))); do
    n=$(connections "$admin")
    [[ $n -ge $USERS ]] && break
    sleep 0.5
done
if [ "$CLUSTER" = 1 ]; then
    # Let the registry writes of the ramp finish: both bridges' write counts unchanged for 1 s.
    writes() {
        for a in "$admin" "$admin2"; do
            curl -s "http://$a/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["cluster"]["registry_writes"])' 2>/dev/null || echo 0
        done | paste -sd,
    }
    last=$(writes) still=0
    for _ in $(seq 120); do
        sleep 0.5
        now=$(writes)
        if [[ $now == "$last" ]]; then still=$((still + 1)); else still=0; fi
        last=$now
        [[ $still -ge 2 ]] && break
    done
    log "registry writes settled: $last"
fi
log "presence: $PRESENCE_N requests with $n connections up"
python3 - "$admin" "$USERS" "$PRESENCE_N" "$TOPICS" >"$out/presence.txt" <<'PY'
import http.client, json, random, statistics, sys, time
host, port = sys.argv[1].rsplit(":", 1)
users, n, topics = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
c = http.client.HTTPConnection(host, int(port), timeout=10)
def timed(path):
    t = time.perf_counter()
    c.request("GET", path)
    r = c.getresponse()
    body = r.read()
    assert r.status == 200, (path, r.status, body)
    return (time.perf_counter() - t) * 1e6, body
first = json.loads(timed("/presence?user=u0")[1])
if first.get("scope") == "cluster":
    print(f"cluster: {first}")
one = sorted(timed(f"/presence?user=u{random.randrange(users)}")[0] for _ in range(n))
names = lambda: ",".join(f"u{random.randrange(users)}" for _ in range(1000))
many = sorted(timed(f"/presence?users={names()}")[0] for _ in range(max(n // 20, 10)))
q = lambda v, p: v[min(len(v) - 1, int(len(v) * p))]
print(f"user  p50 {q(one, .5):.0f} us  p99 {q(one, .99):.0f} us  ({len(one)} requests)")
print(f"users p50 {q(many, .5):.0f} us  p99 {q(many, .99):.0f} us  ({len(many)} requests of 1,000 names)")
if topics:
    print(f"topic sample: {json.loads(timed('/presence?topic=t0')[1])}")
    topic = sorted(timed(f"/presence?topic=t{random.randrange(100)}")[0] for _ in range(n))
    print(f"topic p50 {q(topic, .5):.0f} us  p99 {q(topic, .99):.0f} us  ({len(topic)} requests)")
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
