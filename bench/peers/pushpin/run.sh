#!/usr/bin/env bash
# Starts Pushpin and its GRIP origin (origin.mjs); exec, so the caller's pid is Pushpin's
# runner and the origin, condure, pushpin-proxy and pushpin-handler are its children.
# usage: run.sh LISTEN ADMIN SCRATCH_DIR   (LISTEN's port + 2 is the origin, + 3 Pushpin's
#        HTTP publish endpoint)
set -euo pipefail
listen=${1:?LISTEN}; admin=${2:?ADMIN}; dir=${3:?SCRATCH_DIR}
here=$(cd "$(dirname "$0")" && pwd)
port=${listen##*:}
origin=127.0.0.1:$((port + 2))
publish=127.0.0.1:$((port + 3))
mkdir -p "$dir/run" "$dir/log"
sed -e "s|@DIR@|$dir|g" -e "s|@HERE@|$here|g" -e "s|@PORT@|$port|g" \
    -e "s|@PUBLISH_PORT@|${publish##*:}|g" "$here/pushpin.conf.in" >"$dir/pushpin.conf"
rm -rf "$dir/lib" && cp -r /usr/lib/pushpin "$dir/lib"
sed -i -e 's|ipc:///var/run/zurl/zurl-|ipc://{rundir}/{ipc_prefix}zurl-|' "$dir/lib/internal.conf"
sed -i -e 's|^max_open_requests=.*|max_open_requests=20000|' -e 's|^in_hwm=.*|in_hwm=20000|' \
    -e 's|^out_hwm=.*|out_hwm=20000|' "$dir/lib/runner/zurl.conf.template"
# WebSocket clients reach the origin as WebSocket-over-HTTP; SSE as plain proxied HTTP.
echo "* $origin,over_http" >"$dir/routes"
node "$here/origin.mjs" --origin "$origin" --admin "$admin" --publish "$publish" \
    --client "$listen" &
exec pushpin --config "$dir/pushpin.conf" --merge-output ${PUSHPIN_ARGS:-}
