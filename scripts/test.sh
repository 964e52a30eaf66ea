#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls this file):
#   formatting, lints with warnings as errors, unit tests, and the integration tests that
#   start the real c10m server and talk to it with real clients over loopback, for the
#   server and for the load generator.
# Needs the Rust toolchain (cargo, rustfmt, clippy) and a Linux 6.11+ kernel with io_uring
# enabled; the TLS tests' clients (Python websockets, curl) are installed below when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in cargo rustfmt cargo-clippy; do
  command -v "$tool" >/dev/null || { echo "test.sh: $tool is missing (install the Rust toolchain)"; exit 1; }
done

# The TLS tests talk to the server with real clients: Python websockets and curl.
if ! python3 -c 'import websockets' 2>/dev/null; then
  export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
  pip install -q websockets 2>/dev/null || pip install -q --break-system-packages websockets
fi
command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl >/dev/null; }

cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
