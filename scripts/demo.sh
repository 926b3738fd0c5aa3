#!/usr/bin/env bash
# The demo on a fresh Debian 12 machine: installs what it needs, builds the daemon, starts
# PostgreSQL (with Dagster's schema) and fauxqs on loopback, creates four Dagster runs, enqueues
# them the way the dagster-taskiq launcher does, lets the daemon execute them, cancels one, and
# prints each run's final status and the exit status the daemon recorded. Then it stops the
# daemon with SIGTERM (a drain) and everything it started.
#
# Dagster itself cannot be installed here (no PyPI), so the run worker is the test double of
# `dagster api execute_run` (tests/support/prog_fake_dagster.c), which writes the events and
# statuses real Dagster writes. In production runs.command is your venv's `dagster`.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
export DSW_VECTORS=${DSW_VECTORS:-$here/tests/vectors}

bash scripts/deps.sh
# Which run worker: real Dagster is found (DSW_DAGSTER_SRC, an importable dagster, or
# ../shared/dagster/1.7) but the demo still runs the stand-in; it says which it found.
if [ -n "${DSW_DAGSTER_SRC:-}" ]; then
    found="DSW_DAGSTER_SRC=$DSW_DAGSTER_SRC"
elif python3 -c 'import dagster' 2>/dev/null; then
    found="an importable dagster"
elif [ -d "$here/../shared/dagster/1.7" ]; then
    found="../shared/dagster/1.7"
else
    found=
fi
if [ -n "$found" ]; then
    echo "== run worker: the stand-in for \`dagster api execute_run\` (real Dagster found at $found, not used by the demo yet)"
else
    echo "== run worker: the stand-in for \`dagster api execute_run\` (no real Dagster: set DSW_DAGSTER_SRC or install dagster)"
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
pg() { psql "$DSW_TEST_PG_CONNINFO" -qAtX "$@"; }

queue_url=$(curl -fsS -X POST "$DSW_TEST_FAUXQS_URL" \
    -H 'Content-Type: application/x-amz-json-1.0' -H 'X-Amz-Target: AmazonSQS.CreateQueue' \
    -d '{"QueueName": "dagster-runs"}' | sed -E 's/.*"QueueUrl" *: *"([^"]+)".*/\1/')
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

# Configuration from the environment alone, as in a container.
export DSW_QUEUE_URL=$queue_url DSW_QUEUE_ENDPOINT=$DSW_TEST_FAUXQS_URL DSW_QUEUE_REGION=us-east-1
export DSW_QUEUE_WAIT_TIME=2s DSW_POSTGRES_CONNINFO=$DSW_TEST_PG_CONNINFO
export DSW_RUNS_DAGSTER_HOME=$svc DSW_RUNS_COMMAND=$here/build-demo/fake_dagster
export DSW_RUNS_ENV_DSW_FAKE_PG_CONNINFO=$DSW_TEST_PG_CONNINFO
export DSW_RUNS_CANCEL_POLL=500ms DSW_RUNS_KILL_GRACE=2s DSW_RUNS_MAX_CONCURRENT=4
export DSW_HTTP_LISTEN=127.0.0.1:$port DSW_LOG_LEVEL=info
export AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo

echo "== check-config --connect, db-init"
"$bin" check-config --connect | grep -E '^(postgres|queue):' || true
"$bin" db-init

declare -A behavior=([success]=success [failure]=failure [crash]=crash [canceled]=sleep:60)
declare -A runid
for name in success failure crash canceled; do
    runid[$name]=$(python3 -c 'import uuid; print(uuid.uuid4())')
    python3 scripts/mkrun.py "$DSW_TEST_PG_CONNINFO" "${runid[$name]}" NOT_STARTED "${behavior[$name]}"
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

wait_until 30 "the long run to start" is_status "${runid[canceled]}" STARTED
echo "== canceling run ${runid[canceled]} (as the Dagster UI does: status CANCELING)"
pg -c "UPDATE runs SET status = 'CANCELING' WHERE run_id = '${runid[canceled]}'"
all_terminal() {
    local n
    n=$(pg -c "SELECT count(*) FROM runs WHERE status IN ('SUCCESS','FAILURE','CANCELED')")
    [ "$n" = 4 ]
}
wait_until 60 "every run to finish" all_terminal

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
                 AND event LIKE '%dagster-sqs-worker%'")
    read -r st code sig <<<"$row"
    printf '%-10s %-38s %-9s %-10s %-7s %s\n' "$name" "$r" "$st" "$code" "$sig" "$who"
done

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
