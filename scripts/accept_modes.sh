#!/bin/bash
# Side by side: the multishot accept (default) against the eight single-shot accepts that a
# per-source connect-rate limit switches on (set so high it never refuses). 20,000 WebSocket
# connects as fast as possible from 127.0.0.2-3, three rounds; prints connect rate and
# connect latency (count p50 p90 p99 p99.9 max). Needs `cargo build --release --workspace`.
cd "$(dirname "$0")/.."
for round in 1 2 3; do
for mode in multi single; do
  extra=""; [ $mode = single ] && extra="--accept-rate-per-source-per-s-max 1000000000"
  ./target/release/c10m serve --shards 2 --listen 127.0.0.1:28580 --admin 127.0.0.1:28581 $extra >/dev/null 2>&1 &
  pid=$!
  for i in $(seq 50); do curl -s -o /dev/null 127.0.0.1:28581/healthz && break; sleep 0.1; done
  r=$(./target/release/c10m-loadgen --proto ws --target 127.0.0.1:28580 --admin 127.0.0.1:28581 --sources 127.0.0.2-127.0.0.3 --conns 20000 --rate 0 --hold 1s --drain 0s --quiet 2>&1 | grep -E "connect rate|  connect ")
  echo "$mode round $round: $(echo $r | tr -s ' ')"
  kill $pid; wait $pid 2>/dev/null
done; done
