#!/usr/bin/env bash
# Builds pinned etcd, kube-apiserver and kube-controller-manager from their
# published Go modules and caches the binaries outside the clone, keyed by version.
# Prints the directory holding the binaries.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.37.2}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
# Keyed by the versions and this script, so a change to how they are built rebuilds them.
recipe="$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-12)"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/riffle/control-plane/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-$recipe"
BIN="$CACHE/bin"

if [[ -x "$BIN/etcd" && -x "$BIN/kube-apiserver" && -x "$BIN/kube-controller-manager" ]]; then
    echo "$BIN"
    exit 0
fi
command -v go >/dev/null || { echo "go is required to build the control plane" >&2; exit 1; }
mkdir -p "$BIN"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export GOFLAGS=-mod=mod GOTOOLCHAIN=local
flags=(-trimpath -ldflags "-s -w")
# The version a release build stamps (clients such as helm check it).
minor="${K8S_VERSION#v1.}"
minor="${minor%%.*}"
kv=k8s.io/component-base/version
k8s_flags=(-trimpath -ldflags "-s -w -X $kv.gitVersion=$K8S_VERSION -X $kv.gitMajor=1 -X $kv.gitMinor=$minor -X $kv.gitTreeState=clean -X $kv.buildDate=1970-01-01T00:00:00Z")

# k8s.io/kubernetes requires its staging modules at v0.0.0 and maps them to
# ./staging in its own go.mod; a module that imports it must map each one to
# the published release of the same minor (v1.X.Y => v0.X.Y).
staging_version="v0.${K8S_VERSION#v1.}"
(
    cd "$work"
    mkdir k8s && cd k8s
    go mod init riffle.dev/control-plane >/dev/null 2>&1
    mod="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')"
    grep -E '^\s+k8s\.io/[a-z0-9-]+ v0\.0\.0$' "$mod" | awk '{print $1}' | while read -r m; do
        go mod edit -replace "$m=$m@$staging_version"
    done
    go get "k8s.io/kubernetes@$K8S_VERSION" >&2
    echo "building kube-apiserver and kube-controller-manager $K8S_VERSION" >&2
    go build "${k8s_flags[@]}" -o "$BIN/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
    go build "${k8s_flags[@]}" -o "$BIN/kube-controller-manager" k8s.io/kubernetes/cmd/kube-controller-manager
)
(
    cd "$work"
    mkdir etcd && cd etcd
    go mod init riffle.dev/etcd >/dev/null 2>&1
    cat > main.go <<'GO'
// Command etcd runs the etcd server from its published module.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
    go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >&2
    go mod tidy >&2
    echo "building etcd $ETCD_VERSION" >&2
    go build "${flags[@]}" -o "$BIN/etcd" .
)
echo "$BIN"
