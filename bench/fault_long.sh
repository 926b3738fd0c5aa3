#!/usr/bin/env bash
# The long fault-injection scenario (issue 8): by default 2,000 runs across 4 daemons with 200
# faults injected over ~15 minutes, then tests/fault/check.py over the whole history.
#   RUNS=2000 DAEMONS=4 FAULTS=200 LOAD=900 SETTLE=300 SEED=2008 BUILD=build-f8 OUT=/tmp/dsw-fault-long
# Needs what scripts/test.sh installs (PostgreSQL, node + fauxqs, python3); starts its own
# PostgreSQL cluster and fauxqs server on loopback and stops them at the end. The summary is
# printed and kept in $OUT/summary.json; exit status 1 when an invariant was violated.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
build=${BUILD:-build-f8}
if [ ! -x "$build/dagster-sqs-worker" ] || [ ! -x "$build/fake_dagster" ]; then
    cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Debug -DDSW_FAILPOINTS=ON >/dev/null
    cmake --build "$build" -j2 >/dev/null
fi
export DSW_VECTORS=${DSW_VECTORS:-$here/tests/vectors}
exec python3 tests/fault/driver.py --bin "$build/dagster-sqs-worker" --fake "$build/fake_dagster" \
    --out "${OUT:-/tmp/dsw-fault-long}" --runs "${RUNS:-2000}" --daemons "${DAEMONS:-4}" \
    --faults "${FAULTS:-200}" --load-seconds "${LOAD:-900}" --settle-seconds "${SETTLE:-300}" \
    --seed "${SEED:-2008}" --max-sqs-restarts "${SQS_RESTARTS:-4}"
