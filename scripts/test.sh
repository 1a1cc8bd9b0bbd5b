#!/usr/bin/env bash
# Installs every test dependency and runs all tests: formatting and lint, Rust unit and
# integration tests (real broker processes), and the client-compatibility suite
# (kafka-python, confluent-kafka, aiokafka, kcat, Kafka's Java tools, librdkafka's own
# admin test against a real broker), the Kubernetes
# manifests, and the operator against a real API server.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"

bash scripts/install-build-deps.sh
bash scripts/setup-test-deps.sh

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
# One profile (release) for build, tests and benchmarks: RocksDB compiles once.
echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo build --release"
cargo build --release --all-targets
echo "== cargo clippy"
cargo clippy --release --all-targets -- -D warnings
echo "== cargo test"
export RIFFLE_BIN="$CARGO_TARGET_DIR/release/riffle"
cargo test --release
echo "== fuzz request decoding (short run)"
bash scripts/fuzz.sh 20
echo "== client compatibility suite"
"$ROOT/.venv/bin/python" -m pytest tests/compat -q
echo "== Kubernetes manifests (helm lint/template, schema validation)"
bash scripts/install-k8s-tools.sh
"$ROOT/.venv/bin/python" -m pytest tests/k8s -q
echo "== Operator and chart against a real API server (etcd, kube-apiserver, kube-controller-manager)"
bash scripts/envtest.sh
