#!/usr/bin/env bash
# Runs the same scenarios against c10m and each peer with the same c10m-loadgen, interleaved,
# REPS times, in three suites, then writes bench/RESULTS.md and the charts (medians, ratios
# to c10m).
#
#   bench/run.sh                       everything: install peers, build, run, report
#   CONNS=15000 REPS=3 bench/run.sh    the defaults
#   SUITES="ws sse" bench/run.sh       a subset of the suites (ws sse c100k)
#   SERVERS="c10m tokio" bench/run.sh  a subset of the servers (each suite keeps those of
#                                      its own it can run: c10m tokio glommio nchan uws
#                                      pushpin; c10m-nohist is c10m with --history-ttl-ms 0;
#                                      c10m-base is the c10m binary BASE_BIN, for a
#                                      build side by side, with the flags BASE_ARGS;
#                                      BASE_DESC names it in the report)
#   REPORT_MD=F bench/run.sh           write the table there (charts beside it;
#                                      REPORT_SVG=F puts the ws suite's chart there)
#   SKIP_INSTALL=1 SKIP_BUILD=1 ...    reuse what is installed and built
#   REPORT_ONLY=DIR bench/run.sh       redo the table and charts from an earlier results folder
#   RESULTS_DIR=DIR REPS_FROM=3 SUITES=ws SERVERS=glommio bench/run.sh
#                                      add a repetition that failed to an earlier folder
#
# Suites, each in its own folder under the results folder:
#   ws     CONNS WebSocket connections: c10m tokio glommio nchan uws pushpin;
#   sse    CONNS SSE (EventSource) connections: c10m nchan pushpin;
#   c100k  CONNS_100K WebSocket connections: c10m nchan uws (tokio, glommio and pushpin hold
#          every connection in one process's fd table, which RLIMIT_NOFILE caps at 20,000).
#          Every server that can spread connections over processes or rings gets
#          ceil(CONNS_100K / 19000) of them (c10m shards, nginx workers, uws processes).
# Scenarios, each a fresh loadgen run against a server started once per repetition (all
# traffic on 127.0.0.1, every step under `timeout`):
#   idle       connect all as fast as possible (--rate 0), hold, no messages: user-space
#              memory per connection (server RSS growth, summed over processes), kernel
#              memory per connection (/proc/meminfo Slab growth), connect rate;
#   broadcast  the same, plus BCASTS 32-byte broadcasts to all: fan-out time, deliveries/s;
#   targeted   the same, plus TARGETED_RATE pushes/s to single users for 10 s: latency.
# Server CPU (utime+stime of every server process, /proc/PID/stat) is read before and after
# each run; CPU per delivered message is (run CPU − idle run CPU) / messages delivered.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
CONNS=${CONNS:-15000}
CONNS_100K=${CONNS_100K:-100000}
REPS=${REPS:-3}
REPS_100K=${REPS_100K:-$REPS} # repetitions of the c100k suite
REPS_FROM=${REPS_FROM:-1} # resume: run repetitions REPS_FROM..REPS into an existing RESULTS_DIR
SUITES=${SUITES:-"ws sse c100k"}
SERVERS=${SERVERS:-"c10m tokio glommio nchan uws pushpin"}
SHARDS=${SHARDS:-$(nproc)}
HOLD=${HOLD:-12s}
BCASTS=${BCASTS:-20}
TARGETED_RATE=${TARGETED_RATE:-1000}
CONNECT_RATE=${CONNECT_RATE:-0}
SOURCES=${SOURCES:-127.0.0.2-127.0.0.11}
results=${RESULTS_DIR:-$here/results/$(date -u +%Y%m%d-%H%M%S)}
# Binaries: cargo's default target folders, or CARGO_TARGET_DIR where it is set.
bin() { echo "${CARGO_TARGET_DIR:-$1/target}/release/$2"; }
loadgen=$(bin "$root" c10m-loadgen)
command_line="CONNS=$CONNS CONNS_100K=$CONNS_100K REPS=$REPS REPS_100K=$REPS_100K SUITES='$SUITES' SERVERS='$SERVERS' HOLD=$HOLD BCASTS=$BCASTS TARGETED_RATE=$TARGETED_RATE CONNECT_RATE=$CONNECT_RATE bench/run.sh"

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

# One section and one chart per suite: results.svg (or REPORT_SVG) for ws, results-SUITE.svg
# for the others.
report() {
    local dir=$1 md=${REPORT_MD:-$here/RESULTS.md} args=() suite svg
    for suite in ws sse c100k; do
        [[ -f $dir/$suite/meta.json ]] || continue
        svg=$(dirname "$md")/results$([[ $suite == ws ]] || echo "-$suite").svg
        [[ $suite != ws || -z ${REPORT_SVG:-} ]] || svg=$REPORT_SVG
        args+=(--results "$dir/$suite" --svg "$svg")
    done
    "$(bin "$here/chart" c10m-bench-chart)" "${args[@]}" --md "$md" \
        --explain "$here/explanations.tsv"
    log "wrote $md and its charts from $dir"
}

if [[ -n ${REPORT_ONLY:-} ]]; then
    report "$REPORT_ONLY"
    exit 0
fi

install_peers() {
    if ! [[ -f /usr/lib/nginx/modules/ngx_nchan_module.so \
        && -f /usr/lib/nginx/modules/ngx_http_js_module.so ]] \
        || ! command -v pushpin >/dev/null || ! command -v zurl >/dev/null \
        || ! command -v node >/dev/null || ! command -v npm >/dev/null \
        || ! command -v curl >/dev/null || ! command -v pgrep >/dev/null; then
        log "installing nginx + Nchan, Pushpin and Node.js from Debian"
        timeout 300 apt-get update -qq
        local node=()
        command -v node >/dev/null || node=(nodejs)
        command -v npm >/dev/null || node+=(npm)
        DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq \
            nginx-light libnginx-mod-nchan libnginx-mod-http-js pushpin zurl curl procps \
            "${node[@]}" >/dev/null
    fi
    if [[ ! -d $here/peers/uws/node_modules/uws-pack ]]; then
        log "installing uWebSockets.js (npm ci)"
        (cd "$here/peers/uws" && timeout 300 npm ci --no-audit --no-fund --loglevel=error)
    fi
}

build() {
    log "building c10m, c10m-loadgen, the peers and the chart (release)"
    (cd "$root" && timeout 1800 cargo build --release -q -p c10m -p c10m-loadgen)
    for crate in peers/tokio-push peers/glommio-push chart; do
        (cd "$here/$crate" && timeout 1800 cargo build --release -q)
    done
}

[[ -n ${SKIP_INSTALL:-} ]] || install_peers
[[ -n ${SKIP_BUILD:-} ]] || build

# Ports per server: client, admin (pushpin also uses client + 2 and + 3).
declare -A PORT=([c10m]=29080 [tokio]=29180 [glommio]=29280 [nchan]=29380 [c10m-nohist]=29480
    [c10m-base]=29780 [uws]=29580 [pushpin]=29680)
# Loadgen options per server. Pushpin answers 502 to part of a burst of connects (its proxy's
# queue of requests to the origin overflows at about 500), so its clients reconnect, with
# backoff; the failures row counts those 502s and the connections it closes.
declare -A LOADGEN_ARGS=([pushpin]="--reconnect")
# Servers that may never have every connection up: memory is read after this many 0.1 s
# polls instead (Pushpin's SSE ramp at 15,000 with reconnects takes ~16 s, its hold 12 s).
declare -A MEM_WAIT=([pushpin]=200)
# Servers started afresh for every scenario: after 15,000 connections close, Pushpin's zurl,
# proxy and handler stay busy with the closes for minutes and the next scenario's connects
# time out.
declare -A FRESH=([pushpin]=1)

server_pid=
server_children=
wrapper=
# start_server NAME UNITS: UNITS is the shards, workers or processes of a server that has
# them (a suite's default: the vCPUs).
start_server() {
    local name=$1 units=$2 listen=127.0.0.1:${PORT[$1]} admin=127.0.0.1:$((PORT[$1] + 1))
    local out=$results/$name-server.log
    case $name in
    c10m) timeout 3600 "$(bin "$root" c10m)" serve --shards "$units" \
            --listen "$listen" --admin "$admin" >>"$out" 2>&1 & ;;
    # shellcheck disable=SC2086 # BASE_ARGS is a list of flags
    c10m-base) timeout 3600 "${BASE_BIN:?c10m-base needs BASE_BIN=/path/to/other/c10m}" serve \
            --shards "$units" ${BASE_ARGS:-} --listen "$listen" --admin "$admin" >>"$out" 2>&1 & ;;
    c10m-nohist) timeout 3600 "$(bin "$root" c10m)" serve --shards "$units" \
            --history-ttl-ms 0 --listen "$listen" --admin "$admin" >>"$out" 2>&1 & ;;
    tokio) timeout 3600 "$(bin "$here/peers/tokio-push" tokio-push)" \
            --listen "$listen" --admin "$admin" >>"$out" 2>&1 & ;;
    glommio) timeout 3600 "$(bin "$here/peers/glommio-push" glommio-push)" \
            --shards "$units" --listen "$listen" --admin "$admin" >>"$out" 2>&1 & ;;
    nchan) timeout 3600 "$here/peers/nchan/run.sh" "$listen" "$admin" \
            "$results/nchan-prefix" "$units" >>"$out" 2>&1 & ;;
    uws) timeout 3600 node "$here/peers/uws/server.mjs" --listen "$listen" --admin "$admin" \
            --procs "$units" >>"$out" 2>&1 & ;;
    pushpin) timeout 3600 "$here/peers/pushpin/run.sh" "$listen" "$admin" \
            "$results/pushpin-scratch" >>"$out" 2>&1 & ;;
    esac
    wrapper=$!
    for _ in $(seq 300); do
        if curl -sf -o /dev/null --max-time 1 "http://$admin/healthz"; then
            server_pid=$(pgrep -P "$wrapper" | head -n 1)
            server_children=$(pgrep -P "$server_pid" | paste -sd ' ' || true)
            log "$name up (pid $server_pid, children: ${server_children:-none})"
            return 0
        fi
        sleep 0.2
    done
    log "$name did not answer /healthz within 60 s; see $out"
    kill -TERM "$wrapper" 2>/dev/null || true
    wait "$wrapper" 2>/dev/null || true
    wrapper=
    return 1
}

# Stops the server, then whatever of its children outlived it (workers, Pushpin's origin).
stop_server() {
    [[ -n $server_pid ]] || return 0
    local p
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$server_pid" 2>/dev/null || true
    wait "$wrapper" 2>/dev/null || true
    for p in $server_children; do
        for _ in $(seq 20); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
    done
    server_pid=
    server_children=
    wrapper=
}

# Every process of the server: the pid and its children (nginx workers).
server_pids() { echo "$server_pid" $(pgrep -P "$server_pid" || true); }
rss_bytes() {
    local total=0 kb
    for p in $(server_pids); do
        kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
        total=$((total + ${kb:-0} * 1024))
    done
    echo "$total"
}
cpu_ticks() {
    local total=0 t
    for p in $(server_pids); do
        # utime and stime are fields 14 and 15; the command name (field 2) holds no spaces here.
        t=$(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)
        total=$((total + ${t:-0}))
    done
    echo "$total"
}
slab_bytes() { awk '/^Slab:/ {printf "%.0f\n", $2 * 1024}' /proc/meminfo; }

# run_scenario SERVER REP SCENARIO LOADGEN-ARGS... (the suite's PROTO and CONNS)
run_scenario() {
    local name=$1 rep=$2 scenario=$3
    shift 3
    local tag=$name-$rep-$scenario json=$name-$rep-$scenario.json
    local admin=127.0.0.1:$((PORT[$name] + 1))
    local rss0 slab0 cpu0 rss1=0 slab1=0 cpu1 lg
    # shellcheck disable=SC2206 # the per-server options are words
    local extra=(${LOADGEN_ARGS[$name]:-})
    rss0=$(rss_bytes); slab0=$(slab_bytes); cpu0=$(cpu_ticks)
    timeout $((120 + CONNS / 1000)) "$loadgen" --proto "$PROTO" \
        --target "127.0.0.1:${PORT[$name]}" --admin "$admin" \
        --sources "$SOURCES" --conns "$CONNS" --rate "$CONNECT_RATE" --hold "$HOLD" \
        --drain 3s --connect-timeout 10s --server-pid "$server_pid" --json "$results/$json" \
        "${extra[@]}" "$@" >"$results/$tag.out" 2>"$results/$tag.err" &
    lg=$!
    # Memory is read once the ramp is over (every connection has an outcome), mid-hold.
    local waited=0
    while kill -0 "$lg" 2>/dev/null; do
        if grep -qE " up $CONNS/$CONNS " "$results/$tag.err" 2>/dev/null \
            || ((waited > ${MEM_WAIT[$name]:-$((300 + CONNS / 100))})); then
            sleep 2
            rss1=$(rss_bytes); slab1=$(slab_bytes)
            break
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    if ((rss1 == 0)); then rss1=$(rss_bytes); slab1=$(slab_bytes); fi
    wait "$lg" || log "$tag: loadgen exited with $?"
    sleep 1 # let the server finish closing the connections
    cpu1=$(cpu_ticks)
    printf '{"server":"%s","rep":%d,"scenario":"%s","report":"%s","rss_before":%d,"rss_held":%d,"slab_before":%d,"slab_held":%d,"cpu_before":%d,"cpu_after":%d,"clk_tck":%d}\n' \
        "$name" "$rep" "$scenario" "$json" "$rss0" "$rss1" "$slab0" "$slab1" "$cpu0" "$cpu1" \
        "$(getconf CLK_TCK)" >>"$results/runs.jsonl"
    log "$tag: $(grep -E 'delivered|connect rate|server \(pid' "$results/$tag.out" | tr -s ' ' | paste -sd ';')"
}

# afresh NAME UNITS: restarts a server of FRESH between scenarios.
afresh() {
    [[ -n ${FRESH[$1]:-} ]] || return 0
    stop_server
    start_server "$1" "$2"
}

# run_suite SUITE: every repetition of every server of the suite, into $results/SUITE.
run_suite() {
    local suite=$1 results=$results/$1 units=$SHARDS servers=() unable=() columns=() name
    local PROTO=ws CONNS=$CONNS REPS=$REPS title why
    case $suite in
    ws) title="WebSocket, $CONNS connections"
        for name in $SERVERS; do
            case $name in
            pushpin) ((CONNS <= 5000)) && servers+=("$name") || unable+=("$name") ;;
            *) servers+=("$name") ;;
            esac
            columns+=("$name")
        done ;;
    sse) PROTO=sse title="SSE (EventSource), $CONNS connections"
        for name in $SERVERS; do
            case $name in
            c10m | c10m-base | nchan | pushpin) servers+=("$name") ;;
            esac
        done ;;
    c100k) CONNS=$CONNS_100K REPS=$REPS_100K title="WebSocket, $CONNS_100K connections"
        units=$(((CONNS + 18999) / 19000))
        ((units > SHARDS)) || units=$SHARDS
        for name in $SERVERS; do
            case $name in
            c10m | c10m-base | nchan | uws) servers+=("$name") ;;
            tokio | glommio | pushpin) unable+=("$name") ;;
            *) continue ;;
            esac
            columns+=("$name")
        done ;;
    *) log "unknown suite $suite (ws sse c100k)"; return 1 ;;
    esac
    ((${#servers[@]} > 0)) || return 0
    mkdir -p "$results"
    log "suite $suite ($title) in $results"
    local servers_json unable_json=
    ((${#columns[@]} > 0)) || columns=("${servers[@]}")
    servers_json=$(printf '"%s",' "${columns[@]}")
    for name in "${unable[@]}"; do
        case $suite:$name in
        c100k:tokio | c100k:glommio) why="one process holds every connection in its fd table, which RLIMIT_NOFILE caps at $(ulimit -Hn)" ;;
        c100k:pushpin) why="condure, one process, holds every connection in its fd table, which RLIMIT_NOFILE caps at $(ulimit -Hn)" ;;
        ws:pushpin) why="every WebSocket event is an HTTP request through zurl to the origin (WebSocket-over-HTTP), and at this size zurl, pushpin-proxy and pushpin-handler fill both vCPUs: a probe at 1,000 connects/s brought 13,570 of 15,000 up (4,461 answered 502, 1,565 closed by Pushpin) and one broadcast reached 2,402 of the 119,201 deliveries expected, and after the close of 15,000 connections the next run's connects timed out for minutes; the harness runs it here only up to 5,000 connections" ;;
        esac
        unable_json+="\"$name\": \"$why\","
    done
    local base_note=
    [[ " ${servers[*]} " != *" c10m-base "* ]] \
        || base_note="\"c10m-base: another build of c10m run beside this one (${BASE_DESC:-$BASE_BIN})${BASE_ARGS:+, with $BASE_ARGS}; it is not a peer, so its cells are not listed under where c10m does not lead.\","
    [[ -f $results/meta.json ]] || cat >"$results/meta.json" <<JSON
{"suite": "$suite", "title": "$title",
 "machine": "$(nproc) vCPU $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo | tr -d '"'), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r), shared with other workloads (load average at start $(cut -d' ' -f1-3 /proc/loadavg))",
 "date": "$(date -u +'%Y-%m-%d %H:%M UTC')",
 "command": "$command_line",
 "conns": $CONNS, "reps": $REPS, "servers": [${servers_json%,}],
 "unable": {${unable_json%,}},
 "notes": [
  "Server and load generator share the same $(nproc) vCPUs, so fan-out and latency measure the pair; every server gets the same loadgen.",
  "Memory is read mid-hold once all connections are up. RSS is summed over all server processes (nginx master + workers, the uws primary + workers, Pushpin's runner, condure, zurl, proxy, handler and origin); kernel memory is the growth of Slab in /proc/meminfo divided by connections, both ends of each loopback connection together, and includes whatever else the machine did meanwhile.",
  "c10m runs as a new user gets it: transparent huge pages off for its process (since 402d1ce; MIMALLOC_ALLOW_THP=1 turns them back on), and a receive pool that gives a quiet shard's unused buffers back (since d1d3526). Figures before 2026-12-08 were taken with huge pages, which the allocator faults in at start, so they read lower per connection (see docs/measurements.md, Transparent huge pages).",
  "CPU per delivery: server utime+stime over the whole broadcast (or targeted) run minus the same over the idle run of the same repetition, divided by deliveries; includes publish request handling.",
  "Peers: tokio-push = tokio multi-thread runtime + axum 0.8 (tokio-tungstenite 0.29), 4 KiB read buffer, no write buffer, listen backlog 4096; glommio-push = glommio 0.9, one executor per vCPU, async-tungstenite 0.28, default task queues; nchan = nginx 1.22 + Nchan 1.3.6 from Debian, one worker per vCPU, publishing through a short njs handler that answers 202 (Nchan itself answers 201 when a channel has subscribers); uws = uWebSockets.js v20 (npm uws-pack 20.0.8) on Node.js 20, one process per vCPU on a SO_REUSEPORT port, uWS pub/sub in each, a publish relayed to the other processes over Node IPC; pushpin = Pushpin 1.36 (condure 1.9, zurl 1.11) from Debian with a node:http GRIP origin, its 2,500 messages/s delivery limit lifted, WebSocket clients reaching the origin as WebSocket-over-HTTP.",
  $base_note
  "Connect rate is N divided by loadgen's ramp time, which at N = 15,000 is only 0.5-3 s and comes in steps of about 0.25 s: read differences under ~30 % as noise.",
  "Scenarios: idle = $CONNS $PROTO connections, connect rate $CONNECT_RATE (0 = as fast as possible), hold $HOLD; broadcast = the same plus $BCASTS broadcasts of 32 B at 2/s; targeted = the same plus $TARGETED_RATE user pushes/s of 32 B for 10 s (one connection per user).",
  "Shards, workers or processes per server: $units (c10m --shards, nginx worker_processes, uws processes$([[ $suite == c100k ]] && echo ": ceil($CONNS / 19,000), the connections one ring's table or one process's fds can hold under RLIMIT_NOFILE $(ulimit -Hn)"))."
 ]}
JSON
    local rep order shift_by
    for rep in $(seq "$REPS_FROM" "$REPS"); do
        # Rotate the order each repetition so no server always runs first or last.
        order=("${servers[@]}")
        shift_by=$(((rep - 1) % ${#order[@]}))
        order=("${order[@]:shift_by}" "${order[@]:0:shift_by}")
        for name in "${order[@]}"; do
            log "$suite rep $rep/$REPS: $name"
            start_server "$name" "$units" || continue
            run_scenario "$name" "$rep" idle
            afresh "$name" "$units" || continue
            run_scenario "$name" "$rep" broadcast --publish-to all --publish-rate 2 \
                --publish-count "$BCASTS" --payload-bytes 32
            afresh "$name" "$units" || continue
            run_scenario "$name" "$rep" targeted --publish-to user \
                --publish-rate "$TARGETED_RATE" --publish-count $((TARGETED_RATE * 10)) \
                --payload-bytes 32
            stop_server
        done
    done
}

trap stop_server EXIT
mkdir -p "$results"
log "results in $results"
for suite in $SUITES; do
    run_suite "$suite"
done
report "$results"
