#!/usr/bin/env bash
# Builds librdkafka's own integration test runner (librdkafka/tests) into a cache, for
# tests/compat/test_librdkafka_suite.py. librdkafka's sources, tests included, are taken
# from the node-rdkafka package on npm, which bundles a released librdkafka. Idempotent.
set -euo pipefail

NODE_RDKAFKA=3.6.1 # bundles librdkafka 2.12.0
SHA256=148f7e7b65c510314c70762d8f1be052c8fe1fdf03a128e6c78083a729a57a30
CACHE="${RIFFLE_CACHE:-$HOME/.cache/riffle}/librdkafka-tests-${NODE_RDKAFKA}"
RUNNER="$CACHE/tests/test-runner"

if [ -x "$RUNNER" ]; then
    echo "setup-librdkafka-tests: $RUNNER"
    exit 0
fi
for tool in curl make gcc g++; do
    command -v "$tool" >/dev/null || { echo "setup-librdkafka-tests: $tool is required" >&2; exit 1; }
done
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
curl -fsSL "https://registry.npmjs.org/node-rdkafka/-/node-rdkafka-${NODE_RDKAFKA}.tgz" \
    -o "$work/node-rdkafka.tgz"
echo "$SHA256  $work/node-rdkafka.tgz" | sha256sum -c --quiet
tar -xzf "$work/node-rdkafka.tgz" -C "$work" package/deps/librdkafka
src="$work/package/deps/librdkafka"
(
    cd "$src"
    ./configure --disable-ssl --disable-sasl --disable-gssapi --disable-zstd \
        --disable-lz4-ext --disable-curl >"$work/configure.log" 2>&1 \
        || { cat "$work/configure.log"; exit 1; }
    make -j"$(nproc)" libs >"$work/make.log" 2>&1 || { tail -50 "$work/make.log"; exit 1; }
    make -C tests -j"$(nproc)" build >"$work/tests.log" 2>&1 \
        || { tail -50 "$work/tests.log"; exit 1; }
)
mkdir -p "$(dirname "$CACHE")"
rm -rf "$CACHE"
mv "$src" "$CACHE"
echo "setup-librdkafka-tests: built $RUNNER"
