#!/usr/bin/env bash
# The load and failure drill on the local cluster (scripts/cluster.sh).
#
#   scripts/cluster_run.sh [nodes=4]
#
# Brings the cluster up with a short connection lifetime (restarting nodes whose flags
# differ), then runs c10m-loadgen from the root namespace against every node: CONNS
# WebSocket connections round robin over the nodes, per-user publishes at PUBLISH_RATE/s.
# With the cluster bridge (nodes started with --node-id) every publish goes through node 1's
# admin API, so most deliveries cross nodes; standalone nodes share nothing, so every publish
# goes to every node's admin API instead (a client sees it once, from the node it is on).
# At KILL_AT seconds node KILL_NODE is SIGKILLed: its clients reconnect (each reconnect picks
# another target) and the drill times how long until all are back on the others. At
# START_AT it is started again; as connections reach their lifetime (LIFETIME_MS less up to
# 20 % jitter) they reconnect elsewhere and load spreads back onto it.
#
# Once a second a sampler writes timeline.csv: connections per node, Redis
# instantaneous_ops_per_sec and total_commands_processed, NATS in_msgs/out_msgs, each node's
# RSS. The summary prints connections per node, RSS growth per connection, delivery
# latency, the kill timeline, messages lost and the Redis/NATS load during the reconnect
# wave. With the bridge, nodes get a registry TTL of REGISTRY_TTL_MS (short, so that the
# registry forgetting the killed node is seen within the run: the drill counts, about every
# half second after the kill, the users whose sorted set still holds the killed node with a
# live score, one pipelined ZSCORE per user), and after the restart it checks that
# publishes reach the users that reconnected elsewhere. Everything is bounded in time (the run
# lasts RUN_S seconds plus a drain) and goes only to the cluster's own namespaces.
#
# Environment (defaults): FRESH=1 (restart every node first) CONNS=30000 RATE=3000 PUBLISH_RATE=200 RUN_S=90 KILL_NODE=2
# KILL_AT=20 START_AT=35 LIFETIME_MS=45000 REGISTRY_TTL_MS=12000
# C10M_CLUSTER_DIR=/tmp/c10m-cluster
set -euo pipefail
cd "$(dirname "$0")/.."
NODES=${1:-4}
export CONNS=${CONNS:-30000} RATE=${RATE:-3000} PUBLISH_RATE=${PUBLISH_RATE:-200}
export RUN_S=${RUN_S:-90} KILL_NODE=${KILL_NODE:-2} KILL_AT=${KILL_AT:-20}
export START_AT=${START_AT:-35} LIFETIME_MS=${LIFETIME_MS:-45000}
export REGISTRY_TTL_MS=${REGISTRY_TTL_MS:-12000}
export C10M_CLUSTER_DIR=${C10M_CLUSTER_DIR:-/tmp/c10m-cluster}
STATE=$C10M_CLUSTER_DIR

if [ "$KILL_NODE" -lt 1 ] || [ "$KILL_NODE" -gt "$NODES" ] || [ "$NODES" -lt 2 ]; then
  echo "cluster_run: KILL_NODE must be 1..$NODES and there must be at least 2 nodes" >&2
  exit 2
fi
if ! [ "$KILL_AT" -lt "$START_AT" ] || ! [ "$START_AT" -lt "$RUN_S" ]; then
  echo "cluster_run: need KILL_AT < START_AT < RUN_S" >&2
  exit 2
fi
ramp_s=$(( (CONNS + RATE - 1) / RATE ))
if [ "$ramp_s" -ge "$KILL_AT" ]; then
  echo "cluster_run: the ramp (CONNS/RATE = ${ramp_s}s) must end before KILL_AT" >&2
  exit 2
fi

# Goaways ask for a reconnect within 2 s; the lifetime makes connections cycle.
node_args="--conn-lifetime-ms-max $LIFETIME_MS --goaway-reconnect-ms-max 2000"
[ -x target/release/c10m ] || cargo build --release -q --workspace
if target/release/c10m serve --help | grep -q -- '--registry-ttl-ms'; then
  node_args+=" --registry-ttl-ms $REGISTRY_TTL_MS"
fi
# Every run starts on fresh nodes (FRESH=1): RSS growth and the bridges' counters are then
# this run's alone. A clean stop also takes the node's entries out of the registry.
if [ "${FRESH:-1}" = 1 ] && [ -s "$C10M_CLUSTER_DIR/nodes" ]; then
  for k in $(seq "$(cat "$C10M_CLUSTER_DIR/nodes")"); do
    bash scripts/cluster.sh stop "$k" >/dev/null
  done
fi
C10M_NODE_ARGS=$node_args bash scripts/cluster.sh up "$NODES"
[ -x target/release/c10m-loadgen ] || cargo build --release -q -p c10m-loadgen

RUN_DIR=$STATE/run-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$RUN_DIR"
export RUN_DIR NODES
if target/release/c10m serve --help | grep -q -- '--node-id'; then
  export BRIDGED=1
else
  export BRIDGED=0
fi
echo "cluster_run: results in $RUN_DIR"

python3 - <<'PY'
import atexit, csv, json, os, re, socket, statistics, subprocess, sys, threading, time
import urllib.request

env = os.environ
conns, rate = int(env["CONNS"]), float(env["RATE"])
publish_rate, run_s = float(env["PUBLISH_RATE"]), int(env["RUN_S"])
kill_node, kill_at, start_at = int(env["KILL_NODE"]), float(env["KILL_AT"]), float(env["START_AT"])
nodes, run_dir, state = int(env["NODES"]), env["RUN_DIR"], env["C10M_CLUSTER_DIR"]
bridged = env["BRIDGED"] == "1"
lifetime_ms = int(env["LIFETIME_MS"])
ttl_ms = int(env["REGISTRY_TTL_MS"])
gw, redis_port, nats_mon = "10.77.0.1", int(env.get("C10M_REDIS_PORT", 6379)), int(
    env.get("C10M_NATS_MON_PORT", 8222))
key = open(os.path.join(state, "admin.key")).read().split()[0]
if bridged and kill_node == 1:
    sys.exit("cluster_run: publishes go through node 1's admin on a bridged cluster: "
             "set KILL_NODE to another node")
ip = lambda k: f"10.77.0.{10 + k}"
ramp_s = conns / rate
hold_s = max(1, round(run_s - ramp_s))


def node_stats(k):
    """(client connections (ws + sse), RSS bytes) of node k, or (None, None)."""
    req = urllib.request.Request(f"http://{ip(k)}:8081/stats",
                                 headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=0.5) as r:
            s = json.load(r)
        return s["ws"] + s["sse"], s.get("rss_bytes")
    except Exception:
        return None, None


def node_conns(k):
    """Client connections (ws + sse) on node k, or None when it does not answer."""
    return node_stats(k)[0]


probe_commands = [0]  # the drill's own Redis lookups, kept out of the load figures


def registry_nodes(users, deadline_s=10.0):
    """For each user, the nodes the Redis registry lists with a live score (the nodes'
    own lookup: ZRANGEBYSCORE c10m:u:<user> now +inf), pipelined on one connection; None
    when Redis does not answer in time."""
    now = int(time.time() * 1000)
    req = b"".join(
        b"*4\r\n$13\r\nZRANGEBYSCORE\r\n$%d\r\n%s\r\n$%d\r\n%d\r\n$4\r\n+inf\r\n"
        % (len(k), k, len(str(now)), now)
        for k in (f"c10m:u:{u}".encode() for u in users))
    probe_commands[0] += len(users)
    try:
        with socket.create_connection((gw, redis_port), timeout=deadline_s) as s:
            s.sendall(req)
            f = s.makefile("rb")
            out = []
            for _ in users:
                head = f.readline()
                if not head.startswith(b"*"):
                    return None
                members = []
                for _ in range(int(head[1:])):
                    n = int(f.readline()[1:])
                    members.append(f.read(n + 2)[:-2].decode())
                out.append(members)
            return out
    except Exception:
        return None


def redis_stats():
    try:
        with socket.create_connection((gw, redis_port), timeout=0.5) as s:
            s.sendall(b"INFO stats\r\n")
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
                head, _, rest = data.partition(b"\r\n")
                if head.startswith(b"$") and len(rest) >= int(head[1:]):
                    break
        fields = dict(l.split(":", 1) for l in data.decode().splitlines() if ":" in l)
        return int(fields["instantaneous_ops_per_sec"]), int(fields["total_commands_processed"])
    except Exception:
        return None, None


def nats_varz():
    try:
        with urllib.request.urlopen(f"http://{gw}:{nats_mon}/varz", timeout=0.5) as r:
            v = json.load(r)
        return v["in_msgs"], v["out_msgs"]
    except Exception:
        return None, None


rows, stop = [], threading.Event()
t0 = time.time()


def sampler():
    cols = ["t_s"] + [f"n{k}" for k in range(1, nodes + 1)] + [
        "redis_ops_per_sec", "redis_total_commands", "nats_in_msgs", "nats_out_msgs"] + [
        f"n{k}_rss" for k in range(1, nodes + 1)] + ["drill_probe_commands"]
    with open(os.path.join(run_dir, "timeline.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for i in range(run_s + 60):  # bounded: the run plus its drain and slack
            due = t0 + i
            if stop.wait(max(0.0, due - time.time())):
                return
            st = [node_stats(k) for k in range(1, nodes + 1)]
            row = [round(time.time() - t0, 2)] + [c for c, _ in st]
            row += list(redis_stats()) + list(nats_varz()) + [r for _, r in st]
            row.append(probe_commands[0])
            rows.append(row)
            w.writerow(["" if v is None else v for v in row])
            f.flush()


admins = [f"{ip(1)}:8081"] if bridged else [f"{ip(k)}:8081" for k in range(1, nodes + 1)]
cmd = ["target/release/c10m-loadgen", "--proto", "ws"]
for k in range(1, nodes + 1):
    cmd += ["--target", f"{ip(k)}:8080"]
cmd += ["--sources", "10.77.0.2-10.77.0.9", "--conns", str(conns), "--rate", str(int(rate)),
        "--hold", f"{hold_s}s", "--reconnect", "--backoff-base", "100ms", "--backoff-max", "2s",
        "--users", "u{n}", "--publish-to", "user", "--publish-rate", str(publish_rate),
        "--payload-bytes", "64", "--drain", "3s", "--json", os.path.join(run_dir, "report.json")]
for a in admins:
    cmd += ["--admin", a]
cmd += ["--admin-key-file", os.path.join(state, "admin.key")]
with open(os.path.join(run_dir, "command.txt"), "w") as f:
    f.write(" ".join(cmd) + "\n")
print("cluster_run:", " ".join(cmd), flush=True)

t0 = time.time()
threading.Thread(target=sampler, daemon=True).start()
progress = open(os.path.join(run_dir, "progress.log"), "w")
report_txt = open(os.path.join(run_dir, "report.txt"), "w")
lg = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=report_txt, stderr=progress)
events = {}


def end_loadgen():
    """On any early exit the load generator goes too (it would stop by itself anyway)."""
    if lg.poll() is None:
        lg.kill()
        lg.wait()


atexit.register(end_loadgen)


def cluster(*args):
    subprocess.run(["bash", "scripts/cluster.sh", *map(str, args)], check=True,
                   stdout=subprocess.DEVNULL)


def sleep_until(t):
    while time.time() - t0 < t:
        if lg.poll() is not None:
            sys.exit(f"cluster_run: c10m-loadgen ended early; see {run_dir}/progress.log")
        time.sleep(min(0.05, max(0.0, t - (time.time() - t0))))


sleep_until(kill_at - 0.5)
before = {k: node_conns(k) for k in range(1, nodes + 1)}
users = [f"u{n}" for n in range(conns)]
victims = None
if bridged:
    # The killed node's users as the registry has them just before the kill.
    reg = registry_nodes(users)
    if reg is not None:
        victims = [u for u, m in zip(users, reg) if f"n{kill_node}" in m]
sleep_until(kill_at)
events["kill"] = time.time() - t0
cluster("kill", kill_node)
# The kill call returns once the process is gone.
events["dead"] = time.time() - t0
# Poll the survivors every 100 ms until they hold every client again (bounded); the true
# moment lies between the previous poll's start and this one's end.
others = [k for k in range(1, nodes + 1) if k != kill_node]
recovered, after, polls = None, {}, [events["dead"]]
while time.time() - t0 < start_at - 0.2:
    polls.append(time.time() - t0)
    after = {k: node_conns(k) for k in others}
    if all(v is not None for v in after.values()) and sum(after.values()) >= conns:
        recovered = time.time() - t0
        break
    time.sleep(0.1)
events["recovered"] = recovered
# The registry forgetting the dead node: until no user lists it with a live score (at most
# one TTL after the kill), poll every half second (bounded by the restart).
forget = []  # (t after the kill, victims still listing the dead node, victims listed elsewhere)
if victims:
    while time.time() - t0 < start_at - 0.6:
        t_poll = time.time() - t0
        reg = registry_nodes(victims, deadline_s=2.0)
        if reg is not None:
            dead = sum(1 for m in reg if f"n{kill_node}" in m)
            moved = sum(1 for m in reg if any(x != f"n{kill_node}" for x in m))
            forget.append((t_poll - events["kill"], dead, moved))
            if dead == 0:
                break
        time.sleep(max(0.0, 0.5 - (time.time() - t0 - t_poll)))
sleep_until(start_at)
events["start"] = time.time() - t0
cluster("start", kill_node)
try:
    lg.wait(timeout=run_s + 120)
except subprocess.TimeoutExpired:
    lg.kill()
    sys.exit("cluster_run: c10m-loadgen ran past its bound and was killed")
events["end"] = time.time() - t0
time.sleep(1.5)
stop.set()
progress.close()
report_txt.close()

# ---- analysis ----
unit = {"µs": 1e-3, "ms": 1.0, "s": 1e3}


def ms(text):
    m = re.match(r"([\d.]+)(µs|ms|s)$", text)
    return float(m.group(1)) * unit[m.group(2)] if m else None


lines = []
pat = re.compile(r"\[\s*([\d.]+)s\] up (\d+)/\d+ .*msgs (\d+)/s p50 (\S+) p99 (\S+) "
                 r"lost (\d+) absent (\d+)")
for line in open(os.path.join(run_dir, "progress.log"), encoding="utf-8"):
    m = pat.search(line)
    if m:
        lines.append((float(m.group(1)), int(m.group(2)), int(m.group(3)), ms(m.group(4)),
                      ms(m.group(5)), int(m.group(6)), int(m.group(7))))
report = json.load(open(os.path.join(run_dir, "report.json")))
out = []
say = lambda s="": out.append(s)
mode = "bridged (publishes through n1's admin)" if bridged else (
    "STANDALONE nodes, no bridge (each publish sent to every node's admin)")
say(f"drill: {nodes} nodes, {mode}")
say(f"  {conns} WebSocket connections at {int(rate)}/s, user publishes {publish_rate:g}/s, "
    f"lifetime {lifetime_ms} ms (-20 % jitter), run {run_s} s")
say("connections per node before the kill: " +
    "  ".join(f"n{k} {before[k]}" for k in sorted(before)))
rss_col = lambda k: nodes + 4 + k
base = next((r for r in rows if all(r[rss_col(k)] for k in range(1, nodes + 1))), None)
full = [r for r in rows if r[0] < kill_at and all(r[k] for k in range(1, nodes + 1))
        and all(r[rss_col(k)] for k in range(1, nodes + 1))]
if base and full:
    last = full[-1]
    say(f"RSS growth per connection (t={base[0]:.0f} s to t={last[0]:.0f} s): " + "  ".join(
        f"n{k} {(last[rss_col(k)] - base[rss_col(k)]) / last[k]:.0f} B" for k in range(1, nodes + 1))
        + f"  (RSS at t={last[0]:.0f} s: " + " ".join(
        f"{last[rss_col(k)] / 2**20:.1f}" for k in range(1, nodes + 1)) + " MiB)")
steady = [l for l in lines if ramp_s + 2 <= l[0] < kill_at and l[2] > 0]
if steady:
    say(f"delivery latency, steady state (t={ramp_s + 2:.0f}..{kill_at:.0f} s, "
        f"{len(steady)} one-second windows, median of each): "
        f"p50 {statistics.median(l[3] for l in steady):.2f} ms, "
        f"p99 {statistics.median(l[4] for l in steady):.2f} ms")
lat = report["latency_us"]
say(f"delivery latency, whole run (report): p50 {lat['p50'] / 1e3:.2f} ms, "
    f"p99 {lat['p99'] / 1e3:.2f} ms, max {lat['max'] / 1e3:.2f} ms ({lat['count']} deliveries)")
say(f"kill: n{kill_node} SIGKILLed at t={events['kill']:.2f} s holding {before[kill_node]} "
    f"(gone at t={events['dead']:.2f} s)")
if recovered is not None:
    say(f"  all {conns} clients on the other nodes {polls[-2] - events['kill']:.2f}.."
        f"{recovered - events['kill']:.2f} s after the kill (between the last two /stats "
        f"polls, {len(polls) - 1} polls): " + "  ".join(f"n{k} {after[k]}" for k in sorted(after)))
else:
    say(f"  NOT all clients back before the restart at {start_at:.0f} s: " +
        "  ".join(f"n{k} {after.get(k)}" for k in sorted(after)))
if victims is not None:
    say(f"  registry: {len(victims)} users listed n{kill_node} (live score) just before the "
        f"kill; TTL {ttl_ms} ms")
    for i, (dt, dead, moved) in enumerate(forget):
        if i in (0, len(forget) - 1) or i % 4 == 0:
            say(f"    {dt:5.2f} s after the kill: {dead} still list n{kill_node}, {moved} "
                f"listed on another node")
    if forget and forget[-1][1] == 0:
        say(f"  registry forgot n{kill_node} {forget[-2][0] if len(forget) > 1 else 0:.2f}.."
            f"{forget[-1][0]:.2f} s after the kill (TTL {ttl_ms / 1e3:g} s)")
    else:
        say(f"  registry still listed n{kill_node} for some users at the restart")
elif bridged:
    say("  registry: Redis did not answer the pre-kill lookup")
end = (recovered or start_at) + 3
wave_lines = [l for l in lines if events["kill"] <= l[0] <= end + 1]
if wave_lines:
    say(f"  delivery latency during the wave (one-second windows t={events['kill']:.0f}.."
        f"{end + 1:.0f} s): worst p50 {max(l[3] for l in wave_lines):.2f} ms, "
        f"worst p99 {max(l[4] for l in wave_lines):.2f} ms")
at = lambda t, i: max([l[i] for l in lines if l[0] <= t] or [0])
# Progress counts settle 2 s after a publish: read them 2 s after each end of the window.
say(f"  from the kill to 3 s after recovery: {at(end + 2, 5) - at(events['kill'] + 2, 5)} "
    f"messages lost (sent to a connection that was up), "
    f"{at(end + 2, 6) - at(events['kill'] + 2, 6)} publishes found their user "
    f"disconnected (at-most-once: not delivered)")
say(f"  whole run (progress): lost {at(1e9, 5)}, user disconnected {at(1e9, 6)}")
after_lines = [l for l in lines if l[0] >= end + 2]
if after_lines:
    say(f"  after the wave (t={end + 2:.0f} s to the end, restart included): "
        f"{sum(l[2] for l in after_lines)} deliveries, "
        f"{at(1e9, 5) - at(end + 2, 5)} lost, {at(1e9, 6) - at(end + 2, 6)} user disconnected")
m = report["messages"]
say(f"  whole run (report): published {m['published']}, accepted {m['accepted']}, "
    f"admin request errors {m['publish_errors']}, expected {m['expected']}, "
    f"delivered {m['delivered']}, lost {m['lost']}, duplicated {m['duplicated']}")
# Redis and NATS load. Redis commands are counted net of the drill's own registry probes
# (column drill_probe_commands); every ttl/3 each node rewrites all its users (2 commands
# each), so a window's commands include those refreshes.
PROBE = 2 * nodes + 5
rs = [r for r in rows if None not in (r[nodes + 2], r[nodes + 3], r[nodes + 4])]
net = lambda r: r[nodes + 2] - r[PROBE]


def load(a, b):
    """(seconds, Redis net commands, peak net commands in one sample interval, NATS in, out)
    between the samples nearest after a and at or before b."""
    w = [r for r in rs if a <= r[0] <= b]
    if len(w) < 2:
        return None
    peak = max(net(y) - net(x) for x, y in zip(w, w[1:]))
    return (w[-1][0] - w[0][0], net(w[-1]) - net(w[0]), peak,
            w[-1][nodes + 3] - w[0][nodes + 3], w[-1][nodes + 4] - w[0][nodes + 4])


# From the sample taken at the kill (its interval holds the pre-kill probe and no wave).
wl = load(events["kill"] - 0.5, end)
sl = load(ramp_s + 2, kill_at - 0.5)
if wl:
    say(f"  Redis during the wave (t={events['kill']:.0f}..{end:.0f} s, {wl[0]:.0f} s): "
        f"{wl[1]} commands ({wl[1] / wl[0]:.0f}/s, peak {wl[2]} in one second); NATS: {wl[3]} "
        f"msgs in, {wl[4]} out ({wl[3] / wl[0]:.0f}/s, {wl[4] / wl[0]:.0f}/s)")
if sl:
    say(f"  steady state before it (t={ramp_s + 2:.0f}..{kill_at - 0.5:.0f} s): Redis "
        f"{sl[1] / sl[0]:.0f} commands/s (peak {sl[2]} in one second: the refresh of "
        f"{conns} users); NATS {sl[3] / sl[0]:.0f} msgs in/s, {sl[4] / sl[0]:.0f} out/s")
say(f"  the drill's own registry probes: {probe_commands[0]} Redis commands (not counted above)")
say(f"restart: n{kill_node} started at t={events['start']:.2f} s; connections per node:")
say("     t  " + " ".join(f"{'n' + str(k):>7}" for k in range(1, nodes + 1)))
for r in rows:
    if r[0] <= events["end"] and r[0] >= kill_at - 5 and (int(r[0]) % 5 == 0 or abs(r[0] - events["kill"]) < 1.5):
        say(f"  {r[0]:5.0f}  " + " ".join(f"{'-' if v is None else v:>7}" for v in r[1:nodes + 1]))
if bridged:
    # The bridges' own counts (n{kill_node}'s since its restart).
    for k in range(1, nodes + 1):
        req = urllib.request.Request(f"http://{ip(k)}:8081/stats",
                                     headers={"Authorization": f"Bearer {key}"})
        try:
            with urllib.request.urlopen(req, timeout=1) as r:
                cl = json.load(r).get("cluster", {})
            say(f"  bridge n{k}: lookups {cl['lookups']} ({cl['lookups_empty']} empty, "
                f"{cl['lookup_batches']} pipelines), bus out {cl['bus_out']}, in "
                f"{cl['bus_in']}, registry writes {cl['registry_writes']} in "
                f"{cl['registry_batches']} pipelines, dropped " + (", ".join(
                    f"{why} {v}" for why, v in cl["dropped"].items() if v) or "none"))
        except Exception:
            say(f"  bridge n{k}: no /stats")
c = report["connections"]
say(f"loadgen: established {c['established']}, reconnects {c['reconnects']}, "
    f"failures {c['failures']}, up at end {c['up_at_end']}")
text = "\n".join(out) + "\n"
open(os.path.join(run_dir, "summary.txt"), "w").write(text)
print(text, end="")
PY
echo "cluster_run: files in $RUN_DIR (timeline.csv, progress.log, report.txt, report.json, summary.txt)"
