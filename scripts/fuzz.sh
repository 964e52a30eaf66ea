#!/usr/bin/env bash
# Runs each protocol fuzz target for the given seconds (default 60), one after another,
# starting from the committed seeds in fuzz/seeds/TARGET. New inputs go to fuzz/corpus/TARGET
# (not committed); crashes go to fuzz/artifacts/TARGET. Debug assertions are on, so integer
# overflow on peer bytes is a crash too.
#
# Usage: scripts/fuzz.sh [seconds-per-target] [target...]
set -euo pipefail

seconds="${1:-60}"
shift || true
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
    targets=(http1_head ws_frame ws_session)
fi

cd "$(dirname "$0")/.."

if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install cargo-fuzz
fi

for target in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$target"
    echo "== $target: ${seconds}s"
    cargo +nightly fuzz run --debug-assertions "$target" \
        "fuzz/corpus/$target" "fuzz/seeds/$target" -- -max_total_time="$seconds"
done
