#!/usr/bin/env bash
# The node-loss drill (bench/drill.js) with the file limit it needs: the clients hold
# their sockets in the client processes and as many in the nodes. Arguments go to drill.js.
#   C10M_BIN=target/release/c10m bash clients/js/bench/drill.sh --clients 4000 --nodes 4
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
flags=()
if [ "$(node -p 'typeof WebSocket')" != "function" ]; then flags+=(--experimental-websocket); fi
exec node "${flags[@]}" bench/drill.js "$@"
