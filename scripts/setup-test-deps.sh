#!/usr/bin/env bash
# Installs everything the client-compatibility suite (tests/compat) and the
# benchmark (bench/) need: system tools from apt and a project-local Python
# virtualenv at .venv. Idempotent: re-running only installs what is missing.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${REPO_ROOT}/.venv"
REQS="${REPO_ROOT}/tests/compat/requirements.txt"

APT_PACKAGES=(kcat libclang-dev rocksdb-tools python3-venv)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done

if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup-test-deps: installing apt packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Update the package lists once if they have never been fetched or the
    # packages cannot be found in them.
    if [ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v -e '^lock$' -e '^partial$' || true)" ] \
        || ! apt-cache show "${missing[@]}" >/dev/null 2>&1; then
        $SUDO apt-get update
    fi
    $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
else
    echo "setup-test-deps: apt packages already present"
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x "${VENV}/bin/python" ]; then
    echo "setup-test-deps: creating virtualenv ${VENV}"
    "$PYTHON" -m venv "$VENV"
fi

stamp="${VENV}/.requirements.sha256"
want="$(sha256sum "$REQS" | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "setup-test-deps: python requirements already installed"
else
    "${VENV}/bin/python" -m pip install --disable-pip-version-check -q --upgrade pip
    "${VENV}/bin/python" -m pip install --disable-pip-version-check -q -r "$REQS"
    echo "$want" > "$stamp"
fi

"${VENV}/bin/python" - <<'PY'
import kafka, confluent_kafka, aiokafka
print("setup-test-deps: kafka-python", kafka.__version__,
      "| confluent-kafka", confluent_kafka.__version__,
      "librdkafka", confluent_kafka.libversion()[0],
      "| aiokafka", aiokafka.__version__)
PY
echo "setup-test-deps: kcat $(kcat -V 2>&1 | grep -o "Version [^ ]*" | head -1 || true)"

# Apache Kafka's command-line tools for the compatibility suite (JDK and Maven are on the machine).
bash "${REPO_ROOT}/scripts/setup-java-tools.sh"
bash "${REPO_ROOT}/scripts/setup-librdkafka-tests.sh"
