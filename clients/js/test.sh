#!/usr/bin/env bash
# The JavaScript client's tests, as CI runs them (scripts/test.sh calls this file):
#   test/policy.test.js, test/core.test.js   units under node:test (pure parts, the state
#                                            machine on a virtual clock)
#   test/server.test.js                      the library in Node against the real server
#   test/cluster.test.js                     the /nodes choice on a real two-node cluster
#                                            (redis-server and nats-server, apt)
#   test/move.test.js                        a drained node's client resumes on the other
#                                            node from the cluster's shared history
#   test/browser.test.js                     headless Chromium (Debian's, driven by
#                                            playwright-core) against the real server
#   test/status_page.test.js                 the server's status page in headless Chromium
# Installs what is missing: node_modules (npm ci from the committed lock file) and chromium
# (apt-get). Builds the server with cargo unless C10M_BIN names a binary.
set -euo pipefail
cd "$(dirname "$0")"
root="$(cd ../.. && pwd)"

command -v node >/dev/null || { echo "clients/js/test.sh: node 20+ is missing"; exit 1; }
major="$(node -p 'process.versions.node.split(".")[0]')"
if ((major < 20)); then echo "clients/js/test.sh: node $major is too old (20+)"; exit 1; fi

if [ ! -f node_modules/playwright-core/package.json ]; then
  echo "clients/js/test.sh: npm ci"
  npm ci --no-audit --no-fund --loglevel=error
fi
if [ -z "${CHROMIUM:-}" ] && ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
  echo "clients/js/test.sh: installing chromium with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq chromium >/dev/null
fi
if ! command -v redis-server >/dev/null || ! command -v nats-server >/dev/null; then
  echo "clients/js/test.sh: installing redis-server and nats-server with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq redis-server nats-server >/dev/null
fi
if [ -z "${C10M_BIN:-}" ]; then
  (cd "$root" && cargo build --release -q -p c10m)
  export C10M_BIN="$root/target/release/c10m"
fi

# Node 20 has WebSocket only behind a flag; later versions have it by default.
flags=()
if [ "$(node -p 'typeof WebSocket')" != "function" ]; then flags+=(--experimental-websocket); fi

# One file at a time: the server and browser tests time reconnects, and a shared 2-CPU
# machine should not starve them.
node "${flags[@]}" --test --test-concurrency=1 --test-timeout=120000 \
  test/policy.test.js test/core.test.js test/server.test.js test/cluster.test.js test/move.test.js \
  test/browser.test.js \
  test/status_page.test.js
