#!/usr/bin/env bash
# Raw RocksDB write throughput on this machine (Debian rocksdb-tools db_bench),
# to compare with the broker's acks=all produce figure.
# Usage: bench/db_bench.sh [NUM_RECORDS]   (default 200000 x 1 KiB values)
set -euo pipefail

NUM="${1:-200000}"
DB_BENCH="$(command -v db_bench || command -v rocksdb_db_bench || true)"
if [ -z "$DB_BENCH" ]; then
    echo "db_bench not found: run scripts/setup-test-deps.sh (rocksdb-tools)" >&2
    exit 1
fi
DIR="$(mktemp -d /tmp/riffle-db-bench.XXXXXX)"
trap 'rm -rf "$DIR"' EXIT

run() {
    local label="$1" sync="$2" num="$3"
    local out
    out="$(timeout 600 "$DB_BENCH" --benchmarks=fillseq --db="$DIR/$label" --num="$num" \
        --value_size=1024 --key_size=16 --batch_size=1000 --sync="$sync" \
        --compression_type=none --threads=1 2>&1)"
    local line
    line="$(printf '%s\n' "$out" | grep -E '^fillseq' | head -1)"
    if [ -z "$line" ]; then
        printf '%s\n' "$out" >&2
        echo "db_bench produced no fillseq result" >&2
        exit 1
    fi
    local mbs ops
    mbs="$(printf '%s\n' "$line" | grep -oE '[0-9.]+ MB/s' | head -1)"
    ops="$(printf '%s\n' "$line" | grep -oE '[0-9]+ ops/sec' | head -1)"
    printf '%-28s %12s %16s\n' "$label" "${mbs:-?}" "${ops:-?}"
}

printf '%-28s %12s %16s\n' "run (1 KiB values, batch 1000)" "throughput" "records/s"
run "fillseq-sync" 1 "$NUM"
run "fillseq-nosync" 0 "$NUM"
