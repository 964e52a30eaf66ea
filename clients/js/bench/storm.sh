#!/usr/bin/env bash
# The goaway storm (bench/storm.js) with the file limit it needs: 10,000 clients hold
# 10,000 sockets in the client processes and as many in the node. Arguments go to storm.js.
#   C10M_BIN=target/release/c10m bash clients/js/bench/storm.sh --clients 10000 --procs 4
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
flags=()
if [ "$(node -p 'typeof WebSocket')" != "function" ]; then flags+=(--experimental-websocket); fi
exec node "${flags[@]}" bench/storm.js "$@"
