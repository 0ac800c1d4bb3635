#!/usr/bin/env bash
# Builds trellis and runs the bundled example: a proxy on 127.0.0.1:8080 in
# front of demo workloads. Ctrl-C stops everything it started.
# (`trellis up`, the whole mesh with a control plane, arrives with the
# control-plane work; this script will then call it.)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p trellis
BIN=target/release/trellis
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM
$BIN demo-app --service productpage --version v1 --http-port 9080 & pids+=($!)
$BIN demo-app --service reviews --version v1 --http-port 9081 & pids+=($!)
$BIN demo-app --service reviews --version v2 --http-port 9082 & pids+=($!)
$BIN proxy -c examples/proxy/front-proxy.yaml & pids+=($!)
sleep 1
cat <<MSG

Trellis is running. Try:
  curl -s localhost:8080/productpage
  for i in \$(seq 10); do curl -s localhost:8080/reviews | grep -o '"version":"v[12]"'; done
  curl -s localhost:15000/config_dump | head -40      # admin, Envoy's paths
Ctrl-C stops everything.
MSG
wait
