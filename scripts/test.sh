#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls this file):
#   formatting, lints with warnings as errors, unit tests, and the integration tests that
#   start the real c10m server and talk to it with real clients over loopback, for the
#   server and for the load generator.
# Needs the Rust toolchain (cargo, rustfmt, clippy) and a Linux 6.11+ kernel with io_uring
# enabled; redis-server and nats-server (for the cluster tests) are installed with apt-get
# when missing; everything else the tests use is built from this workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in cargo rustfmt cargo-clippy; do
  command -v "$tool" >/dev/null || { echo "test.sh: $tool is missing (install the Rust toolchain)"; exit 1; }
done

# ---- cluster: tests/cluster.rs runs real Redis and NATS servers (Debian packages) ----
if ! command -v redis-server >/dev/null || ! command -v nats-server >/dev/null; then
  echo "test.sh: installing redis-server and nats-server for tests/cluster.rs"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq redis-server nats-server >/dev/null
fi
# ---- end cluster ----

cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
