#!/usr/bin/env bash
# Dagster's storage schema as real Dagster creates it: `dagster instance migrate` against a
# throwaway PostgreSQL, then `pg_dump --schema-only` to stdout.
#   bash tests/dagster/gen_schema.sh [1.3|1.7] > tests/vectors/schema.sql
# Dagster: DSW_DAGSTER_SRC (a tree with python_modules/dagster) or ../shared/dagster/<tree>.
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
tree=${1:-1.3}
svc=$(mktemp -d /tmp/dsw-schema.XXXXXX)
chmod 755 "$svc"
trap 'bash "$here/scripts/services.sh" stop "$svc" >/dev/null 2>&1 || true; rm -rf "$svc"' EXIT
bash "$here/scripts/services.sh" start "$svc" >/dev/null
# shellcheck disable=SC1091
. "$svc/env"
db=dsw_schema_$$
psql "$DSW_TEST_PG_CONNINFO" -qAtX -c "CREATE DATABASE $db" >/dev/null
url=$(python3 - "$DSW_TEST_PG_CONNINFO" "$db" <<'PY'
import sys
kv = dict(p.split("=", 1) for p in sys.argv[1].split())
print("postgresql://%s:%s@%s:%s/%s" % (kv.get("user", "postgres"), kv.get("password", ""),
      kv.get("host", "127.0.0.1"), kv.get("port", "5432"), sys.argv[2]))
PY
)
if [ -n "${DSW_DAGSTER_SRC:-}" ]; then
    export PYTHONPATH="$DSW_DAGSTER_SRC/python_modules/dagster:$DSW_DAGSTER_SRC/libraries/dagster-postgres${PYTHONPATH:+:$PYTHONPATH}"
    py=/usr/bin/python3
else
    eval "$(bash "$here/../shared/dagster/env.sh" "$tree")"
    py=$DSW_DAGSTER_PYTHON
fi
export DAGSTER_HOME=$svc/dagster_home
mkdir -p "$DAGSTER_HOME"
printf 'storage:\n  postgres:\n    postgres_url: "%s"\ntelemetry:\n  enabled: false\n' "$url" \
    >"$DAGSTER_HOME/dagster.yaml"
"$py" -m dagster instance migrate >&2
conn=$(echo "$DSW_TEST_PG_CONNINFO" | sed -E "s/dbname=[^ ]+/dbname=$db/")
pg_dump --schema-only --no-owner --no-privileges "$conn"
