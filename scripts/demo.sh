#!/usr/bin/env bash
# The demo on a fresh Debian 12 machine: installs what it needs, builds the daemon, starts
# PostgreSQL (with Dagster's schema) and fauxqs on loopback, configures the worker from the
# environment, checks the configuration, and stops everything it started.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

bash scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j2 --target dagster-sqs-worker >/dev/null
bin=$here/build/dagster-sqs-worker

svc=$(mktemp -d /tmp/dsw-demo.XXXXXX)
chmod 755 "$svc"
cleanup() {
    bash scripts/services.sh stop "$svc" || true
    rm -rf "$svc"
}
trap cleanup EXIT INT TERM
echo "== starting PostgreSQL, moto and fauxqs on loopback"
bash scripts/services.sh start "$svc" >/dev/null
# shellcheck disable=SC1091
. "$svc/env"

queue_url=$(curl -fsS -X POST "$DSW_TEST_FAUXQS_URL" \
    -H 'Content-Type: application/x-amz-json-1.0' -H 'X-Amz-Target: AmazonSQS.CreateQueue' \
    -d '{"QueueName": "dagster-runs"}' | sed -E 's/.*"QueueUrl" *: *"([^"]+)".*/\1/')
echo "== queue: $queue_url"

export DSW_QUEUE_URL=$queue_url DSW_QUEUE_ENDPOINT=$DSW_TEST_FAUXQS_URL DSW_QUEUE_REGION=us-east-1
export DSW_POSTGRES_CONNINFO=$DSW_TEST_PG_CONNINFO DSW_RUNS_DAGSTER_HOME=$svc/dagster_home
export AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo
echo "== dagster-sqs-worker check-config (configuration from the environment)"
"$bin" check-config
