#!/usr/bin/env bash
# Installs what building Riffle needs beyond the Rust toolchain: libclang for the
# RocksDB bindings. Idempotent.
set -euo pipefail
if ! command -v cargo >/dev/null 2>&1; then
    echo "install-build-deps: a Rust toolchain (cargo) is required" >&2
    exit 1
fi
if ! dpkg-query -W -f='${Status}' libclang-dev 2>/dev/null | grep -q "install ok installed"; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update
    $SUDO apt-get install -y --no-install-recommends libclang-dev
fi
