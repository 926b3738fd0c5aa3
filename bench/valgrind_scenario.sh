#!/usr/bin/env bash
# A fault scenario with every daemon under valgrind memcheck (issue 8): 3 daemons, 40 runs,
# faults that let the daemons exit normally (pg_terminate_backend, PostgreSQL crash restart,
# fauxqs restart, SIGSTOP past the lease, duplicates, hostile bodies; no kill -9, which would
# cut valgrind's report), then a SIGTERM drain. Prints each daemon's ERROR SUMMARY and leak
# summary; exit 1 on any memcheck error or definite leak, or on an invariant violation.
# Run workers start through the dsw-exec trampoline, named with DSW_TRAMPOLINE: under valgrind
# the daemon's /proc/self/exe is valgrind's own tool binary, so neither the re-exec fallback nor
# the lookup next to it would find it. Children are not traced (only the daemons are checked).
#   RUNS=40 FAULTS=10 LOAD=60 SEED=31 BUILD=build-f8 OUT=/tmp/dsw-fault-valgrind
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
build=${BUILD:-build-f8}
if [ ! -x "$build/dagster-sqs-worker" ] || [ ! -x "$build/fake_dagster" ]; then
    cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Debug -DDSW_FAILPOINTS=ON >/dev/null
    cmake --build "$build" -j2 >/dev/null
fi
export DSW_VECTORS=${DSW_VECTORS:-$here/tests/vectors}
case $build in /*) export DSW_TRAMPOLINE=$build/dsw-exec ;; *) export DSW_TRAMPOLINE=$here/$build/dsw-exec ;; esac
out=${OUT:-/tmp/dsw-fault-valgrind}
vg="valgrind --tool=memcheck --leak-check=full --show-leak-kinds=definite"
vg="$vg --errors-for-leak-kinds=definite --track-fds=no --log-file=$out.vg/%INC%.%p.log"
rm -rf "$out.vg"
mkdir -p "$out.vg"
rc=0
python3 tests/fault/driver.py --bin "$build/dagster-sqs-worker" --fake "$build/fake_dagster" \
    --out "$out" --runs "${RUNS:-40}" --daemons 3 --faults "${FAULTS:-10}" \
    --load-seconds "${LOAD:-60}" --settle-seconds 120 --seed "${SEED:-31}" \
    --kinds pg_terminate,pg_restart,sqs_restart,sigstop,dup_send,hostile --wrapper "$vg" || rc=1
errors=0 definite=0 n=0
for f in "$out".vg/*.log; do
    grep -q 'ERROR SUMMARY' "$f" || continue # the re-exec'd children are not traced
    n=$((n + 1))
    e=$(sed -nE 's/.*ERROR SUMMARY: ([0-9,]+) errors.*/\1/p' "$f" | tr -d , | tail -n1)
    d=$(sed -nE 's/.*definitely lost: ([0-9,]+) bytes.*/\1/p' "$f" | tr -d , | tail -n1)
    echo "$(basename "$f"): errors ${e:-0}, definitely lost ${d:-0} bytes"
    errors=$((errors + ${e:-0}))
    definite=$((definite + ${d:-0}))
done
echo "valgrind: $n daemon process(es), $errors error(s), $definite byte(s) definitely lost"
[ "$n" -gt 0 ] && [ "$errors" = 0 ] && [ "$definite" = 0 ] || rc=1
exit $rc
