#!/usr/bin/env bash
# What the cluster's history store costs a publish: two nodes on loopback (real redis-server
# and nats-server with JetStream), USERS WebSocket users on node two, COUNT targeted publishes
# (random users) at RATE per second through node one's admin API, so every delivery crosses
# nodes; then TOPIC_COUNT topic publishes (every user subscribes) the same way. Once with
# history on (the default: every publish stored in and read from the JetStream stream) and
# once with --history-ttl-ms 0 (the at-most-once bus path: registry lookup, node subject),
# REPS times interleaved. Per run: publish-to-delivery latency p50/p99/p99.9 from the load
# generator's stamps, deliveries, lost, and CPU per delivery of node one, node two and
# nats-server ((run - idle) utime+stime from /proc/PID/stat).
#
#   scripts/cluster_latency.sh                 USERS=2000 COUNT=5000 RATE=1000 REPS=3
#
# All traffic on 127.0.0.0/8; every step under `timeout`; the raw reports stay in
# target/cluster_latency/. Prints a Markdown table of medians.
set -euo pipefail
cd "$(dirname "$0")/.."
USERS=${USERS:-2000} COUNT=${COUNT:-5000} RATE=${RATE:-1000} REPS=${REPS:-3}
TOPIC_COUNT=${TOPIC_COUNT:-20} TOPIC_RATE=${TOPIC_RATE:-2} SHARDS=${SHARDS:-1}
for tool in redis-server nats-server redis-cli curl python3; do
    command -v "$tool" >/dev/null || { echo "cluster_latency: $tool is missing" >&2; exit 1; }
done
cargo build --release --quiet -p c10m -p c10m-loadgen
bin=${CARGO_TARGET_DIR:-target}/release/c10m
loadgen=${CARGO_TARGET_DIR:-target}/release/c10m-loadgen
out=${CARGO_TARGET_DIR:-target}/cluster_latency
rm -rf "$out" && mkdir -p "$out"
log() { echo "cluster_latency: $*" >&2; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

pids=()
stop_all() {
    kill -KILL "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap stop_all EXIT

# One run: fresh Redis, NATS and two nodes; $1 = tag, $2.. = extra node flags.
one_run() {
    local tag=$1
    shift
    local rport nport
    rport=$(free_port) nport=$(free_port)
    redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no \
        >"$out/$tag.redis.log" 2>&1 &
    local redis=$!
    nats-server -a 127.0.0.1 -p "$nport" -js -sd "$out/$tag.js" >"$out/$tag.nats.log" 2>&1 &
    local nats=$!
    pids=($redis $nats)
    for _ in $(seq 100); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
    local flags=(--registry "redis://127.0.0.1:$rport" --bus "nats://127.0.0.1:$nport"
        --shards "$SHARDS" --listen 127.0.0.1:0 --admin 127.0.0.1:0 --no-pin "$@")
    "$bin" serve --node-id one "${flags[@]}" >"$out/$tag.one.log" 2>&1 &
    local one=$!
    "$bin" serve --node-id two "${flags[@]}" >"$out/$tag.two.log" 2>&1 &
    local two=$!
    pids=($one $two $redis $nats)
    local l1 l2
    for _ in $(seq 300); do
        grep -q '^c10m listening' "$out/$tag.one.log" && grep -q '^c10m listening' "$out/$tag.two.log" && break
        sleep 0.05
    done
    l1=$(grep -m1 '^c10m listening' "$out/$tag.one.log") || { cat "$out/$tag.one.log" >&2; exit 1; }
    l2=$(grep -m1 '^c10m listening' "$out/$tag.two.log") || { cat "$out/$tag.two.log" >&2; exit 1; }
    local admin1 client2 admin2
    admin1=$(sed -n 's/.* admin=\([^ ,]*\).*/\1/p' <<<"$l1")
    client2=$(sed -n 's/.* clients=\([^ ,]*\).*/\1/p' <<<"$l2")
    admin2=$(sed -n 's/.* admin=\([^ ,]*\).*/\1/p' <<<"$l2")
    for _ in $(seq 100); do
        live=$(curl -s "http://$admin1/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["cluster"]["live_nodes"])' 2>/dev/null || echo 0)
        [[ $live -ge 2 ]] && break
        sleep 0.1
    done
    local base=(--target "$client2" --admin "$admin1" --conns "$USERS" --rate 0
        --connect-timeout 30s --users 'u{n}' --topics 'news' --quiet --drain 3s)
    local hold=$((COUNT / RATE + 8))
    # Idle: the users held, nothing published (the CPU baseline), then the two loads.
    for phase in idle user topic; do
        local extra=(--hold "${hold}s")
        case $phase in
            user) extra+=(--publish-rate "$RATE" --publish-to user --publish-count "$COUNT" --publish-delay 3s) ;;
            topic) extra+=(--publish-rate "$TOPIC_RATE" --publish-to topic --publish-count "$TOPIC_COUNT" --publish-delay 3s)
                extra=(--hold "$((TOPIC_COUNT / TOPIC_RATE + 8))s" "${extra[@]:2}") ;;
        esac
        local c0=() c1=()
        for p in $one $two $nats; do c0+=("$(cpu_ticks "$p")"); done
        timeout 300 "$loadgen" run "${base[@]}" "${extra[@]}" --json "$out/$tag.$phase.json" \
            >"$out/$tag.$phase.txt" 2>&1 || log "$tag $phase: loadgen exited with $?"
        for p in $one $two $nats; do c1+=("$(cpu_ticks "$p")"); done
        echo "$tag $phase $((c1[0] - c0[0])) $((c1[1] - c0[1])) $((c1[2] - c0[2]))" >>"$out/cpu.txt"
    done
    curl -s "http://$admin1/stats" >"$out/$tag.one.stats.json" || true
    curl -s "http://$admin2/stats" >"$out/$tag.two.stats.json" || true
    kill -KILL "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
    pids=()
}

for rep in $(seq "$REPS"); do
    for mode in store bus; do
        tag="$mode-$rep"
        log "$tag"
        if [ "$mode" = store ]; then one_run "$tag"; else one_run "$tag" --history-ttl-ms 0; fi
    done
done

python3 - "$out" "$REPS" "$USERS" "$COUNT" "$RATE" "$TOPIC_COUNT" <<'PY'
import json, os, statistics, sys
out, reps, users, count, rate, tcount = sys.argv[1], int(sys.argv[2]), *map(int, sys.argv[3:])
tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
cpu = {}
for line in open(f"{out}/cpu.txt"):
    tag, phase, *t = line.split()
    cpu[(tag, phase)] = [int(x) for x in t]
rows = {}
for mode in ("store", "bus"):
    for phase in ("user", "topic"):
        vals = {k: [] for k in ("p50", "p99", "p999", "delivered", "lost", "one", "two", "nats")}
        for rep in range(1, reps + 1):
            tag = f"{mode}-{rep}"
            r = json.load(open(f"{out}/{tag}.{phase}.json"))
            lat = r["latency_us"]
            d = r["messages"]["delivered"]
            vals["p50"].append(lat["p50"] / 1000)
            vals["p99"].append(lat["p99"] / 1000)
            vals["p999"].append(lat["p999"] / 1000)
            vals["delivered"].append(d)
            vals["lost"].append(r["messages"]["lost"] + r["messages"]["duplicated"])
            idle, run = cpu[(tag, "idle")], cpu[(tag, phase)]
            for i, k in enumerate(("one", "two", "nats")):
                vals[k].append(max(run[i] - idle[i], 0) * tick_us / max(d, 1))
        rows[(mode, phase)] = {k: statistics.median(v) for k, v in vals.items()}
print(f"{users} users on node two, publishes through node one's admin API; medians of {reps} runs")
print()
print("| path | publishes | delivered | lost + doubled | latency p50 / p99 / p99.9 (ms) | CPU per delivery, node one / two / nats-server (µs) |")
print("|---|---|---:|---:|---|---|")
for (mode, phase), v in rows.items():
    what = f"{count} to users at {rate}/s" if phase == "user" else f"{tcount} to a topic of {users}"
    name = "history store (default)" if mode == "store" else "bus only (--history-ttl-ms 0)"
    print(f"| {name} | {what} | {v['delivered']:.0f} | {v['lost']:.0f} | {v['p50']:.2f} / {v['p99']:.2f} / {v['p999']:.2f} "
          f"| {v['one']:.1f} / {v['two']:.1f} / {v['nats']:.1f} |")
PY
