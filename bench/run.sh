#!/usr/bin/env bash
# The benchmark of issue 9: dagster-sqs-worker against a Celery 5 peer on the same queue server,
# Postgres and child, plus the machine's limits, idle cost and 500 concurrent runs. Prints one
# table on stdout (progress on stderr). Not part of the test suite. Usage:
#   bench/run.sh [bench.py options]      e.g. --runs 2000 --moto-runs 500 --slots 8 --idle 60
#                                         --phases limits,daemon-fauxqs,daemon-moto,celery-moto,idle,scale
# Environment: BUILD_DIR (default build-bench, RelWithDebInfo), BENCH_OUT (default a temp dir,
# kept: logs, start times, results.json). Needs Debian's python3-celery, python3-kombu,
# python3-boto3, python3-pycurl, python3-psycopg2 (installed with apt-get when missing, as root).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$here/build-bench}
vectors=${DSW_VECTORS:-$here/tests/vectors}
out=${BENCH_OUT:-$(mktemp -d /tmp/dsw-bench-out-XXXXXX)}
mkdir -p "$out"

if ! /usr/bin/python3 -c 'import celery, kombu, boto3, pycurl, psycopg2' 2>/dev/null; then
    echo "bench: installing Debian's Celery stack" >&2
    apt-get install -y -qq python3-celery python3-kombu python3-boto3 python3-pycurl \
        python3-psycopg2 >/dev/null
fi

[ -f "$build/CMakeCache.txt" ] ||
    cmake -S "$here" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j2 --target dagster-sqs-worker fake_dagster dsw dsw-exec bench_sqs >/dev/null
# bench.py's --drain program: bench_sqs in its receive+delete mode.
printf '#!/bin/sh\nexec "%s" --drain "$@"\n' "$build/bench_sqs" >"$out/sqs_drain"
chmod +x "$out/sqs_drain"

svc=$(mktemp -d /tmp/dsw-bench-svc-XXXXXX)
chmod 755 "$svc" # Postgres runs as another user
trap '"$here/scripts/services.sh" stop "$svc" >/dev/null 2>&1 || true; rm -rf "$svc"' EXIT
"$here/scripts/services.sh" start "$svc" >/dev/null
# shellcheck disable=SC1091
. "$svc/env"

# The same cluster, restarted with pg_stat_statements (Postgres round trips per worker role) and
# room for 2,000 concurrent children, each with its own session.
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
as_pg "$DSW_TEST_PG_BIN/pg_ctl" -D "$DSW_TEST_PG_DATA" -w -t 60 -m fast restart \
    -o "-p $DSW_TEST_PG_PORT -k $svc/pg -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=2400 -c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track_utility=on" \
    -l "$svc/pg/server.log" >/dev/null

echo "bench: load before: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) CPUs; output in $out" >&2
/usr/bin/python3 "$here/bench/bench.py" --build "$build" --drain "$out/sqs_drain" \
    --pg "$DSW_TEST_PG_CONNINFO" --fauxqs "$DSW_TEST_FAUXQS_URL" --moto "$DSW_TEST_MOTO_URL" \
    --moto-log "$svc/moto.log" --vectors "$vectors" --out "$out" "$@" | tee "$out/table.txt"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min), $(nproc) CPUs"
