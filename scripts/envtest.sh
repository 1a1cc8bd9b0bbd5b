#!/usr/bin/env bash
# The real-API-server tier (tests/envtest): builds and caches etcd, kube-apiserver and
# kube-controller-manager, then runs the tests in a private mount namespace whose
# /etc/hosts the node simulator owns (Pod and Service DNS names -> loopback Pod IPs).
# Extra arguments go to pytest. Needs root (unshare, mount).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"

bash scripts/install-k8s-tools.sh >/dev/null
command -v openssl >/dev/null || apt-get install -y -qq openssl >/dev/null
if [[ ! -x "$CARGO_TARGET_DIR/release/riffle" || ! -x "$CARGO_TARGET_DIR/release/riffle-operator" ]]; then
    cargo build --release -p riffle-broker -p riffle-operator
fi
echo "== control plane binaries"
started=$(date +%s)
bash tests/envtest/build-control-plane.sh
echo "   ready after $(( $(date +%s) - started )) s"

hosts="$(mktemp)"
trap 'rm -f "$hosts"' EXIT
cp /etc/hosts "$hosts"
export RIFFLE_ENVTEST_HOSTS="$hosts"
unshare --mount --propagation private -- bash -c 'mount --bind "$RIFFLE_ENVTEST_HOSTS" /etc/hosts && exec "$@"' \
    envtest "$ROOT/.venv/bin/python" -m pytest tests/envtest -q "$@"
