#!/usr/bin/env bash
# The demo on a fresh Debian 12 machine: installs what it needs, builds the daemon, starts
# PostgreSQL and fauxqs on loopback, creates four Dagster runs, enqueues them the way the
# dagster-taskiq launcher does, lets the daemon execute them, cancels one, and prints each run's
# final status and the exit status the daemon recorded. Then it stops the daemon with SIGTERM
# (a drain) and everything it started.
#
# The run worker is real Dagster (`dagster api execute_run` of tests/dagster/jobs.py) when one is
# found: DSW_DAGSTER_SRC (a source tree), an importable dagster in python3, or the shared trees
# beside the checkout (../shared/dagster, the newest). Otherwise (a plain clone, no PyPI) it is
# the stand-in (tests/support/prog_fake_dagster.c), which writes the events and statuses real
# Dagster writes. It says which. In production runs.command is your venv's `dagster`.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
export DSW_VECTORS=${DSW_VECTORS:-$here/tests/vectors}

bash scripts/deps.sh
# Which run worker.
real='' dpy=''
shared=$here/../shared/dagster
if [ -n "${DSW_DAGSTER_SRC:-}" ]; then
    src=$(cd "$DSW_DAGSTER_SRC" && pwd)
    if [ -f "$(dirname "$src")/env.sh" ]; then
        eval "$(bash "$(dirname "$src")/env.sh" "$(basename "$src")")"
    else
        pp=$src/python_modules/dagster:$src/python_modules/libraries/dagster-postgres
        export PYTHONPATH=$pp${PYTHONPATH:+:$PYTHONPATH} PYTHONDONTWRITEBYTECODE=1
    fi
    dpy=${DSW_DAGSTER_PYTHON:-/usr/bin/python3}
    real="DSW_DAGSTER_SRC=$DSW_DAGSTER_SRC"
elif python3 -c 'import dagster, dagster_postgres' 2>/dev/null; then
    dpy=$(command -v python3)
    real="the dagster importable by $dpy"
elif [ -f "$shared/env.sh" ] && tree=$(printf '%s\n' "$shared"/1.* | sort -V | tail -n1) &&
    [ -d "$tree" ]; then
    eval "$(bash "$shared/env.sh" "$(basename "$tree")")"
    dpy=$DSW_DAGSTER_PYTHON
    real="the shared tree $(cd "$tree" && pwd)"
fi
if [ -n "$real" ] && ! "$dpy" -c 'import dagster, dagster_postgres' 2>/dev/null; then
    echo "demo: $real does not import (dagster, dagster_postgres); using the stand-in" >&2
    real=
fi
if [ -n "$real" ]; then
    echo "== run worker: real Dagster $("$dpy" -c 'import dagster; print(dagster.__version__)') ($real)"
else
    echo "== run worker: the stand-in for \`dagster api execute_run\` (no real Dagster found: set DSW_DAGSTER_SRC to a Dagster source tree or install dagster + dagster-postgres for python3)"
fi
echo "== build"
cmake -S . -B build-demo -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build-demo -j2 --target dagster-sqs-worker fake_dagster >/dev/null
bin=$here/build-demo/dagster-sqs-worker

svc=$(mktemp -d /tmp/dsw-demo.XXXXXX)
chmod 755 "$svc"
daemon=
cleanup() {
    [ -n "$daemon" ] && kill -9 "$daemon" 2>/dev/null || true
    bash scripts/services.sh stop "$svc" || true
    rm -rf "$svc"
}
trap cleanup EXIT INT TERM
echo "== starting PostgreSQL and the SQS servers on loopback"
bash scripts/services.sh start "$svc" >/dev/null
# shellcheck disable=SC1091
. "$svc/env"
queue_url=$(curl -fsS -X POST "$DSW_TEST_FAUXQS_URL" \
    -H 'Content-Type: application/x-amz-json-1.0' -H 'X-Amz-Target: AmazonSQS.CreateQueue' \
    -d '{"QueueName": "dagster-runs"}' | sed -E 's/.*"QueueUrl" *: *"([^"]+)".*/\1/')
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

conninfo=$DSW_TEST_PG_CONNINFO
if [ -n "$real" ]; then
    # Real Dagster creates its own tables in a database of its own, on first use.
    psql "$conninfo" -qAtX -c 'CREATE DATABASE dagster_real'
    conninfo=${conninfo/dbname=dagster/dbname=dagster_real}
    export DAGSTER_HOME=$svc/dagster_home
    mkdir -p "$DAGSTER_HOME"
    printf 'storage:\n  postgres:\n    postgres_url: "postgresql://postgres@127.0.0.1:%s/dagster_real"\ntelemetry:\n  enabled: false\n' \
        "$DSW_TEST_PG_PORT" >"$DAGSTER_HOME/dagster.yaml"
    printf '#!/bin/sh\nexec %s -m dagster "$@"\n' "$dpy" >"$svc/dagster"
    chmod 755 "$svc/dagster"
    export PYTHONPATH=$here/tests/dagster${PYTHONPATH:+:$PYTHONPATH}
    druns() { "$dpy" "$here/tests/dagster/demo_runs.py" "$@"; }
    druns init
fi
pg() { psql "$conninfo" -qAtX "$@"; }

# Configuration from the environment alone, as in a container.
export DSW_QUEUE_URL=$queue_url DSW_QUEUE_ENDPOINT=$DSW_TEST_FAUXQS_URL DSW_QUEUE_REGION=us-east-1
export DSW_QUEUE_WAIT_TIME=2s DSW_POSTGRES_CONNINFO=$conninfo
# kill_grace also bounds how long a run worker may take to exit after writing its own outcome
# (real Dagster needs a few seconds on a busy machine).
export DSW_RUNS_CANCEL_POLL=500ms DSW_RUNS_KILL_GRACE=10s DSW_RUNS_MAX_CONCURRENT=4
export DSW_HTTP_LISTEN=127.0.0.1:$port DSW_LOG_LEVEL=info
export AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo
if [ -n "$real" ]; then
    export DSW_RUNS_DAGSTER_HOME=$DAGSTER_HOME DSW_RUNS_COMMAND=$svc/dagster
else
    export DSW_RUNS_DAGSTER_HOME=$svc DSW_RUNS_COMMAND=$here/build-demo/fake_dagster
    export DSW_RUNS_ENV_DSW_FAKE_PG_CONNINFO=$conninfo
fi

echo "== check-config --connect, db-init"
"$bin" check-config --connect | grep -E '^(postgres|queue):' || true
"$bin" db-init

declare -A behavior=([success]=success [failure]=failure [crash]=crash [canceled]=sleep:60)
declare -A job=([success]=ok_job [failure]=fail_job [crash]=crash_job [canceled]="slow_job 60")
declare -A runid
for name in success failure crash canceled; do
    if [ -n "$real" ]; then
        # shellcheck disable=SC2086 # job and its seconds
        runid[$name]=$(druns create ${job[$name]})
    else
        runid[$name]=$(python3 -c 'import uuid; print(uuid.uuid4())')
        python3 scripts/mkrun.py "$conninfo" "${runid[$name]}" NOT_STARTED "${behavior[$name]}"
    fi
    "$bin" enqueue "${runid[$name]}" | sed 's/^/   /'
done

log=$here/build-demo/daemon.log # kept after the demo (the services dir is removed)
echo "== the daemon (log in $log)"
"$bin" run 2>"$log" &
daemon=$!

wait_until() { # seconds, description, command...
    local limit=$1 what=$2 deadline
    shift 2
    deadline=$((SECONDS + limit))
    until "$@"; do
        [ $SECONDS -lt $deadline ] || { echo "demo: timed out waiting for $what" >&2; tail -20 "$log" >&2; exit 1; }
        sleep 0.2
    done
}
status_of() { pg -c "SELECT status FROM runs WHERE run_id = '$1'"; }
is_status() { [ "$(status_of "$1")" = "$2" ]; }

wait_until 120 "the long run to start" is_status "${runid[canceled]}" STARTED
if [ -n "$real" ]; then
    echo "== canceling run ${runid[canceled]} (Dagster's instance.report_run_canceling: status CANCELING)"
    druns cancel "${runid[canceled]}"
else
    echo "== canceling run ${runid[canceled]} (as the Dagster UI does: status CANCELING)"
    pg -c "UPDATE runs SET status = 'CANCELING' WHERE run_id = '${runid[canceled]}'"
fi
all_terminal() {
    local n
    n=$(pg -c "SELECT count(*) FROM runs WHERE status IN ('SUCCESS','FAILURE','CANCELED')")
    [ "$n" = 4 ]
}
wait_until 180 "every run to finish" all_terminal

echo "== results"
printf '%-10s %-38s %-9s %-10s %-7s %s\n' RUN RUN_ID STATUS EXIT_CODE SIGNAL "RECORDED BY"
for name in success failure crash canceled; do
    r=${runid[$name]}
    row=$(pg -F' ' -c "SELECT r.status, coalesce(c.exit_code::text,'-'), coalesce(nullif(c.term_signal, 0)::text,'-')
                        FROM runs r LEFT JOIN dagster_sqs_worker.run_claims c USING (run_id)
                        WHERE r.run_id = '$r'")
    who=$(pg -c "SELECT CASE WHEN count(*) > 0 THEN 'dagster-sqs-worker' ELSE 'the run' END
                 FROM event_logs WHERE run_id = '$r' AND dagster_event_type IN
                 ('PIPELINE_FAILURE','PIPELINE_CANCELED','PIPELINE_SUCCESS')
                 AND strpos(event, '\"[dagster-sqs-worker] ') > 0")
    read -r st code sig <<<"$row"
    printf '%-10s %-38s %-9s %-10s %-7s %s\n' "$name" "$r" "$st" "$code" "$sig" "$who"
done

if [ -n "$real" ]; then
    echo "== as Dagster reads them (get_run_by_id, all_logs, get_run_step_stats)"
    druns show "${runid[success]}" "${runid[failure]}" "${runid[crash]}" "${runid[canceled]}" | sed 's/^/   /'
fi
echo "== metrics (excerpt)"
curl -fsS "http://127.0.0.1:$port/metrics" | grep -E '^dsw_(messages|runs_finished|claims)' || true
echo "== stopping the daemon with SIGTERM (drain)"
kill -TERM "$daemon"
rc=0
wait "$daemon" || rc=$?
daemon=
echo "daemon exited with status $rc; messages left in the queue:"
curl -fsS -X POST "$DSW_TEST_FAUXQS_URL" -H 'Content-Type: application/x-amz-json-1.0' \
    -H 'X-Amz-Target: AmazonSQS.GetQueueAttributes' \
    -d "{\"QueueUrl\": \"$queue_url\", \"AttributeNames\": [\"ApproximateNumberOfMessages\", \"ApproximateNumberOfMessagesNotVisible\"]}"
echo
