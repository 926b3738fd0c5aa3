#!/usr/bin/env bash
# The Dagster side's tests (pytest, Debian's python3-pytest) on every Dagster found: each tree of
# ../shared/dagster (DSW_DAGSTER_TREES, default "1.3 1.7", set up by its env.sh), else a Dagster
# importable by /usr/bin/python3. Expects scripts/services.sh's env in the environment and the
# daemon in DSW_BIN (default build/dagster-sqs-worker).
# Under CI=true a missing Dagster, and any test skipped for a missing part, fail the stage;
# otherwise they are reported loudly as NOT RUN (never as passed).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
shared=${DSW_DAGSTER_SHARED:-$repo/../shared/dagster}
export DSW_BIN=${DSW_BIN:-$repo/build/dagster-sqs-worker}
[ "${CI:-}" = true ] && export DSW_PY_REQUIRE_ALL=1
py_args=(-m pytest -q -p no:cacheprovider -rfEsxX tests)

failed=0 ran=""
for t in ${DSW_DAGSTER_TREES:-1.3 1.7}; do
    [ -d "$shared/$t" ] || continue
    echo "== pytest (Dagster tree $t)"
    # shellcheck disable=SC2016
    (env_out=$(bash "$shared/env.sh" "$t") && eval "$env_out" &&
        cd "$here" && "$DSW_DAGSTER_PYTHON" "${py_args[@]}") || failed=1
    ran="$ran $t"
done
if [ -z "$ran" ] && /usr/bin/python3 -c 'import dagster' 2>/dev/null; then
    echo "== pytest (installed Dagster)"
    (cd "$here" && /usr/bin/python3 "${py_args[@]}") || failed=1
    ran=" installed"
fi
if [ -z "$ran" ]; then
    echo "!!!!!!!! NO DAGSTER FOUND: the Dagster-side tests DID NOT RUN (only run_claims' do) !!!!!!!!" >&2
    if [ "${CI:-}" = true ]; then
        failed=1
    elif /usr/bin/python3 -c 'import pytest' 2>/dev/null; then
        (cd "$here" && /usr/bin/python3 "${py_args[@]}") || failed=1
    fi
fi
echo "== pytest done on:${ran:- nothing}"
exit $failed
