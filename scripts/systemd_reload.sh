#!/usr/bin/env bash
# A live upgrade under a real systemd: `systemctl reload` of the bundled unit
# (deploy/c10m.service) while WebSocket clients stay connected.
#
#   scripts/systemd_reload.sh [RELOADS] [CLIENTS]      (3 reloads, 50 clients)
#
# systemd runs as PID 1 of namespaces this script makes (PID, mount, cgroup, UTS, IPC and
# network: the clients and the server talk over that namespace's own loopback, nothing else
# is reached). Inside the mount namespace the root file system is read-only (/tmp with it,
# where a checkout may live) and /var, /run and /etc/systemd/system are empty tmpfs, so
# nothing systemd does at its start reaches the host's files (systemd-tmpfiles, for one,
# empties /tmp at boot: a first version of this script with a writable root emptied the
# host's /tmp). The units have
# DefaultDependencies=no, so sysinit.target (tmpfiles, sysctl, modules) is not pulled in,
# and those units are masked besides. The unit is deploy/c10m.service with what this box
# needs changed in a drop-in: the binary of this checkout, two shards on 127.0.0.1:18080
# (admin 18081), no nic.sh, root (no c10m user here), LimitNOFILE=20000 (the box cannot
# raise it). Type=notify, NotifyAccess=all, ExecReload and RuntimeDirectory are the
# unit's own.
#
# Each reload: `systemctl reload`, then wait (bounded) until systemd's MainPID is a new
# process, the old one is gone and the unit is still active; then a broadcast from the new
# process must reach every client, on the same TCP connection (local ports unchanged, no
# close seen). Prints one line per reload and PASS or FAIL; exit 0 on PASS.
# Needs root, unshare/nsenter (util-linux), systemd installed (not running), python3 with
# `websockets`. Everything it starts ends with the namespace (bounded: 120 s in all).
set -euo pipefail

RELOADS=${1:-3}
CLIENTS=${2:-50}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${C10M_BIN:-$ROOT/target/release/c10m}
SYSTEMD=${SYSTEMD:-/lib/systemd/systemd}
[ -x "$BIN" ] || { echo "no binary at $BIN: cargo build --release first (or set C10M_BIN)" >&2; exit 2; }
[ -x "$SYSTEMD" ] || { echo "no systemd at $SYSTEMD: apt-get install systemd (it need not run)" >&2; exit 2; }
python3 -c 'import websockets' 2>/dev/null ||
    { echo "python3 websockets missing: pip install websockets" >&2; exit 2; }

# Under target/ (ignored); the namespace reads it through its read-only root.
WORK="$ROOT/target/systemd-reload.$$"
rm -rf "$WORK"
mkdir -p "$WORK/units/c10m.service.d"
cp "$ROOT/deploy/c10m.service" "$WORK/units/c10m.service"
cat > "$WORK/units/c10m.service.d/20-this-box.conf" <<UNIT
[Unit]
DefaultDependencies=no
[Service]
User=root
ExecStartPre=
ExecStart=
ExecStart=$BIN serve --shards 2 --listen 127.0.0.1:18080 --admin 127.0.0.1:18081 --no-pin
LimitNOFILE=20000
StandardOutput=append:/run/c10m-unit.log
StandardError=append:/run/c10m-unit.log
UNIT
cat > "$WORK/units/c10m-test.target" <<'UNIT'
[Unit]
Description=c10m under systemd, nothing else
DefaultDependencies=no
Wants=c10m.service
UNIT
MASK="sysinit.target systemd-tmpfiles-setup.service systemd-tmpfiles-setup-dev.service
systemd-tmpfiles-setup-dev-early.service systemd-tmpfiles-clean.service
systemd-tmpfiles-clean.timer systemd-sysctl.service systemd-modules-load.service
systemd-binfmt.service systemd-udevd.service systemd-udev-trigger.service
systemd-sysusers.service ldconfig.service systemd-remount-fs.service
systemd-random-seed.service networking.service systemd-networkd.service
systemd-resolved.service systemd-timesyncd.service"

# Inside the namespaces: a read-only root, empty writable places, a cgroup2 tree, the
# units, then systemd.
{
    echo 'set -e'
    echo 'ip link set lo up'
    echo 'mount --make-rprivate /'
    echo 'mount -o remount,bind,ro /'
    echo 'for d in /var /run /etc/systemd/system; do mount -t tmpfs tmpfs "$d"; done'
    echo 'mount -t cgroup2 none /sys/fs/cgroup'
    echo 'mkdir -p /run/systemd/system'
    echo "cp -r '$WORK/units/.' /run/systemd/system/"
    for u in $MASK; do echo "ln -sf /dev/null /run/systemd/system/$u"; done
    echo "exec env container=c10m-test '$SYSTEMD' --system --unit=c10m-test.target" \
        "--log-target=console --log-level=notice --show-status=false"
} > "$WORK/inner.sh"
unshare --pid --fork --mount --net --cgroup --uts --ipc --mount-proc bash "$WORK/inner.sh" \
    > "$WORK/systemd.log" 2>&1 &
UNSHARE=$!
cleanup() {
    kill -9 "$UNSHARE" 2>/dev/null || true
    [ -n "${SD:-}" ] && kill -9 "$SD" 2>/dev/null || true
    wait "$UNSHARE" 2>/dev/null || true
}
trap cleanup EXIT

# systemd's pid as seen from here: the child of unshare.
SD=
for _ in $(seq 100); do
    SD=$(pgrep -P "$UNSHARE" | head -1 || true)
    [ -n "$SD" ] && break
    sleep 0.1
done
[ -n "$SD" ] || { echo "FAIL: systemd did not start"; cat "$WORK/systemd.log"; exit 1; }
inside() { nsenter -t "$SD" -a "$@"; }

deadline=$((SECONDS + 120))
until inside systemctl is-active --quiet c10m.service 2>/dev/null; do
    if [ $SECONDS -ge $deadline ] || ! kill -0 "$SD" 2>/dev/null; then
        echo "FAIL: c10m.service did not become active"
        inside systemctl status c10m.service --no-pager 2>&1 | tail -20 || true
        tail -30 "$WORK/systemd.log"
        exit 1
    fi
    sleep 0.2
done

cat > "$WORK/clients.py" <<'EOF'
import asyncio, json, subprocess, sys, time, urllib.request
import websockets

RELOADS, CLIENTS, DEADLINE = int(sys.argv[1]), int(sys.argv[2]), time.monotonic() + 100

def ctl(*args):
    return subprocess.run(["systemctl", *args], capture_output=True, text=True, timeout=30)

def main_pid():
    return int(ctl("show", "-p", "MainPID", "--value", "c10m.service").stdout.strip() or 0)

def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False

def publish(body):
    req = urllib.request.Request(f"http://127.0.0.1:18081/publish?all", data=body.encode(),
                                 method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 202, r.status

async def run():
    wss = [await websockets.connect(f"ws://127.0.0.1:18080/ws?user=u{i}", open_timeout=30)
           for i in range(CLIENTS)]
    ports = [w.local_address[1] for w in wss]
    ok = True
    for n in range(RELOADS):
        old = main_pid()
        t0 = time.monotonic()
        r = ctl("reload", "c10m.service")
        if r.returncode != 0:
            print(f"reload {n + 1}: systemctl reload failed: {r.stderr.strip()}")
            return False
        while True:
            new = main_pid()
            if new not in (0, old) and not alive(old):
                break
            if time.monotonic() > DEADLINE:
                print(f"reload {n + 1}: MainPID still {new} (old {old}, alive {alive(old)})")
                return False
            await asyncio.sleep(0.05)
        took = time.monotonic() - t0
        state = ctl("is-active", "c10m.service").stdout.strip()
        publish(f"after-{n + 1}")
        got = [await asyncio.wait_for(w.recv(), 30) for w in wss]
        same = [w.local_address[1] for w in wss] == ports
        good = state == "active" and same and all(g == f"after-{n + 1}" for g in got)
        print(f"reload {n + 1}: MainPID {old} -> {new} in {took:.2f} s, unit {state}, "
              f"{sum(g == f'after-{n + 1}' for g in got)} of {CLIENTS} clients got the "
              f"broadcast from the new process, local ports unchanged: {same}")
        ok = ok and good
    for w in wss:
        await w.close()
    return ok

sys.exit(0 if asyncio.run(run()) else 1)
EOF
if inside python3 "$WORK/clients.py" "$RELOADS" "$CLIENTS"; then
    inside systemctl stop c10m.service || true
    echo "PASS: $RELOADS reloads under systemd, no client reconnected"
    rm -rf "$WORK"
else
    echo "FAIL (logs: $WORK)"
    inside systemctl status c10m.service --no-pager 2>&1 | tail -20 || true
    inside tail -30 /run/c10m-unit.log || true
    exit 1
fi
