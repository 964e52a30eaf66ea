#!/usr/bin/env bash
# One million idle WebSocket connections on this box: server and load generator together.
#
#   scripts/c1m.sh [connections=1000000]
#
# Prepares the host (sysctls from tuning/sysctl.conf at runtime, tcp_mem scaled to this RAM;
# restored on exit), starts c10m with enough shards for the per-ring descriptor limit, drives
# c10m-loadgen to N idle WebSocket connections, holds them, publishes three broadcasts to
# everyone, measures the idle (keepalive-only) CPU and the memory per connection, then runs
# targeted pushes to single users from a second, small load generator, and prints a report.
# Bounded: every wait has a deadline (C1M_DEADLINE_S, default 900 s for the whole run), and
# everything started here is stopped and the sysctls restored on exit (trap).
#
# On the 2-vCPU development VM (HARDWARE.md, "c1m results"), 1,000,000 were held with
#   C1M_PING_MS=300000 C1M_IDLE_MS=600000 scripts/c1m.sh
# With the default 30 s pings the ramp reaches 998,000 but the pongs of 1M connections plus a
# broadcast, with the load generator on the same two vCPUs, fall past the pong timeout and
# the server closes them (ping_timeout); the script then stops and prints the close reasons.
#
# Knobs (environment): C1M_PORTS client listener ports (4), C1M_SOURCES source addresses
# (auto: ~5000 connections per (source, port) pair), C1M_RATE connects/s (8000: on the
# 2-vCPU box the pair sustains ~9k/s; asking 20k/s filled the accept queues, connects timed
# out and the run collapsed at ~530k),
# C1M_SHARDS server shards (auto), C1M_TARGETED connections of the targeted-push client
# (2000), C1M_OUT directory for logs and JSON reports (a new temp dir), C1M_BUILD=0 to skip
# cargo build, C1M_BASE_PORT (19100), C1M_PING_MS server ping interval (30000) and
# C1M_IDLE_MS idle timeout (120000; keep it above the ping interval).
set -euo pipefail
N=${1:-1000000}
PORTS=${C1M_PORTS:-4}
RATE=${C1M_RATE:-8000}
NB=${C1M_TARGETED:-2000}
BASE_PORT=${C1M_BASE_PORT:-19100}
ADMIN_PORT=$((BASE_PORT + 99))
DEADLINE_S=${C1M_DEADLINE_S:-900}
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT=${C1M_OUT:-$(mktemp -d /tmp/c1m.XXXXXX)}
mkdir -p "$OUT"
T0=$(date +%s)
NA=$((N - NB))
[ "$NA" -gt 0 ] || { echo "c1m: need more than $NB connections" >&2; exit 2; }

say() { printf '[%5ds] %s\n' $(($(date +%s) - T0)) "$*"; }
die() { say "STOP: $*"; diag; exit 1; }
# What the server closed and why, and the kernel's accept-path counters: printed on a stop.
diag() {
  curl -s --max-time 10 "http://127.0.0.1:${ADMIN_PORT}/metrics" 2>/dev/null | awk -F'reason="' '/^c10m_closes_total/ {split($2, a, "\""); n = $0; sub(/.* /, "", n); s[a[1]] += n}
    END {printf "server closes:"; for (k in s) if (s[k]) printf " %s=%d", k, s[k]; print ""}' || true
  nstat -az 2>/dev/null | awk '/ListenOverflows|ListenDrops|TCPReqQFullDoCookies|TCPTimeouts|TCPAbortOnMemory|TCPMemoryPressures /{printf "%s=%s ", $1, $2} END {print ""}' || true
  [ -z "${SERVER:-}" ] || say "server CPU $(( $(ticks $SERVER) / HZ )) s, RSS $(( $(rss_kib $SERVER) / 1024 )) MiB; slab $(( $(slab_kib) / 1024 )) MiB; load $(cut -d' ' -f1-3 /proc/loadavg)"
}
left() { echo $((T0 + DEADLINE_S - $(date +%s))); }

# --- preflight ---------------------------------------------------------------------------
nofile=$(ulimit -Hn)
ring_files=$(( nofile < 1048576 ? nofile : 1048576 ))
per_shard=$((ring_files - 64))  # c10m keeps 64 slots per ring to answer 503 beyond the cap
# SO_REUSEPORT spreads connections by a hash of the 4-tuple, so shards are filled unevenly
# (binomial, sd ~ sqrt(mean)): size for 94% of the cap on average.
SHARDS=${C1M_SHARDS:-$(( (N * 100 / 94 + per_shard - 1) / per_shard ))}
[ "$SHARDS" -ge 1 ] || SHARDS=1
pairs_needed=$(( (N + 4999) / 5000 ))
SOURCES=${C1M_SOURCES:-$(( (pairs_needed + PORTS - 1) / PORTS ))}
[ "$SOURCES" -ge 2 ] || SOURCES=2
[ "$SOURCES" -le 250 ] || die "too many sources ($SOURCES); raise C1M_PORTS"
SRC_RANGE=127.0.0.2-127.0.0.$((1 + SOURCES))
mem_avail_kb=$(awk '/MemAvailable/ {print $2}' /proc/meminfo)
need_kb=$(( N * 11 ))  # ~2 x 4.9 KB kernel (socket + armed op) + user space, both sides
say "c1m: $N connections ($NA broadcast clients + $NB targeted), server $SHARDS shards x $per_shard, $PORTS ports x $SOURCES sources"
say "host: $(nproc) CPUs, MemAvailable $((mem_avail_kb / 1024)) MiB (need ~$((need_kb / 1024)) MiB), RLIMIT_NOFILE $(ulimit -Sn)/$nofile, RLIMIT_MEMLOCK $(ulimit -l) KiB, load $(cut -d' ' -f1-3 /proc/loadavg)"
[ "$mem_avail_kb" -gt "$need_kb" ] || die "not enough memory: MemAvailable $((mem_avail_kb/1024)) MiB < ~$((need_kb/1024)) MiB for $N connections"
ip route get 127.0.0.$((1 + SOURCES)) >/dev/null || die "source 127.0.0.$((1 + SOURCES)) not routable"

# --- cleanup -----------------------------------------------------------------------------
pids=()
SAVED=$OUT/sysctl.saved
cleanup() {
  local rc=$?
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  [ ! -s "$SAVED" ] || "$ROOT/tuning/apply.sh" --restore "$SAVED" >/dev/null
  say "cleaned up (logs and reports in $OUT)"
  exit $rc
}
trap cleanup EXIT
trap 'die "interrupted"' INT TERM

# --- host preparation --------------------------------------------------------------------
# tcp_mem in pages scaled to this RAM: pressure at 1/6, max at 1/4 (sockets' kernel slab is
# not counted in tcp_mem; only queued data is). The port range is left alone: other work on
# this box binds fixed ports, and ${SOURCES} sources x ${PORTS} ports keep each pair far below it.
pages=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 4 ))
"$ROOT/tuning/apply.sh" --runtime --save "$SAVED" \
  --set "net.ipv4.tcp_mem=$((pages / 8)) $((pages / 6)) $((pages / 4))" \
  --skip net.ipv4.ip_local_port_range --skip net.ipv4.ip_local_reserved_ports \
  --skip vm.min_free_kbytes >"$OUT/apply.log" 2>&1 || { cat "$OUT/apply.log"; die "sysctls not applied"; }
say "sysctls: $(tail -1 "$OUT/apply.log") (restored on exit)"

if [ "${C1M_BUILD:-1}" = 1 ]; then cargo build --release -q -p c10m -p c10m-loadgen; fi
BIN=target/release

# --- helpers -----------------------------------------------------------------------------
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
slab_kib() { awk '/^Slab:/ {print $2}' /proc/meminfo; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }  # utime+stime
busy() { awk '/^cpu / {print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat; }  # busy total
HZ=$(getconf CLK_TCK)
stats() { curl -s --max-time 5 "http://127.0.0.1:$ADMIN_PORT/stats" || echo '{}'; }
stat_field() { # connections | delivered | spread
  python3 -c '
import json, sys
try: s = json.loads(sys.stdin.read())
except Exception: print(-1); sys.exit()
f = sys.argv[1]
if f == "spread":
    c = [x["connections"] for x in s.get("shards", [])]; print(min(c), max(c))
elif f == "delivered": print(sum(x["delivered"] for x in s.get("shards", [])))
else: print(s.get(f, -1))' "$1"
}

# --- server ------------------------------------------------------------------------------
listen=() targets=()
for i in $(seq 0 $((PORTS - 1))); do
  listen+=(--listen "127.0.0.1:$((BASE_PORT + i))"); targets+=(--target "127.0.0.1:$((BASE_PORT + i))")
done
SERVER_CMD=("$BIN/c10m" serve --shards "$SHARDS" "${listen[@]}" --admin "127.0.0.1:$ADMIN_PORT"
  --ring-entries 256 --recv-buffers 64 --mesh-ring-entries 64 --listen-backlog 16384 --no-pin
  --pong-timeout-ms 30000 --handshake-timeout-ms 30000
  --ping-interval-ms "${C1M_PING_MS:-30000}" --idle-timeout-ms "${C1M_IDLE_MS:-120000}")
# Pong and handshake timeouts are 30 s, not 10 s: the load generator shares the two vCPUs
# with 54 server shards, and a pong it answers 10 s late is this box's lag, not a dead peer
# (with 10 s, a 1M ramp lost 514k connections to ping_timeout and 145k to handshake_timeout).
"${SERVER_CMD[@]}" >"$OUT/server.log" 2>&1 &
SERVER=$!
pids+=("$SERVER")
for _ in $(seq 300); do grep -q listening "$OUT/server.log" && break; kill -0 $SERVER 2>/dev/null || break; sleep 0.1; done
grep -q listening "$OUT/server.log" || { cat "$OUT/server.log"; die "server did not start"; }
say "server: $(head -1 "$OUT/server.log") (fds open: $(ls /proc/$SERVER/fd | wc -l))"
sleep 2
RSS0=$(rss_kib $SERVER); SLAB0=$(slab_kib); CPU0=$(ticks $SERVER); read -r B0 T0c <<<"$(busy)"
FREE0=$(awk '/MemAvailable/ {print $2}' /proc/meminfo)
cp /proc/slabinfo "$OUT/slabinfo.0"; grep -E '^(SReclaimable|SUnreclaim):' /proc/meminfo >"$OUT/meminfo.0"
say "baseline: server RSS $((RSS0 / 1024)) MiB, slab $((SLAB0 / 1024)) MiB, sockets $(awk '/^TCP:/ {print $3}' /proc/net/sockstat)"

# --- the broadcast clients (A) -------------------------------------------------------------
# Broadcasts: PUBS of them, GAP_S apart so that one is over before the next starts (at 1M on
# this box one takes ~15 s; overlapping ones would inflate each other's latency).
# Hold long enough for them, a 20 s idle window and the targeted run.
PUBS=${C1M_BROADCASTS:-2}
GAP_S=${C1M_BROADCAST_GAP_S:-60}
PUB_RATE=$(python3 -c "print(1 / $GAP_S)")
HOLD_S=${C1M_HOLD_S:-$(( PUBS * GAP_S + 90 ))}
LG_CMD=("$BIN/c10m-loadgen" --proto ws "${targets[@]}" --admin "127.0.0.1:$ADMIN_PORT"
  --sources "$SRC_RANGE" --conns "$NA" --rate "$RATE" --connect-timeout 30s --hold "${HOLD_S}s"
  --users 'u{n}' --publish-to all --publish-rate "$PUB_RATE" --publish-count "$PUBS" --payload-bytes 32
  --drain 5s --server-pid "$SERVER" --json "$OUT/broadcast.json")
"${LG_CMD[@]}" >"$OUT/broadcast.txt" 2>"$OUT/broadcast.progress" &
LGA=$!
pids+=("$LGA")
say "loadgen A: ${LG_CMD[*]}"

# Ramp: until the server holds NA connections, the count stops growing, or the deadline.
last=-1 still=0 peak=0
while :; do
  sleep 2
  c=$(stats | stat_field connections)
  [ "$c" -le "$peak" ] || peak=$c
  say "ramp: server holds $c, RSS $(( $(rss_kib $SERVER) / 1024 )) MiB, slab $(( $(slab_kib) / 1024 )) MiB, MemAvailable $(( $(awk '/MemAvailable/ {print $2}' /proc/meminfo) / 1024 )) MiB | $(tail -c 300 "$OUT/broadcast.progress" | tr '\r' '\n' | grep . | tail -1 | cut -c1-110)"
  [ "$c" -lt "$NA" ] || break
  kill -0 $LGA 2>/dev/null || die "load generator exited during the ramp: $(tail -5 "$OUT/broadcast.progress")"
  if [ "$c" -eq "$last" ]; then still=$((still + 1)); else still=0; fi
  last=$c
  [ $still -lt 10 ] || { say "ramp stalled at $c for 20 s"; diag; break; }
  if grep -qE 'fail .*timeout=[0-9]{5}' <(tail -c 300 "$OUT/broadcast.progress"); then
    die "ramp collapsing: over 10,000 connects timed out (at $c held)"
  fi
  [ "$(left)" -gt 200 ] || die "deadline: ramp not done, $c connections"
done
T_RAMP=$(date +%s)
RAMP_CONNS=$c
CPU_RAMP=$(ticks $SERVER); LG_RAMP=$(ticks $LGA)
say "ramp done: $c connections; spread over shards (min max): $(stats | stat_field spread)"

# Broadcasts: wait until the server counted PUBS x NA deliveries (or the gaps + 60 s).
for _ in $(seq $(( PUBS * GAP_S + 60 ))); do
  d=$(stats | stat_field delivered)
  [ "$d" -lt $((PUBS * RAMP_CONNS)) ] || break
  kill -0 $LGA 2>/dev/null || break
  sleep 1
done
say "broadcasts: server delivered $(stats | stat_field delivered) frames"

# Idle window: only keepalive traffic (30 s pings), 20 s of CPU and the steady memory.
sleep 3
c1=$(ticks $SERVER); l1=$(ticks $LGA); read -r b1 t1 <<<"$(busy)"
sleep 20
c2=$(ticks $SERVER); l2=$(ticks $LGA); read -r b2 t2 <<<"$(busy)"
HELD=$(stats | stat_field connections)
RSS1=$(rss_kib $SERVER); SLAB1=$(slab_kib); LGRSS=$(rss_kib $LGA)
FREE1=$(awk '/MemAvailable/ {print $2}' /proc/meminfo)
cp /proc/slabinfo "$OUT/slabinfo.1"; grep -E '^(SReclaimable|SUnreclaim):' /proc/meminfo >"$OUT/meminfo.1"
SOCKSTAT=$(grep '^TCP:' /proc/net/sockstat)
IDLE_SRV=$(python3 -c "print(round(($c2 - $c1) / $HZ / 20 * 100, 1))")
IDLE_LG=$(python3 -c "print(round(($l2 - $l1) / $HZ / 20 * 100, 1))")
IDLE_HOST=$(python3 -c "print(round(($b2 - $b1) / max(1, $t2 - $t1) * 100, 1))")
say "idle: $HELD held; CPU server ${IDLE_SRV}% loadgen ${IDLE_LG}% host ${IDLE_HOST}% (of $(nproc) CPUs); server RSS $((RSS1 / 1024)) MiB; slab +$(( (SLAB1 - SLAB0) / 1024 )) MiB; $SOCKSTAT"

# --- targeted pushes (B): new users, so A never sees them and B never sees A's broadcasts --
[ "$(left)" -gt 60 ] || die "deadline before the targeted run"
LGB_CMD=("$BIN/c10m-loadgen" --proto ws "${targets[@]}" --admin "127.0.0.1:$ADMIN_PORT"
  --sources "$SRC_RANGE" --conns "$NB" --rate 0 --hold 12s --users 'p{n}' --publish-to user
  --publish-rate 200 --publish-count 2000 --payload-bytes 32 --drain 3s --quiet
  --json "$OUT/targeted.json")
say "loadgen B: ${LGB_CMD[*]}"
timeout 60 "${LGB_CMD[@]}" >"$OUT/targeted.txt" 2>&1 || say "targeted run failed: $(tail -3 "$OUT/targeted.txt")"
PEAK=$(python3 -c "import json; print(json.load(open('$OUT/targeted.json'))['connections']['peak_up'])" 2>/dev/null || echo 0)

say "waiting for loadgen A to finish its hold"
while kill -0 $LGA 2>/dev/null; do
  [ "$(left)" -gt 10 ] || die "deadline: load generator A still running"
  sleep 2
done
wait $LGA || say "loadgen A exited with $?"
CPU_END=$(ticks $SERVER); read -r B_END T_END <<<"$(busy)"

# --- report ------------------------------------------------------------------------------
python3 - "$OUT" <<PY | tee "$OUT/report.txt"
import json, sys, os
out = sys.argv[1]
a = json.load(open(os.path.join(out, "broadcast.json")))
try: b = json.load(open(os.path.join(out, "targeted.json")))
except Exception: b = None
na, held = $RAMP_CONNS, $HELD
ms = lambda us: f"{us / 1000:.1f} ms"
hz = $HZ
print("c1m report:", "$(date -u +%Y-%m-%dT%H:%MZ)", "on", os.uname().nodename, os.uname().release, f"{os.cpu_count()} CPUs", "$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1048576 )) GiB")
print("server:  ", "${SERVER_CMD[*]}")
print("loadgen: ", a["command"])
c = a["connections"]
print(f"connections held      {held:,} idle WebSocket ({na:,} broadcast clients; +{b['connections']['peak_up'] if b else 0:,} targeted clients during the targeted run)")
print(f"                      peak up {c['peak_up']:,} of {c['planned']:,} planned; failures " + (", ".join(f"{k}={v}" for k, v in c["failures"].items() if v) or "none"))
print(f"connect rate          {c['connect_rate_per_s']:,.0f}/s over a {c['ramp_s']:.1f} s ramp (asked {$RATE:,}/s); connect p99 {ms(a['connect_us']['p99'])}, upgrade p99 {ms(a['upgrade_us']['p99'])}")
rss_d = ($RSS1 - $RSS0) * 1024
print(f"server RSS            {$RSS0 / 1024:.1f} MiB -> {$RSS1 / 1024:.1f} MiB = {rss_d / held:.0f} B per connection (user space, read after the broadcasts, idle)")
m = a["memory"]
print(f"                      loadgen's reading at the end of its hold: {m['server_bytes_per_conn']:.0f} B/conn server, {m['loadgen_bytes_per_conn']:.0f} B/conn loadgen (RSS {$LGRSS / 1024:.0f} MiB)")
slab_d = ($SLAB1 - $SLAB0) * 1024
print(f"kernel memory         slab +{slab_d / 2**20:,.0f} MiB = {slab_d / held:,.0f} B per connection (both ends: {slab_d / held / 2:,.0f} B per socket); MemAvailable -{($FREE0 - $FREE1) / 1024:,.0f} MiB in all")
def slabs(f):
    r = {}
    for line in open(os.path.join(out, f)).read().splitlines()[2:]:
        x = line.split()
        r[x[0]] = int(x[1]) * int(x[3])  # active objects x object size
    return r
def mem(f):
    return {l.split()[0].rstrip(":"): int(l.split()[1]) for l in open(os.path.join(out, f))}
m0, m1 = mem("meminfo.0"), mem("meminfo.1")
print(f"                      SUnreclaim +{(m1['SUnreclaim'] - m0['SUnreclaim']) * 1024 / held:,.0f} B/conn, SReclaimable +{(m1['SReclaimable'] - m0['SReclaimable']) * 1024 / held:,.0f} B/conn")
s0, s1 = slabs("slabinfo.0"), slabs("slabinfo.1")
top = sorted(((s1[k] - s0.get(k, 0), k) for k in s1), reverse=True)[:8]
print("                      largest slab caches, growth per connection (both ends): " + ", ".join(f"{k} {d / held:,.0f} B" for d, k in top))
print(f"                      /proc/net/sockstat: $SOCKSTAT")
mm = a["messages"]
l = a["latency_us"]
print(f"broadcast             {mm['published']} x 32 B to all, {$GAP_S} s apart: received {mm['received']:,} (= {mm['received'] / max(1, na):.2f} per connection), duplicated {mm['duplicated']}, reordered {mm['reordered']}")
print(f"                      loadgen accounting: {mm['accepted']} accepted, {mm['publish_errors']} publish errors, delivered {mm['delivered']:,} of {mm['expected']:,} expected, lost {mm['lost']}")
fo, fc = a["fanout_us"], a["fanout_complete_us"]
if fc["count"]:
    print(f"  fan-out             first->last p50 {ms(fo['p50'])} max {ms(fo['max'])}; send->last p50 {ms(fc['p50'])} max {ms(fc['max'])} = {na / (fc['max'] / 1e6):,.0f} deliveries/s")
else:
    # No publish was acknowledged within the loadgen's 5 s admin timeout, so it has no
    # per-publish records; broadcasts do not overlap, so the largest delivery latency is
    # the slowest broadcast's send->last.
    print(f"  fan-out             send->last <= {ms(l['max'])} (largest delivery latency; per-publish figures missing: {a.get('notes') or 'no publish acknowledged'}) = {na / (l['max'] / 1e6):,.0f} deliveries/s")
print(f"  delivery latency    p50 {ms(l['p50'])}  p99 {ms(l['p99'])}  max {ms(l['max'])}  (publish request p50 {ms(a['publish_request_us']['p50'])})")
if b:
    bl, bm = b["latency_us"], b["messages"]
    print(f"targeted pushes       {bm['accepted']} to single users (200/s) while {held:,} idle: delivered {bm['delivered']} of {bm['expected']}, lost {bm['lost']}")
    print(f"  delivery latency    p50 {ms(bl['p50'])}  p99 {ms(bl['p99'])}  max {ms(bl['max'])}")
else:
    print("targeted pushes       not run (see targeted.txt)")
print(f"                      ramp: server {($CPU_RAMP - $CPU0) / hz:.0f} s CPU = {($CPU_RAMP - $CPU0) / hz * 1e6 / na:.0f} µs per accepted+upgraded connection; loadgen {$LG_RAMP / hz:.0f} s")
print(f"CPU (2 vCPU shared)   idle hold, pings every ${C1M_PING_MS:-30000} ms: server $IDLE_SRV%, loadgen $IDLE_LG%, host $IDLE_HOST% busy")
print(f"                      server total {($CPU_END - $CPU0) / hz:.1f} s CPU over the run; host busy {100 * ($B_END - $B0) / max(1, $T_END - $T0c):.0f}% of all CPUs")
PY
say "c1m: done in $(($(date +%s) - T0)) s"
