#!/usr/bin/env bash
# Start or stop the throwaway services the tests and the demo use, all on loopback:
#   scripts/services.sh start DIR   -> PostgreSQL (Dagster schema loaded), moto, fauxqs;
#                                      writes DIR/env (sourceable) with their endpoints
#   scripts/services.sh stop DIR    -> stops everything started in DIR
# Nothing is installed here; scripts/deps.sh does that.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
vectors=${DSW_VECTORS:-$here/tests/vectors}
PGBIN=${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_http() { # url, seconds
    local url=$1 deadline=$((SECONDS + $2))
    until curl -fsS -o /dev/null "$url" 2>/dev/null; do
        [ $SECONDS -lt $deadline ] || { echo "services: $url did not answer" >&2; return 1; }
        sleep 0.1
    done
}

as_pg() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start_pg() {
    local dir=$1 port
    port=$(free_port)
    mkdir -p "$dir/pg"
    [ "$(id -u)" = 0 ] && chown postgres: "$dir/pg" && chmod 700 "$dir/pg"
    as_pg "$PGBIN/initdb" -D "$dir/pg/data" -U postgres -A trust --no-sync -E UTF8 >"$dir/pg/initdb.log"
    as_pg "$PGBIN/pg_ctl" -D "$dir/pg/data" -l "$dir/pg/server.log" -w -t 30 start \
        -o "-p $port -k $dir/pg -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" >/dev/null
    psql -h 127.0.0.1 -p "$port" -U postgres -qAt -c 'CREATE DATABASE dagster' >/dev/null
    psql -h 127.0.0.1 -p "$port" -U postgres -d dagster -q -v ON_ERROR_STOP=1 -f "$vectors/schema.sql" >/dev/null
    {
        echo "export DSW_TEST_PG_PORT=$port"
        echo "export DSW_TEST_PG_DATA=$dir/pg/data"
        echo "export DSW_TEST_PG_BIN=$PGBIN"
        echo "export DSW_TEST_PG_CONNINFO='host=127.0.0.1 port=$port user=postgres dbname=dagster'"
    } >>"$dir/env"
}

start_moto() {
    local dir=$1 port
    command -v moto_server >/dev/null || { echo "services: moto_server not installed" >&2; return 1; }
    port=$(free_port)
    moto_server -H 127.0.0.1 -p "$port" >"$dir/moto.log" 2>&1 &
    echo $! >"$dir/moto.pid"
    wait_http "http://127.0.0.1:$port/moto-api/" 30
    echo "export DSW_TEST_MOTO_URL=http://127.0.0.1:$port" >>"$dir/env"
}

start_fauxqs() {
    local dir=$1 port
    port=$(free_port)
    node "$here/tests/support/fauxqs/serve.mjs" "$port" >"$dir/fauxqs.log" 2>&1 &
    echo $! >"$dir/fauxqs.pid"
    wait_http "http://127.0.0.1:$port/health" 30
    echo "export DSW_TEST_FAUXQS_URL=http://127.0.0.1:$port" >>"$dir/env"
}

stop_all() {
    local dir=$1
    for svc in moto fauxqs; do
        if [ -f "$dir/$svc.pid" ]; then
            kill "$(cat "$dir/$svc.pid")" 2>/dev/null || true
            rm -f "$dir/$svc.pid"
        fi
    done
    if [ -f "$dir/pg/data/postmaster.pid" ]; then
        as_pg "$PGBIN/pg_ctl" -D "$dir/pg/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
}

case "${1:-}" in
start)
    dir=${2:?usage: services.sh start DIR}
    mkdir -p "$dir"
    : >"$dir/env"
    start_pg "$dir"
    start_moto "$dir"
    start_fauxqs "$dir"
    cat "$dir/env"
    ;;
start-pg)
    # PostgreSQL alone, for tests that stop and start their own server.
    dir=${2:?usage: services.sh start-pg DIR}
    mkdir -p "$dir"
    : >"$dir/env"
    start_pg "$dir"
    cat "$dir/env"
    ;;
restart-pg)
    dir=${2:?usage: services.sh restart-pg DIR}
    . "$dir/env"
    as_pg "$PGBIN/pg_ctl" -D "$dir/pg/data" -l "$dir/pg/server.log" -w -t 30 start \
        -o "-p $DSW_TEST_PG_PORT -k $dir/pg -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" >/dev/null
    ;;
kill-pg)
    as_pg "$PGBIN/pg_ctl" -D "${2:?usage: services.sh kill-pg DIR}/pg/data" -m immediate -w stop >/dev/null
    ;;
stop)
    stop_all "${2:?usage: services.sh stop DIR}"
    ;;
*)
    echo "usage: $0 start|start-pg|kill-pg|restart-pg|stop DIR" >&2
    exit 64
    ;;
esac
