#!/usr/bin/env bash
# Builds trellis and runs the whole mesh on this machine: `trellis up` on the
# bundled Bookinfo example (control plane, ingress gateway on 127.0.0.1:8080,
# one sidecar per workload, the workloads). Ctrl-C stops everything.
# Extra arguments go to `trellis up` (e.g. --proxy envoy).
# Also builds trellis-proxy, the data-plane-only binary: `trellis up` starts
# the sidecars and the gateway with it when it sits next to trellis.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p trellis -p trellis-proxy
exec target/release/trellis up examples/bookinfo "$@"
