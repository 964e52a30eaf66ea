#!/usr/bin/env bash
# WebSocket conformance: runs the Autobahn|Testsuite fuzzing client (cases 1-7, 9, 10, and 12-13 for permessage-deflate)
# against `c10m serve --echo` on 127.0.0.1 and compares each case's result with the committed
# expectation in tests/autobahn/expected.txt. Exits non-zero if any case ends other than OK,
# NON-STRICT or INFORMATIONAL, or differs from the expectation.
#
# Installs the testsuite on demand into target/autobahn-venv (Python 2.7 from pyenv).
# Takes about 45 minutes on 2 vCPUs (case 9 sends messages up to 16 MiB; cases 12 and 13 send
# 1,000 compressed messages each, and the Python 2 client is the bottleneck), so it is a separate conformance
# command, not part of `cargo test`.
#
# Usage: scripts/autobahn.sh [--update]   (--update rewrites the expectation from this run)
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)
venv="$root/target/autobahn-venv"
out="$root/target/autobahn"
expected="$root/tests/autobahn/expected.txt"
run_timeout_s="${AUTOBAHN_TIMEOUT_S:-3600}"

if [ ! -x "$venv/bin/wstest" ]; then
    py="$(pyenv root)/versions/2.7.18/bin/python"
    [ -x "$py" ] || { echo "autobahn: need Python 2.7.18 under pyenv ($py)" >&2; exit 2; }
    "$py" -m pip install -q 'virtualenv<20.22'
    "$py" -m virtualenv -q "$venv"
    # The versions this expectation was recorded with; the testsuite needs Twisted < 20 and
    # autobahn < 0.11 on Python 2.7.
    "$venv/bin/pip" install -q 'autobahntestsuite==25.10.1' 'autobahn==0.10.9' \
        'Twisted==19.10.0'
fi

cargo build --release --quiet --bin c10m
rm -rf "$out"
mkdir -p "$out"

# The server picks its own ports; its start line says which.
target/release/c10m serve --listen 127.0.0.1:0 --admin 127.0.0.1:0 --shards 2 --no-pin --echo \
    --message-bytes-max 16777216 --frame-bytes-max 16777216 --outbox-bytes-max 67108864 \
    >"$out/server.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT
addr=""
for _ in $(seq 200); do
    addr=$(sed -n 's/^c10m listening.* clients=\([^ ,]*\).*/\1/p' "$out/server.log")
    [ -n "$addr" ] && break
    kill -0 "$server" 2>/dev/null || { cat "$out/server.log" >&2; exit 1; }
    sleep 0.05
done
[ -n "$addr" ] || { echo "autobahn: no start line from c10m" >&2; exit 1; }

sed -e "s|@OUTDIR@|$out/reports|" -e "s|@ADDR@|$addr|" tests/autobahn/fuzzingclient.json \
    >"$out/fuzzingclient.json"

echo "autobahn: fuzzingclient against ws://$addr/echo (at most ${run_timeout_s}s)"
start=$(date +%s)
(cd "$out" && timeout "$run_timeout_s" "$venv/bin/wstest" -m fuzzingclient \
    -s "$out/fuzzingclient.json" >"$out/wstest.log" 2>&1) || {
    echo "autobahn: wstest failed or timed out; tail of $out/wstest.log:" >&2
    tail -20 "$out/wstest.log" >&2
    exit 1
}
echo "autobahn: wstest took $(( $(date +%s) - start ))s; reports in $out/reports"

# One line per case, "ID BEHAVIOR BEHAVIOR_CLOSE", in case order; then a summary per group.
python3 - "$out/reports/index.json" "$out/results.txt" <<'PY'
import json, os, sys
index = json.load(open(sys.argv[1]))["c10m"]
reports = os.path.dirname(sys.argv[1])
key = lambda c: tuple(int(p) for p in c.split("."))
with open(sys.argv[2], "w") as f:
    for case in sorted(index, key=key):
        r = index[case]
        f.write(f"{case} {r['behavior']} {r['behaviorClose']}\n")
kinds = ["OK", "NON-STRICT", "INFORMATIONAL", "FAILED", "UNIMPLEMENTED"]
groups = {}
for case, r in index.items():
    g = groups.setdefault(case.split(".")[0], dict.fromkeys(kinds, 0))
    g[r["behavior"]] = g.get(r["behavior"], 0) + 1
print("| group | " + " | ".join(kinds) + " |")
print("|---|" + "---|" * len(kinds))
total = dict.fromkeys(kinds, 0)
for g in sorted(groups, key=int):
    print(f"| {g} | " + " | ".join(str(groups[g][k]) for k in kinds) + " |")
    for k in kinds:
        total[k] += groups[g][k]
print("| all | " + " | ".join(str(total[k]) for k in kinds) + " |")
bad = [c for c, r in index.items() if r["behavior"] not in ("OK", "NON-STRICT", "INFORMATIONAL")]
for c in sorted(bad, key=key):
    report = json.load(open(os.path.join(reports, index[c]["reportfile"])))
    print(f"NOT PASSED: {c} {index[c]['behavior']}: {report['description']} -- {report['result']}")
PY

if [ "${1:-}" = "--update" ]; then
    cp "$out/results.txt" "$expected"
    echo "autobahn: expectation rewritten: $expected"
fi
status=0
if ! awk '$2 !~ /^(OK|NON-STRICT|INFORMATIONAL)$/ { bad = 1 } END { exit bad }' \
    "$out/results.txt"; then
    echo "autobahn: FAIL: some case ended other than OK, NON-STRICT or INFORMATIONAL" >&2
    status=1
fi
if ! diff -u "$expected" "$out/results.txt"; then
    echo "autobahn: FAIL: results differ from $expected" >&2
    status=1
fi
[ "$status" -eq 0 ] && echo "autobahn: PASS ($(wc -l <"$out/results.txt") cases as expected)"
exit "$status"
