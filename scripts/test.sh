#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls this file):
#   formatting, lints with warnings as errors, unit tests, and the integration tests that
#   start the real c10m server and talk to it with real clients over loopback, for the
#   server and for the load generator.
# Needs the Rust toolchain (cargo, rustfmt, clippy) and a Linux 6.11+ kernel with io_uring
# enabled; redis-server and nats-server (for the cluster tests) are installed with apt-get
# when missing, and so are the TLS tests' clients (Python websockets, curl) and promtool (Debian's
# prometheus package, for tests/deploy.rs) and systemd (not started as the host's init:
# tests/deploy.rs runs one in namespaces of its own); everything else
# the tests use is built from this workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in cargo rustfmt cargo-clippy; do
  command -v "$tool" >/dev/null || { echo "test.sh: $tool is missing (install the Rust toolchain)"; exit 1; }
done

# What the tests run against besides the server: real Redis and NATS servers
# (tests/cluster.rs), and curl and Python websockets as TLS clients (tests/tls.rs).
missing=()
for pkg in redis-server nats-server curl; do
  command -v "$pkg" >/dev/null || missing+=("$pkg")
done
# systemd, not running: tests/deploy.rs starts it as PID 1 of namespaces of its own
# (scripts/systemd_reload.sh) to check the unit's reload.
[ -x /lib/systemd/systemd ] || missing+=(systemd)
if ((${#missing[@]})); then
  echo "test.sh: installing ${missing[*]} with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# promtool (Debian's prometheus package) checks deploy/prometheus/alerts.yml (tests/deploy.rs).
if ! command -v promtool >/dev/null; then
  echo "test.sh: installing prometheus (for promtool) with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
if ! python3 -c 'import websockets' 2>/dev/null; then
  echo "test.sh: installing Python websockets with pip"
  export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
  pip install -q websockets 2>/dev/null || pip install -q --break-system-packages websockets
fi

cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
# The measurement build's allocation census (src/census.rs) is behind a feature: keep it compiling.
cargo clippy -p c10m --bins --features alloc-census -- -D warnings
cargo test --workspace
bash clients/js/test.sh
