#!/usr/bin/env bash
# Install what building, testing and the demo need on Debian 12, only what is missing:
# the C toolchain and libraries, PostgreSQL, Node.js + the pinned fauxqs, clang for the fuzzers,
# Celery/kombu for the Celery-producer test, pytest and mypy for the Dagster side, and moto (pip,
# only where PyPI is reachable).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)

sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

pkgs=(build-essential cmake pkg-config curl ca-certificates libuv1-dev libcurl4-openssl-dev
      libjansson-dev libpq-dev libssl-dev zlib1g-dev libcmocka-dev postgresql postgresql-client
      clang libclang-rt-14-dev valgrind python3 python3-kombu python3-boto3 python3-pycurl
      python3-pytest mypy systemd)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
command -v node >/dev/null && command -v npm >/dev/null || missing+=(nodejs npm)
if [ ${#missing[@]} -gt 0 ]; then
    echo "deps: installing ${missing[*]}"
    sudo_ apt-get update -qq
    sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

# fauxqs, pinned by package.json + package-lock.json.
fx=$here/tests/support/fauxqs
if [ ! -d "$fx/node_modules/fauxqs" ] || [ "$fx/package-lock.json" -nt "$fx/node_modules" ]; then
    echo "deps: npm ci (fauxqs 1.9.2)"
    (cd "$fx" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi

# moto: preinstalled on our machine image; elsewhere from PyPI when it can be reached.
if ! command -v moto_server >/dev/null; then
    if python3 -m pip --version >/dev/null 2>&1 &&
        curl -fsS -m 5 -o /dev/null https://pypi.org/simple/moto/ 2>/dev/null; then
        echo "deps: pip install moto[server]"
        python3 -m pip install -q "moto[server]>=5.2,<6" ||
            python3 -m pip install -q --break-system-packages "moto[server]>=5.2,<6"
    else
        echo "deps: moto_server is not installed and PyPI cannot be reached;" \
            "tests that need moto will fail" >&2
    fi
fi
