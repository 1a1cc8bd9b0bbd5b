#!/usr/bin/env bash
# Runs each fuzz target for SECONDS (default 30). cargo-fuzz needs nightly features;
# RUSTC_BOOTSTRAP lets the stable toolchain build the sanitizer-instrumented targets.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SECONDS_PER_TARGET="${1:-30}"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz
export RUSTC_BOOTSTRAP=1
for target in decode_request record_batch; do
    echo "== fuzz $target for ${SECONDS_PER_TARGET}s"
    cargo fuzz run "$target" -- -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=4096
done
