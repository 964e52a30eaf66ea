#!/usr/bin/env bash
# permessage-deflate side by side: the same c10m (its defaults: compression on, minimum 128 B,
# level 6) and the same load generator, whose clients offer the extension (--deflate) or not,
# for a 500-byte JSON payload (--payload-fill json) and a 32-byte one. Interleaved, REPS times.
# Per run: wire bytes of the data frames per delivery (as the clients received them), server
# CPU per delivery ((run CPU - idle run CPU) / deliveries, utime+stime from /proc/PID/stat),
# server user memory per idle connection (RSS growth / connections, from the idle runs), and
# what one 1 Gbit/s NIC could carry: 125,000,000 B/s / (frame bytes + 90 B of Ethernet, IPv4
# and TCP-with-timestamps framing per segment; one delivery per segment, as for a broadcast
# to many connections).
#
#   scripts/compression.sh                      CONNS=15000 REPS=3 BCASTS=20
#   CONNS=5000 REPS=1 scripts/compression.sh    a quick look
#
# All traffic on 127.0.0.1; every step under `timeout`. Prints a Markdown table; the raw
# reports stay in target/compression/.
set -euo pipefail
cd "$(dirname "$0")/.."
CONNS=${CONNS:-15000}
REPS=${REPS:-3}
BCASTS=${BCASTS:-20}
HOLD=${HOLD:-10s}
out=target/compression
rm -rf "$out"
mkdir -p "$out"
cargo build --release --quiet -p c10m -p c10m-loadgen
bin=target/release/c10m
loadgen=target/release/c10m-loadgen

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

server=
stop_server() {
    [[ -n $server ]] || return 0
    kill -TERM "$server" 2>/dev/null || true
    timeout 15 tail --pid="$server" -f /dev/null 2>/dev/null || kill -KILL "$server" 2>/dev/null || true
    server=
}
trap stop_server EXIT

start_server() {
    "$bin" serve --listen 127.0.0.1:0 --admin 127.0.0.1:0 >"$out/server.log" 2>&1 &
    server=$!
    for _ in $(seq 200); do
        line=$(grep -m1 '^c10m listening' "$out/server.log" || true)
        [[ -n $line ]] && break
        sleep 0.05
    done
    [[ -n $line ]] || { cat "$out/server.log" >&2; exit 1; }
    client=$(sed -n 's/.* clients=\([^ ,]*\).*/\1/p' <<<"$line")
    admin=$(sed -n 's/.* admin=\([^ ,]*\).*/\1/p' <<<"$line")
}

# run TAG BYTES DEFLATE(0|1) BROADCASTS: one loadgen run; appends "tag bytes deflate cpu
# report.json" to the runs file.
run() {
    local tag=$1 bytes=$2 deflate=$3 n=$4
    local args=(--target "$client" --admin "$admin" --conns "$CONNS" --rate 0 --hold "$HOLD"
        --drain 3s --connect-timeout 10s --server-pid "$server" --quiet
        --payload-bytes "$bytes" --payload-fill json --json "$out/$tag.json")
    ((deflate)) && args+=(--deflate)
    ((n > 0)) && args+=(--publish-to all --publish-rate 10 --publish-count "$n" --publish-delay 2s)
    local c0 c1
    c0=$(cpu_ticks "$server")
    timeout 120 "$loadgen" run "${args[@]}" >"$out/$tag.txt" 2>&1 || log "$tag: loadgen exited with $?"
    c1=$(cpu_ticks "$server")
    echo "$tag $bytes $deflate $((c1 - c0)) $out/$tag.json" >>"$out/runs.txt"
}

for rep in $(seq "$REPS"); do
    for deflate in 0 1; do
        start_server
        log "rep $rep deflate=$deflate: server $server on $client"
        run "idle-d$deflate-r$rep" 500 "$deflate" 0
        for bytes in 500 32; do
            run "bcast-$bytes-d$deflate-r$rep" "$bytes" "$deflate" "$BCASTS"
        done
        stop_server
    done
done

python3 - "$out/runs.txt" "$CONNS" "$BCASTS" "$REPS" <<'PY'
import json, statistics, sys, os
runs, conns, bcasts, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
hz = os.sysconf("SC_CLK_TCK")
rows = [l.split() for l in open(runs)]
idle = {}
mem = {}
res = {}
for tag, size, d, ticks, path in rows:
    r = json.load(open(path))
    if tag.startswith("idle"):
        idle[(d, tag.rsplit("-r", 1)[1])] = int(ticks)
        bpc = r["memory"].get("server_bytes_per_conn")
        if bpc:
            mem.setdefault(d, []).append(bpc)
for tag, size, d, ticks, path in rows:
    if tag.startswith("idle"):
        continue
    r = json.load(open(path))
    m = r["messages"]
    rep = tag.rsplit("-r", 1)[1]
    base = idle.get((d, rep), 0)
    delivered = max(m["delivered"], 1)
    cpu_us = max(int(ticks) - base, 0) / hz * 1e6 / delivered
    wire = m.get("data_bytes", 0) / max(m["received"], 1)
    res.setdefault((size, d), []).append((wire, cpu_us, m["delivered"], m["lost"], m.get("compressed", 0)))
print(f"{conns} WebSocket connections, {bcasts} broadcasts per run, {reps} repetitions (medians)\n")
print("| payload | clients offer deflate | wire B/delivery | server CPU µs/delivery | delivered / lost | compressed frames | deliveries/s a 1 Gbit/s NIC carries |")
print("|---|---|---:|---:|---:|---:|---:|")
for size in ("500", "32"):
    for d in ("0", "1"):
        v = res.get((size, d), [])
        if not v:
            continue
        wire = statistics.median(x[0] for x in v)
        cpu = statistics.median(x[1] for x in v)
        deliv = sum(x[2] for x in v); lost = sum(x[3] for x in v); comp = sum(x[4] for x in v)
        nic = 125_000_000 / (wire + 90)
        print(f"| {size} B JSON | {'yes' if d == '1' else 'no'} | {wire:.1f} | {cpu:.2f} (runs {', '.join(f'{x[1]:.2f}' for x in v)}) | {deliv} / {lost} | {comp} | {nic:,.0f} |")
for d in ("0", "1"):
    if d in mem:
        print(f"\nserver user memory per idle connection, clients {'offering' if d == '1' else 'not offering'} deflate: "
              f"{statistics.median(mem[d]):.0f} B (runs {', '.join(f'{x:.0f}' for x in mem[d])})")
PY
