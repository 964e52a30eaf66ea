#!/usr/bin/env bash
# Runs the SPSC ring's tests under miri, which checks the unsafe code for undefined behaviour
# and data races. Installs the nightly miri component (and rust-src, which miri needs to build
# its own standard library) when missing. Extra arguments go to the test binary's filter list,
# e.g. `scripts/miri.sh -- --nocapture`.
set -euo pipefail
cd "$(dirname "$0")/.."

installed="$(rustup +nightly component list --installed)"
for component in miri rust-src; do
    if ! grep -q "^${component}" <<<"$installed"; then
        rustup +nightly component add "$component"
    fi
done

exec cargo +nightly miri test --lib mesh::spsc "$@"
