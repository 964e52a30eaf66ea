#!/usr/bin/env bash
# Starts nginx + Nchan in the foreground (exec, so the caller's pid is the master).
# usage: run.sh LISTEN ADMIN SCRATCH_DIR [WORKERS (default auto)]
set -euo pipefail
listen=${1:?LISTEN}; admin=${2:?ADMIN}; dir=${3:?SCRATCH_DIR}; workers=${4:-auto}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$dir"
sed -e "s|@DIR@|$dir|g" -e "s|@HERE@|$here|g" -e "s|@LISTEN@|$listen|g" -e "s|@ADMIN@|$admin|g" \
    -e "s|@WORKERS@|$workers|g" \
    "$here/nginx.conf.in" > "$dir/nginx.conf"
exec nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" -g 'daemon off;'
