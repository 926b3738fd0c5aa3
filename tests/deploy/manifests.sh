#!/usr/bin/env bash
# tests/deploy/test_manifests.py with Debian's python3 (python3-yaml, python3-pytest, installed
# when missing). The built daemon's check-config is used when one is given:
#   tests/deploy/manifests.sh [BUILD_DIR]
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
cd "$here"
sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if ! /usr/bin/python3 -c 'import yaml, pytest' 2>/dev/null; then
    echo "manifests: installing python3-yaml python3-pytest"
    sudo_ apt-get update -qq
    sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        python3-yaml python3-pytest >/dev/null
fi
if [ -n "${1:-}" ]; then
    DSW_BIN=$(cd "$1" && pwd)/dagster-sqs-worker
    export DSW_BIN
fi
export PYTHONDONTWRITEBYTECODE=1
exec /usr/bin/python3 -m pytest -q -p no:cacheprovider -rs tests/deploy/test_manifests.py
