#!/usr/bin/env bash
# Slow-HTTP attacks with slowhttptest against a local c10m (127.0.0.1 only), each for a bounded
# time with a few hundred connections, while an honest SSE client must still get a message:
#
#   1. slowloris (-H) on the client port: cut by --handshake-timeout-ms;
#   2. slow body (-B) on the admin port's POST /publish: --idle-timeout-ms only cuts a body
#      that stalls longer than the timeout (see docs/hardening.md).
#
# Needs slowhttptest (Debian: apt-get install -y slowhttptest) and curl.
# Usage: scripts/slowhttp.sh [seconds-per-attack (default 15)] [connections (default 300)]
set -euo pipefail

seconds="${1:-15}"
conns="${2:-300}"
timeout_ms=3000

cd "$(dirname "$0")/.."
command -v slowhttptest >/dev/null || { echo "slowhttp: install slowhttptest" >&2; exit 2; }
cargo build --release --quiet --bin c10m
out=target/slowhttp
rm -rf "$out"
mkdir -p "$out"

target/release/c10m serve --listen 127.0.0.1:0 --admin 127.0.0.1:0 --shards 2 --no-pin \
    --handshake-timeout-ms "$timeout_ms" --idle-timeout-ms "$timeout_ms" \
    >"$out/server.log" 2>&1 &
server=$!
pids=("$server")
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT
client="" admin=""
for _ in $(seq 200); do
    line=$(grep -m1 '^c10m listening' "$out/server.log" || true)
    if [ -n "$line" ]; then
        client=$(sed 's/.* clients=\([^ ,]*\).*/\1/' <<<"$line")
        admin=$(sed 's/.* admin=\([^ ,]*\).*/\1/' <<<"$line")
        break
    fi
    kill -0 "$server" 2>/dev/null || { cat "$out/server.log" >&2; exit 1; }
    sleep 0.05
done
[ -n "$client" ] || { echo "slowhttp: no start line from c10m" >&2; exit 1; }
echo "slowhttp: c10m clients=$client admin=$admin, timeouts ${timeout_ms} ms"

stats() { curl -s --max-time 3 "http://$admin/stats" || echo '(no answer)'; }

# An honest SSE client connects during the attack and must get a published message.
honest() {
    local tag=$1 file="$out/honest-$1.txt"
    curl -sN --max-time 10 -H 'Accept: text/event-stream' \
        "http://$client/sse?user=honest-$tag" >"$file" 2>/dev/null &
    local sse=$!
    pids+=("$sse")
    local t0=$SECONDS
    until grep -q '^retry:' "$file" 2>/dev/null; do
        if (( SECONDS - t0 > 5 )); then echo "honest($tag): NO STREAM within 5 s"; return 1; fi
        sleep 0.05
    done
    # The user registers on its home shard just after the head: publish until it arrives.
    while ! grep -q "data: hello-$tag" "$file"; do
        if (( SECONDS - t0 > 8 )); then echo "honest($tag): NO MESSAGE within 8 s"; return 1; fi
        curl -s --max-time 3 -X POST --data "hello-$tag" \
            "http://$admin/publish?user=honest-$tag" >/dev/null || true
        sleep 0.2
    done
    echo "honest($tag): got its message after $(( SECONDS - t0 )) s"
    kill "$sse" 2>/dev/null || true
}

attack() {
    local name=$1; shift
    echo "== $name: slowhttptest $*"
    timeout $(( seconds + 30 )) slowhttptest "$@" -c "$conns" -r 150 -l "$seconds" -p 3 \
        >"$out/$name.log" 2>&1 &
    local st=$!
    pids+=("$st")
    # Let the connections pile up, then look and try as an honest client.
    sleep $(( seconds / 2 ))
    echo "mid-attack /stats: $(stats)"
    local ok=0
    honest "$name" || ok=1
    wait "$st" || true
    # slowhttptest redraws its status; keep the final block.
    tr '\r' '\n' <"$out/$name.log" | sed 's/\x1b\[[0-9;]*m//g' | grep -E 'pending|connected|closed|available|Exit status' \
        | tail -6
    echo "after $name /stats: $(stats)"
    return $ok
}

result=0
attack slowloris -H -i 1 -u "http://$client/sse?user=loris" || result=1
attack slowbody -B -i 1 -s 8192 -x 10 -t POST -u "http://$admin/publish?all" || result=1
curl -s --max-time 3 "http://$admin/metrics" \
    | grep -E '^c10m_(closes_total.*(handshake|idle)_timeout|accepts_refused_total)' || true
if [ "$result" -eq 0 ]; then
    echo "slowhttp: PASS: honest clients got their messages during both attacks"
else
    echo "slowhttp: FAIL: an honest client was starved" >&2
fi
exit "$result"
