#!/usr/bin/env bash
# The worked example for real: the worker image with Dagster and the example's code location
# (deploy/examples/Containerfile.dagster; here its twin tests/deploy/Containerfile.dagster-local,
# which takes Dagster from the tests' source tree instead of the package index), run the way
# deploy/kubernetes/ runs it (uid 10001, read-only root, no capabilities, no new privileges,
# DAGSTER_HOME an empty writable directory with dagster.yaml in it), against PostgreSQL and moto
# on loopback. The example's hello_job is launched through Dagster's own API on this machine
# (tests/deploy/launch_example.py); the daemon in the container executes it with real
# `dagster api execute_run`; the run must reach SUCCESS with both steps' events and the op's log
# line; then `podman stop` drains and exits 0.
# Exit status: 0 passed, 1 failed, 77 skipped (no podman, or no Dagster tree); CI=true: a skip fails.
#   DSW_SHARED_DAGSTER=DIR  the Dagster trees (default ../shared/dagster beside the checkout)
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
cd "$here"
t_start=$SECONDS
fail() { echo "container-dagster: FAIL: $*" >&2; exit 1; }
skip() {
    echo "container-dagster: ======== SKIPPED: $* ========" >&2
    [ "${CI:-}" != true ] || { echo "container-dagster: CI=true: a skip is a failure" >&2; exit 1; }
    exit 77
}
log() { echo "container-dagster: $*"; }

shared=${DSW_SHARED_DAGSTER:-$here/../shared/dagster}
tree=$shared/1.7
[ -d "$tree/python_modules/dagster" ] || skip "no Dagster 1.7 tree at $tree"
command -v podman >/dev/null && [ "$(id -u)" = 0 ] && podman --runtime runc info >/dev/null 2>&1 ||
    skip "podman cannot run here (run tests/deploy/container.sh for the details)"
eval "$(bash "$shared/env.sh" 1.7)"
deps=$(tr ':' '\n' <<<"$PYTHONPATH" | grep '/deps$' | head -n1)
[ -d "$deps/grpc_health" ] || fail "env.sh gave no deps directory"

P=(podman --runtime runc)
RUN=("${P[@]}" run --network=host --ulimit nofile=1024:1024 --ulimit nproc=4096:4096)
image=localhost/dagster-sqs-worker:test
example=localhost/dagster-sqs-worker-example:test
name=dsw-container-dagster-$$
svc=$(mktemp -d /tmp/dsw-container-dagster.XXXXXX)
chmod 755 "$svc"
cleanup() {
    "${P[@]}" rm -f -t 0 "$name" >/dev/null 2>&1 || true
    bash scripts/services.sh stop "$svc" >/dev/null 2>&1 || true
    rm -rf "$svc"
}
trap cleanup EXIT INT TERM

t0=$SECONDS
base=$(bash tests/deploy/base.sh)
ctx=.
if [ "${DSW_DEPLOY_CONTEXT:-}" = head ]; then
    ctx=$svc/src
    mkdir "$ctx"
    git archive HEAD | tar -x -C "$ctx"
fi
"${P[@]}" build --network=host --format docker --build-arg BASE="$base" -t "$image" \
    -f "$ctx/Containerfile" "$ctx" >"$svc/build.log" 2>&1 || { tail -n 30 "$svc/build.log" >&2; fail "image build"; }
# The example's context: its own files as dagster/, the Dagster packages as dagster-src/.
ex=$svc/ctx
mkdir -p "$ex/dagster-src"
cp -r deploy/examples/dagster "$ex/dagster"
cp -r "$tree/python_modules/dagster" "$ex/dagster-src/dagster"
cp -r "$tree/python_modules/libraries/dagster-postgres" "$ex/dagster-src/dagster-postgres"
cp -r "$tree/python_modules/dagster-pipes" "$ex/dagster-src/dagster-pipes"
cp -r "$deps" "$ex/dagster-src/deps"
rm -rf "$ex/dagster-src/deps/bin"
find "$ex" -name __pycache__ -prune -exec rm -rf {} +
"${P[@]}" build --network=host --format docker --build-arg WORKER_IMAGE="$image" -t "$example" \
    -f tests/deploy/Containerfile.dagster-local "$ex" >>"$svc/build.log" 2>&1 ||
    { tail -n 30 "$svc/build.log" >&2; fail "example image build"; }
t_build=$((SECONDS - t0))
size=$("${P[@]}" image inspect --format '{{.Size}}' "$example")
log "example image built in ${t_build} s: $((size / 1000000)) MB"

bash scripts/services.sh start "$svc" >/dev/null
# shellcheck disable=SC1091
. "$svc/env"
psql "$DSW_TEST_PG_CONNINFO" -qAtX -c 'CREATE DATABASE example' >/dev/null
conninfo="host=127.0.0.1 port=$DSW_TEST_PG_PORT user=postgres dbname=example"
pg() { psql "$conninfo" -qAtX "$@"; }
queue_url=$("$DSW_DAGSTER_PYTHON" -c 'import sys, boto3
print(boto3.client("sqs", endpoint_url=sys.argv[1], region_name="us-east-1", aws_access_key_id="testing",
      aws_secret_access_key="testing").create_queue(QueueName="dsw-example")["QueueUrl"])' "$DSW_TEST_MOTO_URL")
[ -n "$queue_url" ] || fail "no queue on moto"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

# Dagster's tables (an empty database: Dagster creates them), then the run, launched as the
# webserver would; the message waits on the queue until the worker starts.
run_id=$("$DSW_DAGSTER_PYTHON" tests/deploy/launch_example.py "postgresql://postgres@127.0.0.1:$DSW_TEST_PG_PORT/example" \
    "$DSW_TEST_MOTO_URL" "$queue_url" "$svc/host_home" 2>"$svc/launch.err") ||
    { tail -n 20 "$svc/launch.err" >&2; fail "launching hello_job through Dagster"; }
log "hello_job launched through Dagster's launch_run: run $run_id, status $(pg -c "SELECT status FROM runs WHERE run_id = '$run_id'")"

# As deploy/kubernetes/deployment.yaml runs it: config in the environment, DAGSTER_HOME an
# empty writable directory with dagster.yaml mounted into it, everything else read-only.
mkdir -p "$svc/dagster_home"
cp deploy/kubernetes/dagster.yaml "$svc/dagster_home/dagster.yaml"
chown -R 10001:10001 "$svc/dagster_home"
envs=(-e DSW_QUEUE_URL="$queue_url" -e DSW_QUEUE_ENDPOINT="$DSW_TEST_MOTO_URL"
      -e DSW_QUEUE_REGION=us-east-1 -e DSW_QUEUE_WAIT_TIME=1s
      -e AWS_ACCESS_KEY_ID=testing -e AWS_SECRET_ACCESS_KEY=testing
      -e DSW_POSTGRES_CONNINFO="$conninfo" -e DSW_HTTP_LISTEN=127.0.0.1:"$port"
      -e DAGSTER_PG_HOST=127.0.0.1 -e DAGSTER_PG_PORT="$DSW_TEST_PG_PORT" -e DAGSTER_PG_USER=postgres
      -e DAGSTER_PG_DB=example -e DAGSTER_PG_PASSWORD=
      -e DSW_RUNS_MAX_CONCURRENT=2 -e DSW_RUNS_KILL_GRACE=5s -e DSW_RUNS_DRAIN_TIMEOUT=60s)
hardened=(--read-only --tmpfs /tmp --tmpfs /var/lib/dagster-sqs-worker --cap-drop=ALL
          --security-opt=no-new-privileges -v "$svc/dagster_home:/opt/dagster/dagster_home")
"${RUN[@]}" --rm --no-healthcheck "${envs[@]}" "$example" db-init >"$svc/dbinit.out" 2>&1 ||
    { cat "$svc/dbinit.out" >&2; fail db-init; }
"${RUN[@]}" -d --name "$name" --health-interval=disable "${hardened[@]}" "${envs[@]}" "$example" \
    >/dev/null 2>>"$svc/podman.err"

t0=$SECONDS
deadline=$((SECONDS + 180))
while :; do
    st=$(pg -c "SELECT status FROM runs WHERE run_id = '$run_id'")
    case $st in SUCCESS | FAILURE | CANCELED) break ;; esac
    if [ $SECONDS -ge $deadline ] || [ "$("${P[@]}" inspect --format '{{.State.Running}}' "$name")" != true ]; then
        "${P[@]}" logs "$name" 2>&1 | tail -n 40 >&2
        fail "run $run_id is $st after $((SECONDS - t0)) s"
    fi
    sleep 0.5
done
t_run=$((SECONDS - t0))
[ "$st" = SUCCESS ] || { "${P[@]}" logs "$name" 2>&1 | tail -n 40 >&2; fail "run $run_id ended $st"; }
for step in greeting shout; do
    [ "$(pg -c "SELECT count(*) FROM event_logs WHERE run_id = '$run_id' AND step_key = '$step' AND dagster_event_type = 'STEP_SUCCESS'")" = 1 ] ||
        fail "no STEP_SUCCESS of $step"
done
logs=$(pg -c "SELECT event FROM event_logs WHERE run_id = '$run_id' AND dagster_event_type IS NULL")
grep -q 'HELLO FROM DAGSTER-SQS-WORKER' <<<"$logs" || fail "the op's log line is not in the event log"
# The run worker wrote SUCCESS itself; the daemon's record (exit code) follows its exit.
deadline=$((SECONDS + 30))
until [ "$(pg -c "SELECT state FROM dagster_sqs_worker.run_claims WHERE run_id = '$run_id'")" = "done" ]; do
    [ $SECONDS -lt $deadline ] || break
    sleep 0.2
done
code=$(pg -c "SELECT exit_code FROM dagster_sqs_worker.run_claims WHERE run_id = '$run_id'")
[ "$code" = 0 ] || { pg -c "SELECT * FROM dagster_sqs_worker.run_claims" >&2; "${P[@]}" logs "$name" 2>&1 | grep -v child_std | tail -n 20 >&2; fail "recorded exit code '$code'"; }
log "hello_job executed by real Dagster in the container: SUCCESS in ${t_run} s, both steps, exit 0 recorded"

"${P[@]}" stop -t 90 "$name" >/dev/null 2>>"$svc/podman.err"
rc=$("${P[@]}" inspect --format '{{.State.ExitCode}}' "$name")
[ "$rc" = 0 ] || fail "exit status $rc after podman stop"
log "PASS in $((SECONDS - t_start)) s (image $((size / 1000000)) MB)"
