#!/usr/bin/env bash
# What retained history costs: starts c10m (release build, its defaults: history on, 120 s
# window, 100 per stream), then publishes 100,000 messages of PAYLOAD bytes (default 64) in
# two shapes, reading the server's RSS and c10m_history_bytes before and after each:
#   users   one message each to 100,000 distinct users (100,000 streams of one message)
#   topics  100 messages each to 1,000 topics (1,000 streams of 100 messages)
# Nobody is connected: this is the cost of the history alone. Takes about a minute.
#   scripts/history_memory.sh [COUNT] [PAYLOAD]
#   BIN=/path/to/other/c10m scripts/history_memory.sh     (another build, side by side)
# Traffic stays on 127.0.0.1; the server is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-100000}
payload=${2:-64}
bin=${BIN:-target/release/c10m}
[[ -x $bin ]] || cargo build --release -q -p c10m
client=127.0.0.1:29580
admin=127.0.0.1:29581

run_shape() {
    local shape=$1
    timeout 600 "$bin" serve --listen "$client" --admin "$admin" >/tmp/history_memory.log 2>&1 &
    local pid=$!
    trap 'kill $pid 2>/dev/null || true' RETURN
    for _ in $(seq 100); do
        curl -sf -o /dev/null --max-time 1 "http://$admin/healthz" && break
        sleep 0.1
    done
    local server
    server=$(pgrep -P "$pid" | head -n 1)
    python3 - "$admin" "$server" "$shape" "$count" "$payload" <<'PY'
import http.client, re, sys, time
admin, pid, shape, count, size = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
def rss():
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) * 1024
def metric(conn, name):
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    return sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith(name + "{"))
conn = http.client.HTTPConnection(admin, timeout=30)
time.sleep(1.5)
rss0 = rss()
body = b"x" * size
start = time.monotonic()
for i in range(count):
    target = f"user=u{i}" if shape == "users" else f"topic=t{i % 1000}"
    conn.request("POST", f"/publish?{target}", body=body)
    r = conn.getresponse(); r.read()
    assert r.status == 202, r.status
took = time.monotonic() - start
# The gauges are refreshed once a second.
time.sleep(2.5)
retained, hbytes, rss1 = metric(conn, "c10m_history_messages"), metric(conn, "c10m_history_bytes"), rss()
print(f"{shape}: {count} publishes of {size} B in {took:.1f} s; retained {retained:.0f}; "
      f"c10m_history_bytes {hbytes:.0f} ({hbytes / max(retained, 1):.1f} B/message, "
      f"{hbytes / max(retained, 1) - size:.1f} B over the payload); "
      f"RSS {rss0 / 1e6:.1f} -> {rss1 / 1e6:.1f} MB ({(rss1 - rss0) / max(retained, 1):.1f} B/message)")
PY
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

run_shape users
run_shape topics
