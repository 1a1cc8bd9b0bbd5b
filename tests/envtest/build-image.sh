#!/usr/bin/env bash
# Builds the project's Dockerfile without a Docker engine or a registry: a Debian
# bookworm base made by mmdebstrap (cached as a tarball), imported into buildah's own
# storage (vfs driver, no overlay needed) and used as RUNTIME_IMAGE; `buildah bud
# --isolation chroot` runs the Dockerfile's runtime stage for real. Its `build` stage
# (cargo inside rust:bookworm, which cannot be pulled here) is replaced through
# `--build-context build=...` by the binaries the host just built with the same
# toolchain on the same Debian release, so RocksDB is not compiled a second time.
# Usage: build-image.sh TAG   (binaries from $CARGO_TARGET_DIR/release; needs root)
# Prints the buildah flags that address the image's storage on its last line.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
TAG="${1:-localhost/riffle:dev}"
RELEASE_DIR="${CARGO_TARGET_DIR:-target}/release"
SUITE=bookworm

missing=()
command -v buildah >/dev/null || missing+=(buildah)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
if [[ ${#missing[@]} -gt 0 ]]; then
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/riffle/image"
mkdir -p "$CACHE"
base_tar="$CACHE/debian-$SUITE-minbase.tar"
storage=(--root "$CACHE/storage" --runroot "$CACHE/run" --storage-driver vfs)
base_image="localhost/debian:$SUITE-slim"

if [[ ! -s "$base_tar" ]]; then
    # Like debian:bookworm-slim: the minbase variant without manuals, docs and locales.
    mmdebstrap --quiet --variant=minbase --mode=root \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        "$SUITE" "$base_tar.part" http://deb.debian.org/debian
    mv "$base_tar.part" "$base_tar"
fi
if ! buildah "${storage[@]}" inspect --type image "$base_image" >/dev/null 2>&1; then
    ctr="$(buildah "${storage[@]}" from scratch)"
    buildah "${storage[@]}" add "$ctr" "$base_tar" / >/dev/null
    buildah "${storage[@]}" config --cmd /bin/bash "$ctr"
    buildah "${storage[@]}" commit --quiet --rm "$ctr" "$base_image" >/dev/null
fi

ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
install -D --strip "$RELEASE_DIR/riffle" "$ctx/out/riffle"
install -D --strip "$RELEASE_DIR/riffle-operator" "$ctx/out/riffle-operator"
buildah "${storage[@]}" bud --quiet --isolation chroot --pull=never \
    --build-arg "RUNTIME_IMAGE=$base_image" --build-context "build=$ctx" \
    --tag "$TAG" --file Dockerfile . >/dev/null
# Earlier builds of the tag, now untagged, would only fill the disk.
buildah "${storage[@]}" rmi --prune >/dev/null 2>&1 || true
echo "${storage[*]}"
