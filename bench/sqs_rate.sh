#!/usr/bin/env bash
# SQS round trips per second (send + receive + delete) through the daemon's sqs module, against
# a fauxqs started by scripts/services.sh on loopback. Usage:
#   bench/sqs_rate.sh [BUILD_DIR=build] [SECONDS=5] [PIPELINES=4] [WAIT_S=0]
# Builds the bench_sqs target in BUILD_DIR if needed; prints one figure line.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$here/build}
seconds=${2:-5}
pipes=${3:-4}
wait_s=${4:-0}

[ -f "$build/CMakeCache.txt" ] || cmake -S "$here" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j2 --target bench_sqs >/dev/null

svc=$(mktemp -d /tmp/dsw-bench-XXXXXX)
chmod 755 "$svc" # the Postgres the script also starts runs as another user
trap '"$here/scripts/services.sh" stop "$svc"; rm -rf "$svc"' EXIT
"$here/scripts/services.sh" start "$svc" >/dev/null
# shellcheck disable=SC1091
. "$svc/env"
"$build/bench_sqs" "$DSW_TEST_FAUXQS_URL" "$seconds" "$pipes" "$wait_s"
