#!/usr/bin/env bash
# Builds and runs a single-node broker with embedded defaults:
# Kafka on 0.0.0.0:9092 (advertised as localhost:9092), HTTP on 0.0.0.0:9644, data in ./data.
# Extra arguments are passed to `riffle` (see `riffle --help`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install-build-deps.sh
exec cargo run --release --bin riffle -- "$@"
