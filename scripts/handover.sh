#!/usr/bin/env bash
# Measures a live upgrade: CONNS idle WebSocket connections (c10m-loadgen, io_uring direct
# descriptors) on a server with its defaults, a steady publisher to single users, then a
# second server started with --takeover; prints how long the handover took, the CPU each
# process spent on it, what the clients saw (reconnects, closes, lost, duplicated), and the
# kernel's view (TcpPassiveOpens and resets during the switch, established sockets).
# MODE=drain does the same deploy with the paced drain instead (SIGTERM, then a new server;
# the clients reconnect), for comparison.
#
#   CONNS=100000 scripts/handover.sh                 (SHARDS=ceil(CONNS/19000): RLIMIT_NOFILE)
#   CONNS=100000 MODE=drain DRAIN_RATE=20000 scripts/handover.sh
#   UPGRADES=100 CONNS=10000 scripts/handover.sh      back-to-back upgrades: fds, memory
#   CLUSTER=1 CONNS=100000 scripts/handover.sh        a cluster node (history on, the default)
#                                                     upgraded while a second node takes every
#                                                     publish: redis-server and nats-server -js
#                                                     on loopback ports of this script's own
#   CONNS=1000000 CONNECT_RATE=8000 HOLD=240s scripts/handover.sh
#                                                     (53 shards; SOURCES=100 addresses; tcp_mem
#                                                      raised for the run, restored on exit;
#                                                      connects paced as scripts/c1m.sh does)
#
# Loopback only (127.0.0.1 and the loadgen's 127.0.0.2-11 sources); every wait is bounded;
# everything started here is stopped on exit.
set -euo pipefail
CONNS=${CONNS:-100000}
MODE=${MODE:-handover}
UPGRADES=${UPGRADES:-1}
PUBLISH_RATE=${PUBLISH_RATE:-200}
DRAIN_RATE=${DRAIN_RATE:-20000}
CLUSTER=${CLUSTER:-0}
HOLD=${HOLD:-}
# Connections per second while the loadgen connects (0: as fast as it can).
CONNECT_RATE=${CONNECT_RATE:-0}
# Source addresses 127.0.0.2.. for the loadgen: 10,000 connections each.
SOURCES=${SOURCES:-$(( (CONNS + 9999) / 10000 > 10 ? (CONNS + 9999) / 10000 : 10 ))}
# Each shard's table is capped by RLIMIT_NOFILE (20,000 here): enough shards for CONNS.
SHARDS=${SHARDS:-$(( (CONNS + 18999) / 19000 > $(nproc) ? (CONNS + 18999) / 19000 : $(nproc) ))}
cd "$(dirname "$0")/.."
cargo build --release -q -p c10m -p c10m-loadgen
BIN=${BIN:-target/release/c10m}
DIR=$(mktemp -d)
CTL=$DIR/control.sock
pids=()
saved_tcp_mem=$(cat /proc/sys/net/ipv4/tcp_mem)
cleanup() {
  for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  pkill -INT -f "$CTL" 2>/dev/null || true
  wait 2>/dev/null || true
  echo "$saved_tcp_mem" >/proc/sys/net/ipv4/tcp_mem 2>/dev/null || true
}
if [ "$CONNS" -gt 200000 ]; then
  # Millions of sockets: tcp_mem (pages) scaled to this RAM as scripts/c1m.sh does, pressure
  # at 1/6 of it, max at 1/4; restored on exit.
  pages=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 4 ))
  echo "$((pages / 8)) $((pages / 6)) $((pages / 4))" >/proc/sys/net/ipv4/tcp_mem
fi
trap cleanup EXIT

# CLUSTER=1: node a (measured) and node b (takes the publishes, on 8082/8083), with their
# Redis and NATS (JetStream: the history store) on ports of their own.
node=()
admin=127.0.0.1:8081
if [ "$CLUSTER" = 1 ]; then
  command -v redis-server >/dev/null && command -v nats-server >/dev/null \
    || { echo "CLUSTER=1 needs redis-server and nats-server (apt-get install redis-server nats-server)"; exit 1; }
  redis-server --port 16379 --bind 127.0.0.1 --save '' --appendonly no >"$DIR/redis.log" 2>&1 &
  pids+=("$!")
  nats-server -a 127.0.0.1 -p 14222 -js -sd "$DIR/js" >"$DIR/nats.log" 2>&1 &
  pids+=("$!")
  for _ in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.1/16379) 2>/dev/null && (exec 3<>/dev/tcp/127.0.0.1/14222) 2>/dev/null && break
    sleep 0.1
  done
  node=(--registry redis://127.0.0.1:16379 --bus nats://127.0.0.1:14222)
  "$BIN" serve --listen 127.0.0.1:8082 --admin 127.0.0.1:8083 --shards 2 --no-pin \
    --control-socket off --node-id b "${node[@]}" >"$DIR/node-b.log" 2>&1 &
  pids+=("$!")
  node+=(--node-id a)
  admin=127.0.0.1:8083
fi
start_server() { # $1: extra flags; prints the pid
  "$BIN" serve --shards "$SHARDS" --no-pin --control-socket "$CTL" "${node[@]}" "$@" \
    >>"$DIR/server.log" 2>&1 &
  echo $!
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
nstat_get() { nstat -az 2>/dev/null | awk -v k="$1" '$1 == k {print $2}'; }
conns_up() { curl -s --max-time 2 http://127.0.0.1:8081/stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["connections"])' 2>/dev/null || echo 0; }
established() { ss -Htn state established '( sport = :8080 )' 2>/dev/null | wc -l; }
server_pid() { pgrep -f -- "--control-socket $CTL" | sort -n | tail -1; }
fds_of() { ls "/proc/$1/fd" 2>/dev/null | wc -l; }
# Running, not a zombie waiting for this script to reap it.
alive() { [ -e "/proc/$1/stat" ] && ! awk '{exit ($3 == "Z") ? 0 : 1}' "/proc/$1/stat"; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

OLD=$(start_server)
pids+=("$OLD")
for _ in $(seq 100); do grep -q listening "$DIR/server.log" && break; sleep 0.1; done
grep -q listening "$DIR/server.log" || { cat "$DIR/server.log"; exit 1; }
hold=${HOLD:-$((60 + UPGRADES * 3))s}
extra=()
[ "$MODE" = drain ] && extra+=(--reconnect)
target/release/c10m-loadgen run --conns "$CONNS" --rate "$CONNECT_RATE" --connect-timeout 30s --hold "$hold" \
  --sources "127.0.0.2-127.0.0.$((1 + SOURCES))" --users 'u{n}' --publish-rate "$PUBLISH_RATE" \
  --publish-to user --publish-delay 5s --admin "$admin" "${extra[@]}" \
  --json "$DIR/loadgen.json" --quiet >"$DIR/loadgen.txt" 2>&1 &
LOADGEN=$!
pids+=("$LOADGEN")
deadline=$(( $(date +%s) + 240 + CONNS / 2000 ))
until [ "$(conns_up)" -ge "$CONNS" ]; do
  [ "$(date +%s)" -lt "$deadline" ] || { echo "only $(conns_up) of $CONNS connected"; exit 1; }
  sleep 1
done
sleep 6 # the publisher is under way
echo "connections held: $(conns_up)  established sockets on :8080: $(established)"
hz=$(getconf CLK_TCK)
for k in $(seq "$UPGRADES"); do
  OLD=$(server_pid)
  opens0=$(nstat_get TcpPassiveOpens); resets0=$(nstat_get TcpEstabResets)
  old_cpu=$(cpu_ticks "$OLD"); old_fds=$(fds_of "$OLD"); old_rss=$(rss_kb "$OLD")
  t0=$(date +%s.%N)
  if [ "$MODE" = drain ]; then
    curl -s -X POST "http://127.0.0.1:8081/drain?rate=$DRAIN_RATE" >/dev/null
  else
    : >"$DIR/new.log"
    "$BIN" serve --shards "$SHARDS" --no-pin --control-socket "$CTL" --takeover "$CTL" \
      "${node[@]}" >>"$DIR/new.log" 2>&1 &
    pids+=("$!")
  fi
  last_cpu=$old_cpu
  deadline=$(( $(date +%s) + 300 ))
  while alive "$OLD"; do
    c=$(cpu_ticks "$OLD"); [ "$c" -gt 0 ] && last_cpu=$c
    [ "$(date +%s)" -lt "$deadline" ] || { echo "old server did not exit"; exit 1; }
    sleep 0.02
  done
  t1=$(date +%s.%N)
  if [ "$MODE" = drain ]; then
    # The restart. Right after a drain of many connections the old process's listeners can
    # still be held for a moment after it exits (its rings are torn down after the process),
    # and a bind then fails: retry, bounded, and say how long it took.
    tries=0
    while :; do
      tries=$((tries + 1))
      "$BIN" serve --shards "$SHARDS" --no-pin --control-socket "$CTL" "${node[@]}" \
        >"$DIR/new.log" 2>&1 &
      started=$!
      pids+=("$started")
      for _ in $(seq 100); do
        grep -q '^c10m listening' "$DIR/new.log" && break
        alive "$started" || break
        sleep 0.05
      done
      grep -q '^c10m listening' "$DIR/new.log" && break
      [ "$tries" -lt 50 ] || { cat "$DIR/new.log"; echo "the new server did not start"; exit 1; }
      echo "restart $tries: $(grep -m1 -o 'cannot listen.*' "$DIR/new.log" || tail -1 "$DIR/new.log"); sockets on :8080: $(ss -Htan '( sport = :8080 )' | awk '{print $1}' | sort | uniq -c | tr -s ' ' | tr '\n' ',')"
      sleep 0.1
    done
    echo "new server listening $(python3 -c "import time; print(round((time.time() - $t1) * 1000))") ms after the old one exited, after $tries start(s)"
    for _ in $(seq 100); do [ "$(conns_up)" -ge 1 ] && break; sleep 0.1; done
  fi
  NEW=$(server_pid)
  deadline=$(( $(date +%s) + 300 ))
  until [ "$(conns_up)" -ge "$CONNS" ]; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "only $(conns_up) of $CONNS back"; break; }
    sleep 0.2
  done
  t2=$(date +%s.%N)
  opens=$(( $(nstat_get TcpPassiveOpens) - opens0 )); resets=$(( $(nstat_get TcpEstabResets) - resets0 ))
  new_cpu=$(cpu_ticks "$NEW")
  taken=$(grep -o 'taken over in [0-9]* ms' "$DIR/new.log" | tail -1 || true)
  # The old process's own figures: how long its batches of connections stayed frozen.
  frozen=$(cat "$DIR/server.log" "$DIR/new.log" \
    | grep -o 'a batch frozen p50 [0-9.]* ms, p99 [0-9.]* ms, the longest frozen [0-9.]* ms' | tail -1 || true)
  [ -z "$frozen" ] || taken="$taken, $frozen"
  python3 - "$k" "$t0" "$t1" "$t2" "$old_cpu" "$last_cpu" "$new_cpu" "$hz" "$CONNS" "$opens" "$resets" \
    "$old_fds" "$(fds_of "$NEW")" "$old_rss" "$(rss_kb "$NEW")" "$(established)" "$taken" <<'PY'
import sys
k, t0, t1, t2, oc0, oc1, nc, hz, n, opens, resets, ofd, nfd, orss, nrss, est = sys.argv[1:17]
taken = sys.argv[17]
hz, n = float(hz), int(n)
old_ms = (float(oc1) - float(oc0)) / hz * 1000
new_ms = float(nc) / hz * 1000
print(f"upgrade {k}: old exited after {(float(t1) - float(t0)) * 1000:.0f} ms, all {n} up on the new "
      f"one after {(float(t2) - float(t0)) * 1000:.0f} ms ({taken or 'drain'}); CPU old {old_ms:.0f} ms "
      f"({old_ms * 1000 / n:.2f} µs/conn), new {new_ms:.0f} ms ({new_ms * 1000 / n:.2f} µs/conn, "
      f"includes its start); TcpPassiveOpens +{opens}, TcpEstabResets +{resets}; fds {ofd} -> {nfd}; "
      f"RSS {int(orss) // 1024} -> {int(nrss) // 1024} MiB; established :8080 {est}")
PY
  if [ "$CLUSTER" = 1 ] && [ "$MODE" != drain ]; then
    # The bus's part: the old bridge's marker (commands from other nodes in before its
    # fence), and which NATS server the new process took (the old one's: docs/handover.md).
    marker=$(cat "$DIR/server.log" "$DIR/new.log" | grep -o 'commands from the bus are in ([^)]*)' | tail -1 || true)
    follow=$(grep -o -E "on the old process's bus server|connected to the old process's server|no client URL of the cluster" "$DIR/new.log" | tail -1 || true)
    echo "  bus: ${marker:-no marker line}; the new process: ${follow:-no bus server line}"
  fi
done
wait "$LOADGEN" || true
grep -E "attempts|failures|delivered|latency|p50|p99" "$DIR/loadgen.txt" | head -20
python3 - "$DIR/loadgen.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
c, m = r["connections"], r["messages"]
print(f"clients: established {c['established']} reconnects {c['reconnects']} failures {c['failures']} "
      f"up at end {c['up_at_end']}; messages published {m['published']} accepted {m['accepted']} "
      f"delivered {m['delivered']} of {m['expected']} lost {m['lost']} duplicated {m['duplicated']} "
      f"reordered {m['reordered']}")
PY
