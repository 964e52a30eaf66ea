#!/usr/bin/env bash
# A local c10m cluster: N nodes, each in its own network namespace, joined by a Linux bridge,
# with the Redis push registry and the NATS bus in the root namespace.
#
#   scripts/cluster.sh up [N=4]   bridge c10mbr0 (10.77.0.1/24), namespaces c10m-n1..nN
#                                 (node K at 10.77.0.1K: clients :8080, admin :8081),
#                                 redis-server and nats-server on 10.77.0.1, one c10m per
#                                 namespace; waits for every /healthz; prints a summary
#   scripts/cluster.sh down       stops everything and removes namespaces, veths and bridge
#   scripts/cluster.sh status     per node: alive, connections; Redis and NATS load
#   scripts/cluster.sh kill K     SIGKILL node K (its namespace stays, so clients get RST)
#   scripts/cluster.sh start K    start node K again (same flags)
#   scripts/cluster.sh stop K     SIGINT node K and wait for it to exit
#
# Idempotent; needs root. Nodes start with `--node-id nK --registry redis://… --bus nats://…`
# when `c10m serve --help` offers --node-id (the cluster bridge); otherwise they run
# standalone. Every node gets the same admin bearer key (its admin listener is not on
# loopback), kept in the state directory and printed by `up`.
#
# Environment:
#   C10M_CLUSTER_DIR   state: pids, logs, admin key (default /tmp/c10m-cluster)
#   C10M_NODE_SHARDS   shards per node (default 1: four nodes share this box's cores)
#   C10M_NODE_ARGS     extra `c10m serve` flags for every node (e.g. a connection lifetime);
#                      `up` restarts a running node whose flags differ
#   C10M_REDIS_PORT, C10M_NATS_PORT, C10M_NATS_MON_PORT   (6379, 4222, 8222)
#   C10M_CLUSTER_NO_BUILD=1   use target/release/c10m as it is
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
STATE=${C10M_CLUSTER_DIR:-/tmp/c10m-cluster}
BRIDGE=c10mbr0
NET=10.77.0
GW=$NET.1
# Extra root-namespace addresses on the bridge: a load generator there can use them as
# source addresses (each source/target pair has its own ephemeral port range).
SOURCES_FIRST=2
SOURCES_LAST=9
NODES_MAX=9
REDIS_PORT=${C10M_REDIS_PORT:-6379}
NATS_PORT=${C10M_NATS_PORT:-4222}
NATS_MON=${C10M_NATS_MON_PORT:-8222}
SHARDS=${C10M_NODE_SHARDS:-1}
NODE_ARGS=${C10M_NODE_ARGS:-}
BIN=$ROOT/target/release/c10m
HEALTH_DEADLINE_S=30

# Per-namespace kernel settings from tuning/sysctl.conf that matter for a node holding many
# connections and taking reconnect waves. net.* sysctls are per network namespace, so the
# root namespace's values do not reach the nodes. Host-wide ones (fs.*, vm.*,
# net.core.netdev_*) are not set here: tuning/apply.sh owns those.
NS_SYSCTLS=(
  net.core.somaxconn=65535
  net.ipv4.tcp_max_syn_backlog=65535
  net.ipv4.tcp_syncookies=1
  "net.ipv4.ip_local_port_range=1024 65535"
  net.ipv4.ip_local_reserved_ports=8080-8081
  "net.ipv4.tcp_rmem=4096 16384 1048576"
  "net.ipv4.tcp_wmem=4096 16384 1048576"
  net.ipv4.tcp_slow_start_after_idle=0
  net.ipv4.tcp_max_tw_buckets=2000000
  net.ipv4.tcp_fin_timeout=15
  net.ipv4.tcp_tw_reuse=1
  net.ipv4.tcp_retries2=8
  net.ipv4.tcp_keepalive_time=300
  net.ipv4.tcp_keepalive_intvl=30
  net.ipv4.tcp_keepalive_probes=5
)

say() { printf 'cluster: %s\n' "$*"; }
die() { printf 'cluster: %s\n' "$*" >&2; exit 1; }

ns() { echo "c10m-n$1"; }
node_ip() { echo "$NET.$((10 + $1))"; }
node_admin() { echo "$(node_ip "$1"):8081"; }
node_client() { echo "$(node_ip "$1"):8080"; }

need_root() { [ "$(id -u)" = 0 ] || die "needs root (network namespaces, bridge, sysctls)"; }

# Installs what the cluster needs from Debian when it is missing (quiet, idempotent).
ensure_tools() {
  local pkgs=()
  command -v ip >/dev/null || pkgs+=(iproute2)
  command -v curl >/dev/null || pkgs+=(curl)
  command -v jq >/dev/null || pkgs+=(jq)
  command -v redis-server >/dev/null || pkgs+=(redis-server)
  command -v redis-cli >/dev/null || pkgs+=(redis-tools)
  command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || pkgs+=(nats-server)
  [ ${#pkgs[@]} -eq 0 ] && return 0
  say "installing ${pkgs[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${pkgs[@]}" >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive \
           apt-get install -y -q "${pkgs[@]}" >/dev/null; } \
    || die "could not install ${pkgs[*]} with apt-get"
}

nats_bin() { command -v nats-server || echo /usr/sbin/nats-server; }

# True while PID runs (a zombie has exited: its parent may reap it only much later).
running() {
  local st
  st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [ -n "$st" ] && [ "$st" != Z ]
}

# pid from FILE if that process is alive and its command line contains WORD.
alive_pid() {
  local file=$1 word=$2 pid
  [ -f "$file" ] || return 1
  pid=$(cat "$file")
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$word" || return 1
  running "$pid" || return 1
  echo "$pid"
}

# Starts a command detached from this shell, writing its pid (the command's own, as it is
# exec'd) to FILE.
spawn() {
  local file=$1 log=$2
  shift 2
  # shellcheck disable=SC2016 # expanded by the inner shell
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$file" "$@" </dev/null >>"$log" 2>&1 &
  local i
  for i in $(seq 50); do [ -s "$file" ] && return 0; sleep 0.02; done
  die "could not start $1"
}

# Sends SIG to the pid in FILE (if alive and matching WORD) and waits up to WAIT seconds.
stop_pid() {
  local file=$1 word=$2 sig=${3:-TERM} wait_s=${4:-5} pid i
  if pid=$(alive_pid "$file" "$word"); then
    kill "-$sig" "$pid" 2>/dev/null || true
    for i in $(seq $((wait_s * 10))); do running "$pid" || break; sleep 0.1; done
    if running "$pid"; then kill -KILL "$pid" 2>/dev/null || true; sleep 0.2; fi
  fi
  rm -f "$file"
}

admin_key() { cat "$STATE/admin.key"; }

# GET on a node's admin API with the key; empty on failure.
admin_get() {
  curl -s --max-time 1 -H "Authorization: Bearer $(admin_key)" "http://$(node_admin "$1")$2" \
    || true
}

bridge_enabled() { "$BIN" serve --help 2>/dev/null | grep -q -- '--node-id'; }

node_flags() {
  local k=$1
  local flags=(serve --shards "$SHARDS" --no-pin --listen "$(node_client "$k")"
    --admin "$(node_admin "$k")" --auth none --admin-key-file "$STATE/admin.key")
  if bridge_enabled; then
    flags+=(--node-id "n$k" --registry "redis://$GW:$REDIS_PORT" --bus "nats://$GW:$NATS_PORT")
  fi
  # shellcheck disable=SC2206 # NODE_ARGS is a flag list, split on purpose
  flags+=($NODE_ARGS)
  printf '%s\n' "${flags[@]}"
}

net_up() {
  local n=$1 k i
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
  fi
  ip addr replace "$GW/24" dev "$BRIDGE"
  for i in $(seq "$SOURCES_FIRST" "$SOURCES_LAST"); do
    ip addr replace "$NET.$i/32" dev "$BRIDGE"
  done
  ip link set "$BRIDGE" up
  for k in $(seq "$n"); do
    if ! ip netns list | grep -qw "$(ns "$k")"; then
      ip netns add "$(ns "$k")"
    fi
    if ! ip -n "$(ns "$k")" link show eth0 >/dev/null 2>&1; then
      ip link del "c10m-v$k" 2>/dev/null || true
      ip link add "c10m-v$k" type veth peer name eth0 netns "$(ns "$k")"
    fi
    ip link set "c10m-v$k" master "$BRIDGE" up
    ip -n "$(ns "$k")" addr replace "$(node_ip "$k")/24" dev eth0
    ip -n "$(ns "$k")" link set eth0 up
    ip -n "$(ns "$k")" link set lo up
    ip -n "$(ns "$k")" route replace default via "$GW"
    local s
    for s in "${NS_SYSCTLS[@]}"; do
      ip netns exec "$(ns "$k")" sysctl -q -w "$s" >/dev/null 2>&1 \
        || say "warning: could not set $s in $(ns "$k")"
    done
  done
}

services_up() {
  local i
  if ! alive_pid "$STATE/redis.pid" redis-server >/dev/null; then
    spawn "$STATE/redis.pid" "$STATE/redis.log" redis-server --bind "$GW" --port "$REDIS_PORT" \
      --save '' --appendonly no --protected-mode no --daemonize no
  fi
  if ! alive_pid "$STATE/nats.pid" nats-server >/dev/null; then
    # JetStream holds the cluster's history (src/cluster/store.rs).
    spawn "$STATE/nats.pid" "$STATE/nats.log" "$(nats_bin)" -a "$GW" -p "$NATS_PORT" \
      -m "$NATS_MON" -js -sd "$STATE/jetstream"
  fi
  for i in $(seq 100); do
    if redis-cli -h "$GW" -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG \
      && curl -s --max-time 1 "http://$GW:$NATS_MON/healthz" | grep -q ok; then
      return 0
    fi
    alive_pid "$STATE/redis.pid" redis-server >/dev/null \
      || { tail -5 "$STATE/redis.log" >&2; die "redis-server exited (port $REDIS_PORT taken? set C10M_REDIS_PORT)"; }
    alive_pid "$STATE/nats.pid" nats-server >/dev/null \
      || { tail -5 "$STATE/nats.log" >&2; die "nats-server exited (ports $NATS_PORT/$NATS_MON taken? set C10M_NATS_PORT / C10M_NATS_MON_PORT)"; }
    sleep 0.1
  done
  die "redis on $GW:$REDIS_PORT or nats on $GW:$NATS_PORT not answering after 10 s"
}

wait_healthy() {
  local k=$1 i
  for i in $(seq $((HEALTH_DEADLINE_S * 10))); do
    if curl -s --max-time 1 "http://$(node_admin "$k")/healthz" | grep -q ok; then
      return 0
    fi
    if ! alive_pid "$STATE/node$k.pid" c10m >/dev/null; then
      tail -5 "$STATE/node$k.log" >&2
      die "node $k exited while starting (log: $STATE/node$k.log)"
    fi
    sleep 0.1
  done
  die "node $k: no /healthz on $(node_admin "$k") within ${HEALTH_DEADLINE_S}s"
}

node_start() {
  local k=$1
  ip netns list | grep -qw "$(ns "$k")" || die "namespace $(ns "$k") is missing: run up first"
  if alive_pid "$STATE/node$k.pid" c10m >/dev/null; then
    say "node $k already running"
    return 0
  fi
  # `up` writes the flags; a later `start K` reuses them (C10M_NODE_ARGS need not be set).
  [ -s "$STATE/node$k.args" ] || node_flags "$k" >"$STATE/node$k.args"
  local flags=()
  mapfile -t flags <"$STATE/node$k.args"
  echo "--- $(date -u +%FT%T.%3NZ) start: c10m ${flags[*]}" >>"$STATE/node$k.log"
  spawn "$STATE/node$k.pid" "$STATE/node$k.log" ip netns exec "$(ns "$k")" "$BIN" "${flags[@]}"
}

node_count() {
  local n=0
  [ -f "$STATE/nodes" ] && n=$(cat "$STATE/nodes")
  echo "$n"
}

check_node() {
  local k=$1 n
  n=$(node_count)
  if ! [[ "$k" =~ ^[0-9]+$ ]] || [ "$k" -lt 1 ] || [ "$k" -gt "$n" ]; then
    die "node must be 1..$n (is the cluster up?)"
  fi
}

cmd_up() {
  local n=${1:-4} k
  if ! [[ "$n" =~ ^[0-9]+$ ]] || [ "$n" -lt 1 ] || [ "$n" -gt "$NODES_MAX" ]; then
    die "N must be 1..$NODES_MAX (node K gets 10.77.0.1K)"
  fi
  need_root
  ensure_tools
  mkdir -p "$STATE"
  chmod 700 "$STATE"
  if [ ! -s "$STATE/admin.key" ]; then
    (umask 077 && head -c 24 /dev/urandom | base64 | tr -d '/+=' >"$STATE/admin.key")
  fi
  if [ "${C10M_CLUSTER_NO_BUILD:-0}" != 1 ]; then
    say "cargo build --release"
    cargo build --release -q --workspace || die "build failed"
  fi
  [ -x "$BIN" ] || die "$BIN is missing: run cargo build --release"
  local old
  old=$(node_count)
  [ "$old" -gt "$n" ] && die "$old nodes are up; run down first to shrink to $n"
  echo "$n" >"$STATE/nodes"
  net_up "$n"
  services_up
  for k in $(seq "$n"); do
    # A running node keeps running unless its flags changed (C10M_NODE_ARGS, a new binary
    # with the bridge flags).
    if ! diff -q <(node_flags "$k") "$STATE/node$k.args" >/dev/null 2>&1; then
      if alive_pid "$STATE/node$k.pid" c10m >/dev/null; then
        say "node $k: flags changed, restarting"
        stop_pid "$STATE/node$k.pid" c10m INT 12
      fi
      node_flags "$k" >"$STATE/node$k.args"
    fi
    node_start "$k"
  done
  for k in $(seq "$n"); do wait_healthy "$k"; done
  summary "$n"
}

summary() {
  local n=$1 k mode=standalone
  bridge_enabled && mode="bridged (--registry redis://$GW:$REDIS_PORT --bus nats://$GW:$NATS_PORT)"
  echo
  echo "c10m cluster: $n node(s), $mode"
  for k in $(seq "$n"); do
    printf '  n%s  pid %-8s clients ws://%s/ws  admin http://%s\n' "$k" \
      "$(cat "$STATE/node$k.pid")" "$(node_client "$k")" "$(node_admin "$k")"
  done
  echo "  redis   $GW:$REDIS_PORT (pid $(cat "$STATE/redis.pid"))"
  echo "  nats    $GW:$NATS_PORT, monitoring http://$GW:$NATS_MON (pid $(cat "$STATE/nats.pid"))"
  echo "  admin key  $(admin_key)   (file $STATE/admin.key; every node uses it)"
  echo "  state      $STATE (pids, logs)"
  echo "  try        curl -H \"Authorization: Bearer \$(cat $STATE/admin.key)\" http://$(node_admin 1)/stats"
  echo "  load generator sources on the bridge: $NET.$SOURCES_FIRST-$NET.$SOURCES_LAST"
}

cmd_down() {
  need_root
  local k name
  for f in "$STATE"/node*.pid; do
    [ -e "$f" ] || continue
    stop_pid "$f" c10m INT 12
  done
  # Anything still inside one of our namespaces was started by this script.
  for name in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^c10m-n[0-9]+$' || true); do
    for pid in $(ip netns pids "$name" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
    ip netns del "$name"
  done
  stop_pid "$STATE/redis.pid" redis-server TERM 5
  stop_pid "$STATE/nats.pid" nats-server TERM 5
  for name in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 \
    | grep -E '^c10m-v[0-9]+$' || true); do
    ip link del "$name" 2>/dev/null || true
  done
  ip link show "$BRIDGE" >/dev/null 2>&1 && ip link del "$BRIDGE"
  rm -f "$STATE/nodes"
  say "down (logs kept in $STATE)"
}

cmd_status() {
  local n k pid stats
  n=$(node_count)
  [ "$n" -gt 0 ] || { say "not up"; return 1; }
  # bridge: "-" for a standalone node; else registry and bus connected (yes/NO), the users
  # it has announced and the cluster drops.
  printf '%-5s %-16s %-8s %-7s %8s %8s %8s  %s\n' node address pid alive ws sse total bridge
  for k in $(seq "$n"); do
    if pid=$(alive_pid "$STATE/node$k.pid" c10m); then
      stats=$(admin_get "$k" /stats)
      printf '%-5s %-16s %-8s %-7s %8s %8s %8s  %s\n' "n$k" "$(node_ip "$k")" "$pid" yes \
        "$(jq -r '.ws // "?"' <<<"$stats" 2>/dev/null || echo '?')" \
        "$(jq -r '.sse // "?"' <<<"$stats" 2>/dev/null || echo '?')" \
        "$(jq -r '(.ws + .sse) // "?"' <<<"$stats" 2>/dev/null || echo '?')" \
        "$(jq -r 'if .cluster then .cluster as $c | "\($c.node_id): registry \(if $c.registry_connected then "yes" else "NO" end), bus \(if $c.bus_connected then "yes" else "NO" end), users \($c.online_users), dropped \([$c.dropped[]] | add)" else "-" end' <<<"$stats" 2>/dev/null || echo '?')"
    else
      printf '%-5s %-16s %-8s %-7s %8s %8s %8s  %s\n' "n$k" "$(node_ip "$k")" - no - - - -
    fi
  done
  local info
  info=$(redis-cli -h "$GW" -p "$REDIS_PORT" INFO stats 2>/dev/null | tr -d '\r' || true)
  echo "redis $GW:$REDIS_PORT: dbsize $(redis-cli -h "$GW" -p "$REDIS_PORT" DBSIZE 2>/dev/null || echo '?')," \
    "ops/s $(sed -n 's/^instantaneous_ops_per_sec://p' <<<"$info")," \
    "commands $(sed -n 's/^total_commands_processed://p' <<<"$info")"
  local varz
  varz=$(curl -s --max-time 1 "http://$GW:$NATS_MON/varz" || true)
  echo "nats $GW:$NATS_PORT: $(jq -r '"connections \(.connections), in_msgs \(.in_msgs), out_msgs \(.out_msgs)"' <<<"$varz" 2>/dev/null || echo 'not answering')"
}

cmd_kill() {
  need_root
  check_node "$1"
  local pid
  if pid=$(alive_pid "$STATE/node$1.pid" c10m); then
    kill -KILL "$pid"
    for _ in $(seq 250); do running "$pid" || break; sleep 0.02; done
    echo "--- $(date -u +%FT%T.%3NZ) SIGKILL" >>"$STATE/node$1.log"
    say "node $1 (pid $pid) killed"
  else
    say "node $1 is not running"
  fi
  rm -f "$STATE/node$1.pid"
}

cmd_start() {
  need_root
  check_node "$1"
  node_start "$1"
  wait_healthy "$1"
  say "node $1 up (pid $(cat "$STATE/node$1.pid"))"
}

cmd_stop() {
  need_root
  check_node "$1"
  stop_pid "$STATE/node$1.pid" c10m INT 12
  say "node $1 stopped"
}

case "${1:-}" in
  up) cmd_up "${2:-4}" ;;
  down) cmd_down ;;
  status) cmd_status ;;
  kill) cmd_kill "${2:?node number}" ;;
  start) cmd_start "${2:?node number}" ;;
  stop) cmd_stop "${2:?node number}" ;;
  *) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
