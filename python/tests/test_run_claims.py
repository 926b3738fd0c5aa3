"""run_claims against a real PostgreSQL whose claims schema was made by the daemon's db-init.

Claim rows are inserted directly (with the daemon's columns) and aged with the database clock
(heartbeat_at = now() - interval), so live/stale/done/no-claim are exact, not timing-dependent.
"""

from __future__ import annotations

import subprocess
import uuid
from typing import Any, Iterator, Optional

import pytest

from conftest import REPO, db_init, fresh_db, pg_conninfo, pg_url, psql
from dagster_sqs_worker import run_claims as rc

pytestmark = pytest.mark.daemon


@pytest.fixture(scope="module")
def claims_db() -> Iterator[str]:
    db = fresh_db("dsw_py_claims")
    subprocess.run(
        ["psql", pg_conninfo(db), "-qX", "-v", "ON_ERROR_STOP=1", "-f",
         str(REPO / "tests" / "vectors" / "schema.sql")],
        check=True, capture_output=True,
    )
    db_init(db)
    yield db
    psql("postgres", f"DROP DATABASE {db} WITH (FORCE)")


@pytest.fixture
def conn(claims_db: str) -> Iterator[Any]:
    import sqlalchemy

    engine = sqlalchemy.create_engine(pg_url(claims_db), isolation_level="AUTOCOMMIT")
    with engine.connect() as c:
        yield c
    engine.dispose()


def add_run(db: str, status: str = "STARTED", started_ago: Optional[float] = 1.0) -> str:
    run_id = str(uuid.uuid4())
    start = "NULL" if started_ago is None else f"extract(epoch FROM now()) - {started_ago}"
    psql(
        db,
        "INSERT INTO runs (run_id, pipeline_name, status, run_body, start_time, update_timestamp)"
        f" VALUES ('{run_id}', 'job', '{status}', '{{}}', {start},"
        " (now() AT TIME ZONE 'UTC') - interval '1 second')",
    )
    return run_id


def add_claim(
    db: str,
    run_id: str,
    state: str = "running",
    heartbeat_ago: float = 0.5,
    worker: str = "box7:4242:1700000000",
    exit_code: Optional[int] = None,
    term_signal: Optional[int] = None,
    outcome: Optional[str] = None,
) -> None:
    def lit(v: Any) -> str:
        return "NULL" if v is None else (f"'{v}'" if isinstance(v, str) else str(v))

    finished = "now()" if state == "done" else "NULL"
    psql(
        db,
        "INSERT INTO dagster_sqs_worker.run_claims (run_id, kind, attempt, worker_id,"
        " fencing_token, message_id, receive_count, state, child_pid, claimed_at, heartbeat_at,"
        " finished_at, exit_code, term_signal, outcome) VALUES"
        f" ('{run_id}', 'execute', 1, '{worker}', nextval('dagster_sqs_worker.fence'), 'm-1', 1,"
        f" '{state}', 5151, now() - interval '30 seconds',"
        f" now() - {heartbeat_ago} * interval '1 second', {finished}, {lit(exit_code)},"
        f" {lit(term_signal)}, {lit(outcome)})",
    )


def health(conn: Any, run_id: str, ttl: float = 60.0, grace: float = 180.0) -> rc.Health:
    claim = rc.fetch_claim(conn, run_id)
    age = rc.run_age_s(conn, run_id) if claim is None else None
    return rc.assess(claim, age, ttl, grace)


def test_live_lease_is_running(claims_db: str, conn: Any) -> None:
    r = add_run(claims_db)
    add_claim(claims_db, r, heartbeat_ago=2)
    h = health(conn, r)
    assert h.status == rc.RUNNING
    assert h.run_worker_id == "box7:4242:1700000000"
    assert "box7" in h.msg and "4242" in h.msg and "5151" in h.msg


def test_claimed_not_yet_running_is_running(claims_db: str, conn: Any) -> None:
    r = add_run(claims_db, "STARTING")
    add_claim(claims_db, r, state="claimed", heartbeat_ago=1)
    assert health(conn, r).status == rc.RUNNING


def test_stale_lease_is_failed_naming_host_pid_age(claims_db: str, conn: Any) -> None:
    r = add_run(claims_db)
    add_claim(claims_db, r, heartbeat_ago=95)
    h = health(conn, r, ttl=60)
    assert h.status == rc.FAILED
    assert h.run_worker_id == "box7:4242:1700000000"
    assert "host box7" in h.msg and "pid 4242" in h.msg and "stale" in h.msg
    assert "95." in h.msg  # the heartbeat age, from the database clock


def test_ttl_is_the_boundary(claims_db: str, conn: Any) -> None:
    r = add_run(claims_db)
    add_claim(claims_db, r, heartbeat_ago=30)
    assert health(conn, r, ttl=60).status == rc.RUNNING
    assert health(conn, r, ttl=20).status == rc.FAILED


def test_done_exit_0_is_success(claims_db: str, conn: Any) -> None:
    r = add_run(claims_db, "SUCCESS")
    add_claim(claims_db, r, state="done", exit_code=0, outcome="exited", heartbeat_ago=500)
    h = health(conn, r)
    assert h.status == rc.SUCCESS, h
    assert "exit code 0" in h.msg


@pytest.mark.parametrize(
    "exit_code,sig,outcome",
    [(1, None, "exited"), (None, 9, "signaled"), (None, None, "lost"), (0, None, "canceled")],
)
def test_done_otherwise_is_failed(
    claims_db: str, conn: Any, exit_code: Optional[int], sig: Optional[int], outcome: str
) -> None:
    r = add_run(claims_db)
    add_claim(claims_db, r, state="done", exit_code=exit_code, term_signal=sig, outcome=outcome)
    h = health(conn, r)
    assert h.status == rc.FAILED
    assert outcome in h.msg


def test_no_claim_within_grace_is_running_then_failed(claims_db: str, conn: Any) -> None:
    young = add_run(claims_db, started_ago=5)
    h = health(conn, young, grace=180)
    assert h.status == rc.RUNNING and h.transient is True and h.run_worker_id is None
    assert "no dagster-sqs-worker has claimed" in h.msg
    old = add_run(claims_db, started_ago=600)
    h = health(conn, old, grace=180)
    assert h.status == rc.FAILED and "600" in h.msg


def test_no_claim_without_start_time_uses_update_time(claims_db: str, conn: Any) -> None:
    r = add_run(claims_db, "STARTING", started_ago=None)
    age = rc.run_age_s(conn, r)
    assert age is not None and 0.5 < age < 30  # update_timestamp was 1 s ago, naive UTC
    assert health(conn, r, grace=0.1).status == rc.FAILED


def test_unknown_run_no_claim(conn: Any) -> None:
    assert health(conn, str(uuid.uuid4())).status == rc.UNKNOWN


def test_describe(claims_db: str, conn: Any) -> None:
    r = add_run(claims_db)
    add_claim(claims_db, r, state="done", exit_code=3, outcome="exited", worker="h-1.x:77:1")
    text = rc.describe(rc.fetch_claim(conn, r))
    for word in ("h-1.x:77:1", "host h-1.x", "pid 77", "run worker pid 5151", "exit code 3",
                 "outcome exited", "heartbeat", "message m-1"):
        assert word in text, (word, text)
    assert "no claim" in rc.describe(None)


def test_schema_missing_is_a_clear_error() -> None:
    import sqlalchemy

    db = fresh_db("dsw_py_noschema")
    try:
        engine = sqlalchemy.create_engine(pg_url(db), isolation_level="AUTOCOMMIT")
        with engine.connect() as c, pytest.raises(rc.ClaimsSchemaMissing, match="db-init"):
            rc.fetch_claim(c, str(uuid.uuid4()))
        engine.dispose()
    finally:
        psql("postgres", f"DROP DATABASE {db} WITH (FORCE)")


def test_split_worker_id() -> None:
    assert rc.split_worker_id("host:12:1700") == ("host", 12)
    assert rc.split_worker_id("host:12") == ("host", 12)
    assert rc.split_worker_id("weird") == ("weird", None)
