#!/usr/bin/env bash
# Build the libFuzzer targets (tests/fuzz/fuzz_<name>.c) with clang under ASan + UBSan in their
# own build directory and run each for FUZZ_SECONDS (default 60) on a scratch copy of its seed
# corpus (tests/fuzz/corpus/<name>/, dictionary tests/fuzz/<name>.dict when present).
# Exit status: 0 when every fuzzer ran clean, 1 on a crash, leak or sanitizer report (the
# reproducer is kept in the artifacts directory printed), 0 with a notice when clang is missing.
#   usage: scripts/fuzz.sh [NAME...]      env: FUZZ_SECONDS, FUZZ_BUILD_DIR, FUZZ_JOBS
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
seconds=${FUZZ_SECONDS:-60}
build=${FUZZ_BUILD_DIR:-$here/build-fuzz}
jobs=${FUZZ_JOBS:-2}
CC=${FUZZ_CC:-$(command -v clang || command -v clang-14 || true)}

if [ -z "$CC" ]; then
    echo "fuzz: clang not found, fuzzers not run" >&2
    exit 0
fi

if [ $# -gt 0 ]; then
    names=("$@")
else
    names=()
    for src in "$here"/tests/fuzz/fuzz_*.c; do
        [ -e "$src" ] || continue
        n=$(basename "$src" .c)
        names+=("${n#fuzz_}")
    done
fi
[ ${#names[@]} -gt 0 ] || { echo "fuzz: no targets in tests/fuzz" >&2; exit 0; }

# The library itself must carry coverage instrumentation (fuzzer-no-link), or libFuzzer only
# sees the harness. Warnings are the gcc build's job (-Werror there); here they must not stop a
# crash hunt.
cmake -S "$here" -B "$build" -DCMAKE_C_COMPILER="$CC" -DCMAKE_BUILD_TYPE=Debug \
    -DDSW_FUZZ=ON -DDSW_SANITIZE=ON -DDSW_WERROR=OFF -DCMAKE_C_FLAGS="-fsanitize=fuzzer-no-link" >/dev/null
targets=()
for n in "${names[@]}"; do targets+=(--target "fuzz_$n"); done
if ! cmake --build "$build" -j"$jobs" "${targets[@]}" >"$build/fuzz-build.log" 2>&1; then
    tail -n 40 "$build/fuzz-build.log" >&2
    echo "fuzz: build failed (log $build/fuzz-build.log)" >&2
    exit 1
fi

status=0
for n in "${names[@]}"; do
    work=$(mktemp -d "${TMPDIR:-/tmp}/dsw-fuzz-$n.XXXXXX")
    mkdir -p "$work/corpus" "$work/artifacts"
    if [ -d "$here/tests/fuzz/corpus/$n" ]; then
        cp -r "$here/tests/fuzz/corpus/$n/." "$work/corpus/"
    fi
    dict=()
    [ -f "$here/tests/fuzz/$n.dict" ] && dict=(-dict="$here/tests/fuzz/$n.dict")
    echo "fuzz: $n for ${seconds}s (corpus $(ls "$work/corpus" | wc -l) files, log $work/log)"
    if ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
        "$build/fuzz_$n" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$work/artifacts/" "${dict[@]}" \
        "$work/corpus" >"$work/log" 2>&1; then
        grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' \
            "$work/log" | sed "s/^/fuzz: $n /"
        grep -E '(INITED|DONE) +cov' "$work/log" | sed "s/^/fuzz: $n /" || true
        grep -E '^Done [0-9]+ runs' "$work/log" | sed "s/^/fuzz: $n /" || true
        rm -rf "$work"
    else
        echo "fuzz: $n FAILED; last lines of $work/log, reproducers in $work/artifacts:" >&2
        tail -n 40 "$work/log" >&2
        status=1
    fi
done
exit $status
