#!/usr/bin/env bash
# The container image, built and run as an operator would: builds the Debian 12 base
# (tests/deploy/base.sh, cached), builds the image from the top-level Containerfile with podman,
# runs `--version` and `check-config` in it, then runs the daemon in a container against
# PostgreSQL and fauxqs on loopback (scripts/services.sh) with the stand-in for
# `dagster api execute_run` (tests/deploy/Containerfile.test), and checks: a run goes to
# SUCCESS, the health check and /healthz answer, a stray grandchild leaves no zombie behind,
# `podman stop` (SIGTERM) ends in a drain with exit status 0 well within the bounds.
#
# Exit status: 0 passed, 1 failed, 77 skipped (podman cannot run containers here). Skipping
# is loud, and under CI=true it is a failure.
#   DSW_DEPLOY_CACHE=DIR   where the base's root file system is cached (see base.sh)
#   DSW_DEPLOY_CONTEXT=head  build from the committed tree (git archive HEAD) instead of the
#                          working tree (a shared checkout with others' edits in progress)
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
cd "$here"
t_start=$SECONDS

fail() { echo "container: FAIL: $*" >&2; exit 1; }
skip() {
    echo "container: ======== SKIPPED: $* ========" >&2
    if [ "${CI:-}" = true ]; then
        echo "container: CI=true: a skip is a failure" >&2
        exit 1
    fi
    exit 77
}
log() { echo "container: $*"; }

sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
need=()
for p in podman runc debootstrap; do command -v "$p" >/dev/null || need+=("$p"); done
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    { sudo_ apt-get update -qq && sudo_ env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends podman runc debootstrap >/dev/null; } ||
        skip "cannot install podman, runc and debootstrap"
fi
[ "$(id -u)" = 0 ] || skip "needs root (rootful podman, debootstrap)"
podman --runtime runc info >/dev/null 2>&1 || skip "podman does not work here: $(podman --runtime runc info 2>&1 | tail -n1)"

# The flags this machine needs: runc (crun is not usable here), the host network so that
# everything stays on loopback, and explicit rlimits (the defaults cannot be set here).
P=(podman --runtime runc)
RUN=("${P[@]}" run --network=host --ulimit nofile=1024:1024 --ulimit nproc=4096:4096)
image=localhost/dagster-sqs-worker:test
build_image=localhost/dagster-sqs-worker-build:test
test_image=localhost/dagster-sqs-worker-fake:test
name=dsw-container-test-$$

svc=$(mktemp -d /tmp/dsw-container.XXXXXX)
chmod 755 "$svc"
cleanup() {
    "${P[@]}" rm -f -t 0 "$name" >/dev/null 2>&1 || true
    bash scripts/services.sh stop "$svc" >/dev/null 2>&1 || true
    rm -rf "$svc"
}
trap cleanup EXIT INT TERM

cmp -s .containerignore .dockerignore || fail ".containerignore and .dockerignore differ"

ctx=.
if [ "${DSW_DEPLOY_CONTEXT:-}" = head ]; then
    ctx=$svc/ctx
    mkdir "$ctx"
    git archive HEAD | tar -x -C "$ctx"
fi

t0=$SECONDS
base=$(bash tests/deploy/base.sh)
t_base=$((SECONDS - t0))
# A first run must prove the base works at all (a podman that cannot start containers is a
# skip, not a failure of the image).
"${RUN[@]}" --rm --no-healthcheck "$base" true 2>"$svc/probe.err" ||
    skip "podman cannot run a container: $(tail -n1 "$svc/probe.err")"

log "building $image (base $base)"
t0=$SECONDS
build() { "${P[@]}" build --network=host --format docker --build-arg BASE="$base" "$@"; }
build -t "$image" -f "$ctx/Containerfile" "$ctx" >"$svc/build.log" 2>&1 || { tail -n 30 "$svc/build.log" >&2; fail "image build"; }
build --target build -t "$build_image" -f "$ctx/Containerfile" "$ctx" >>"$svc/build.log" 2>&1 ||
    { tail -n 30 "$svc/build.log" >&2; fail "build stage"; }
"${P[@]}" build --network=host --format docker --build-arg BUILD="$build_image" \
    --build-arg IMAGE="$image" -t "$test_image" -f "$ctx/tests/deploy/Containerfile.test" "$ctx" \
    >>"$svc/build.log" 2>&1 || { tail -n 30 "$svc/build.log" >&2; fail "test image build"; }
t_build=$((SECONDS - t0))
size=$("${P[@]}" image inspect --format '{{.Size}}' "$image")
base_size=$("${P[@]}" image inspect --format '{{.Size}}' "$base")
log "image built in ${t_build} s: $((size / 1000000)) MB (base $((base_size / 1000000)) MB)"

# ---- the image's metadata ----------------------------------------------------------------
inspect() { "${P[@]}" image inspect --format "$1" "$image"; }
[ "$(inspect '{{.Config.User}}')" = 10001:10001 ] || fail "image user is '$(inspect '{{.Config.User}}')'"
[ "$(inspect '{{json .Config.Entrypoint}}')" = '["/usr/bin/dagster-sqs-worker"]' ] ||
    fail "entrypoint is $(inspect '{{json .Config.Entrypoint}}')"
[ "$(inspect '{{json .Config.Cmd}}')" = '["run"]' ] || fail "cmd is $(inspect '{{json .Config.Cmd}}')"
[ "$(inspect '{{.Config.StopSignal}}')" = SIGTERM ] || fail "stop signal is $(inspect '{{.Config.StopSignal}}')"
[[ $(inspect '{{json .Config.Healthcheck.Test}}') == */healthz* ]] || fail "no /healthz health check"
[[ $(inspect '{{json .Config.Env}}') == *'"DSW_HTTP_LISTEN=0.0.0.0:9464"'* ]] || fail "DSW_HTTP_LISTEN not set"

# ---- one-shot commands -------------------------------------------------------------------
one() { "${RUN[@]}" --rm --no-healthcheck "$@"; }
want_version=$(sed -nE 's/^project\(dagster-sqs-worker VERSION ([0-9.]+).*/\1/p' CMakeLists.txt)
got=$(one "$image" --version)
[ "$got" = "dagster-sqs-worker $want_version" ] || fail "--version printed '$got'"
log "--version: $got"
# Only runtime libraries in the image, and every library the daemon needs is there.
rc=0
one --entrypoint /bin/sh "$image" -c \
    'ldd /usr/bin/dagster-sqs-worker /usr/libexec/dagster-sqs-worker/dsw-exec | grep -q "not found" && exit 1
     for f in /usr/bin/cc /usr/bin/gcc /usr/include/uv.h /usr/include/postgresql; do [ ! -e $f ] || exit 2; done' || rc=$?
[ $rc = 0 ] || fail "runtime image: missing libraries (1) or build leftovers (2): $rc"

bash scripts/services.sh start "$svc" >/dev/null
# shellcheck disable=SC1091
. "$svc/env"
pg() { psql "$DSW_TEST_PG_CONNINFO" -qAtX "$@"; }
queue_url=$(curl -fsS -X POST "$DSW_TEST_FAUXQS_URL" \
    -H 'Content-Type: application/x-amz-json-1.0' -H 'X-Amz-Target: AmazonSQS.CreateQueue' \
    -d '{"QueueName": "dsw-container-test"}' | sed -E 's/.*"QueueUrl" *: *"([^"]+)".*/\1/')
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# The whole configuration from the environment, as the README's container section shows.
envs=(-e DSW_QUEUE_URL="$queue_url" -e DSW_QUEUE_ENDPOINT="$DSW_TEST_FAUXQS_URL"
      -e DSW_QUEUE_REGION=us-east-1 -e DSW_QUEUE_WAIT_TIME=1s
      -e DSW_POSTGRES_CONNINFO="$DSW_TEST_PG_CONNINFO"
      -e DSW_RUNS_DAGSTER_HOME=/tmp -e DSW_RUNS_COMMAND=/usr/local/bin/fake_dagster
      -e DSW_RUNS_ENV_DSW_FAKE_PG_CONNINFO="$DSW_TEST_PG_CONNINFO"
      -e DSW_RUNS_KILL_GRACE=2s -e DSW_RUNS_DRAIN_TIMEOUT=20s -e DSW_RUNS_MAX_CONCURRENT=2
      -e DSW_HTTP_LISTEN=127.0.0.1:"$port"
      -e AWS_ACCESS_KEY_ID=container-test -e AWS_SECRET_ACCESS_KEY=container-test)

one "${envs[@]}" "$test_image" check-config >"$svc/check.out" 2>&1 ||
    { cat "$svc/check.out" >&2; fail "check-config"; }
one "${envs[@]}" "$test_image" db-init >"$svc/dbinit.out" 2>&1 || { cat "$svc/dbinit.out" >&2; fail "db-init"; }
one "${envs[@]}" "$test_image" check-config --connect >"$svc/check.out" 2>&1 ||
    { cat "$svc/check.out" >&2; fail "check-config --connect"; }
rc=0
one "${envs[@]}" -e DSW_RUNS_KILL_GRACE='2 weeks' "$test_image" check-config >"$svc/check.out" 2>&1 || rc=$?
[ $rc = 78 ] || { cat "$svc/check.out" >&2; fail "a bad DSW_* value: exit $rc, not 78"; }
log "check-config: ok, db-init: ok, check-config --connect: ok, a bad value: 78"

# ---- the daemon in a container -----------------------------------------------------------
# The health check runs from `podman healthcheck run` below (podman's own timer needs systemd).
# (Its complaints about the missing systemd go to podman.err.)
"${RUN[@]}" -d --name "$name" --health-interval=disable "${envs[@]}" "$test_image" >/dev/null 2>>"$svc/podman.err"
wait_until() { # seconds, what, command...
    local limit=$1 what=$2 deadline
    shift 2
    deadline=$((SECONDS + limit))
    until "$@"; do
        if [ $SECONDS -ge $deadline ]; then
            "${P[@]}" logs "$name" 2>&1 | tail -n 30 >&2
            fail "timed out after ${limit} s waiting for $what"
        fi
        sleep 0.2
    done
}
healthz() { curl -fsS -o /dev/null "http://127.0.0.1:$port/healthz" 2>/dev/null; }
wait_until 30 "/healthz" healthz
"${P[@]}" healthcheck run "$name" >/dev/null 2>&1 || fail "podman healthcheck run"
log "/healthz: 200, the image's health check: healthy"

status_of() { pg -c "SELECT status FROM runs WHERE run_id = '$1'"; }
is_status() { [ "$(status_of "$1")" = "$2" ]; }
declare -A run
for b in success grandchild; do
    run[$b]=$(python3 -c 'import uuid; print(uuid.uuid4())')
    python3 scripts/mkrun.py "$DSW_TEST_PG_CONNINFO" "${run[$b]}" NOT_STARTED "$b"
    one "${envs[@]}" "$test_image" enqueue "${run[$b]}" >/dev/null
done
t0=$SECONDS
wait_until 60 "run ${run[success]} to be SUCCESS" is_status "${run[success]}" SUCCESS
wait_until 60 "run ${run[grandchild]} to be SUCCESS" is_status "${run[grandchild]}" SUCCESS
log "runs executed in the container: SUCCESS in $((SECONDS - t0)) s"
# The run worker wrote SUCCESS itself; the daemon's record (exit code) follows its exit.
claim_done() { [ "$(pg -c "SELECT state FROM dagster_sqs_worker.run_claims WHERE run_id = '$1'")" = "done" ]; }
wait_until 30 "the daemon's record of ${run[success]}" claim_done "${run[success]}"
exit_code=$(pg -c "SELECT exit_code FROM dagster_sqs_worker.run_claims WHERE run_id = '${run[success]}'")
[ "$exit_code" = 0 ] || fail "recorded exit code '$exit_code'"

# Inside: the daemon is PID 1; the grandchild the run left behind is reaped, no zombie stays.
procs() { "${P[@]}" exec "$name" /bin/sh -c \
    'for f in /proc/[0-9]*/stat; do read -r l <"$f" 2>/dev/null && echo "$l"; done'; }
no_zombie() { local states; states=$(procs | awk '{ sub(/^.*\) /, ""); print $1 }'); ! grep -qx Z <<<"$states"; }
pid1=$(procs | awk '$1 == 1 { print $2 }')
[ "$pid1" = "(dagster-sqs-wor)" ] || fail "PID 1 is $pid1, not the daemon"
wait_until 15 "no zombie in the container" no_zombie
log "PID 1 is the daemon; no zombie left"

# ---- stop: SIGTERM, a drain, exit 0 ------------------------------------------------------
# A run of 3 s is in progress when `podman stop` sends SIGTERM: the drain lets it finish
# (runs.drain_timeout = 20 s), records it, and the daemon exits 0 before podman's own 60 s.
run[sleep]=$(python3 -c 'import uuid; print(uuid.uuid4())')
python3 scripts/mkrun.py "$DSW_TEST_PG_CONNINFO" "${run[sleep]}" NOT_STARTED sleep:3
one "${envs[@]}" "$test_image" enqueue "${run[sleep]}" >/dev/null
wait_until 30 "run ${run[sleep]} to start" is_status "${run[sleep]}" STARTED
t0=$SECONDS
"${P[@]}" stop -t 60 "$name" >/dev/null 2>>"$svc/podman.err"
t_stop=$((SECONDS - t0))
state=$("${P[@]}" inspect --format '{{.State.ExitCode}}' "$name")
[ "$state" = 0 ] || { "${P[@]}" logs "$name" 2>&1 | tail -n 20 >&2; fail "exit status $state after podman stop"; }
is_status "${run[sleep]}" SUCCESS || fail "the run in progress at SIGTERM is $(status_of "${run[sleep]}"), not SUCCESS"
# Bounds: the run's 3 s, the long poll (queue.wait_time = 1 s) and recording; far below the
# drain's own bound (20 s) and podman's 60 s.
[ $t_stop -le 15 ] || fail "podman stop took ${t_stop} s (bound 15 s)"
# (Captured first: grep -q ending a pipe early would fail it under pipefail. podman's log
# file may lag the exit a little: polled.)
drain_logged() { local out; out=$("${P[@]}" logs "$name" 2>&1); grep -q ': draining (' <<<"$out"; }
wait_until 10 "the drain in the daemon's log" drain_logged
log "podman stop during a run: drained (the run finished SUCCESS), exit 0 in ${t_stop} s"

echo "container: PASS (base ${t_base} s, image builds ${t_build} s, total $((SECONDS - t_start)) s;" \
    "image $((size / 1000000)) MB, base $((base_size / 1000000)) MB)"
