#!/usr/bin/env bash
# Run worker start latency, cold vs warm (runs.warm), with tests/support/warm_standin.py in place
# of Dagster (no Dagster needed), and the RSS of the ready warm runners. Usage:
#   bench/warm_latency.sh [BUILD_DIR=build] [RUNS=20] [IMPORT_MS="0 800"] [READY=2] [PYTHON=/usr/bin/python3]
# IMPORT_MS: CPU the stand-in burns while importing, one bench per value (800 is roughly what
# importing dagster + dagster_postgres costs): cold runs pay it, warm runs do not.
# Builds the bench_warm target in BUILD_DIR if needed; prints figures per IMPORT_MS value.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$here/build}
runs=${2:-20}
imports=${3:-"0 800"}
ready=${4:-2}
python=${5:-/usr/bin/python3}

[ -f "$build/CMakeCache.txt" ] || cmake -S "$here" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j2 --target bench_warm >/dev/null

echo "load average: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) CPUs"
for ms in $imports; do
  "$build/bench_warm" "$here" "$runs" "$ms" "$ready" "$python"
  echo
done
