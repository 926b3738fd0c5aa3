"""step_claims against a real PostgreSQL whose claims schema (version 2) was made by the daemon's
db-init, and the attempt/step-key rules of envelope (docs/steps.md §1) without Dagster.

Claim rows and Dagster events are inserted directly and aged with the database clock
(heartbeat_at = now() - interval), so every §4 row is exact, not timing-dependent.
"""

from __future__ import annotations

import uuid
from typing import Any, Iterator, Optional

import pytest

from conftest import REPO, db_init, fresh_db, pg_url, psql
from dagster_sqs_worker import envelope, run_claims
from dagster_sqs_worker import step_claims as sc

pytestmark = pytest.mark.daemon

WORKER = "box7:4242:1700000000"


def lit(v: Any) -> str:
    return "NULL" if v is None else (f"'{v}'" if isinstance(v, str) else str(v))


def add_step_claim(
    db: str,
    key: sc.StepKey,
    state: str = "running",
    heartbeat_ago: float = 0.5,
    claimed_ago: float = 30.0,
    exit_code: Optional[int] = None,
    term_signal: Optional[int] = None,
    outcome: Optional[str] = None,
    receive_count: int = 1,
    worker: str = WORKER,
) -> None:
    """One step_claims row with the daemon's columns (replacing the key's row, if any)."""
    finished = "now()" if state == "done" else "NULL"
    psql(db, f"DELETE FROM {sc.TABLE} WHERE run_id = {lit(key.run_id)} AND step_key ="
             f" {lit(key.step_key)} AND attempt = {key.attempt}")
    psql(
        db,
        f"INSERT INTO {sc.TABLE} (run_id, step_key, attempt, worker_id, fencing_token,"
        " message_id, receive_count, state, child_pid, claimed_at, heartbeat_at, finished_at,"
        " exit_code, term_signal, outcome) VALUES"
        f" ({lit(key.run_id)}, {lit(key.step_key)}, {key.attempt}, {lit(worker)},"
        f" nextval('dagster_sqs_worker.fence'), 'm-1', {receive_count}, {lit(state)}, 5151,"
        f" now() - {claimed_ago} * interval '1 second',"
        f" now() - {heartbeat_ago} * interval '1 second', {finished}, {lit(exit_code)},"
        f" {lit(term_signal)}, {lit(outcome)})",
    )


def add_event(db: str, run_id: str, step_key: str, event_type: str, ago: float) -> None:
    """A Dagster event_logs row (naive UTC timestamp, as Dagster writes it) ``ago`` s old."""
    psql(db, "INSERT INTO event_logs (run_id, event, dagster_event_type, timestamp, step_key)"
             f" VALUES ({lit(run_id)}, '{{}}', {lit(event_type)},"
             f" (now() AT TIME ZONE 'UTC') - {ago} * interval '1 second', {lit(step_key)})")


def stop_requested(db: str, key: sc.StepKey) -> str:
    return psql(db, f"SELECT coalesce(stop_requested_at::text, '') FROM {sc.TABLE} WHERE"
                    f" run_id = {lit(key.run_id)} AND step_key = {lit(key.step_key)} AND"
                    f" attempt = {key.attempt}")


@pytest.fixture(scope="module")
def claims_db() -> Iterator[str]:
    import subprocess

    from conftest import pg_conninfo

    db = fresh_db("dsw_py_steps")
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


def new_key(step_key: str = "fan.out[3]", attempt: int = 1) -> sc.StepKey:
    return sc.StepKey(str(uuid.uuid4()), step_key, attempt)


# ---- the attempt and step-key rules (docs/steps.md §1) ------------------------------------------


@pytest.mark.parametrize("prev,attempt", [(None, 1), ({}, 1), ({"s": 0}, 1), ({"other": 4}, 1),
                                          ({"s": 2}, 3), ({"s": 1000}, 1001)])
def test_attempt_rule(prev: Any, attempt: int) -> None:
    assert envelope.attempt_of(prev, "s") == attempt


@pytest.mark.parametrize("bad", [1001, -1, "1", 1.0, True, None])
def test_attempt_out_of_range_is_refused(bad: Any) -> None:
    with pytest.raises(envelope.BadStepArgs, match="0..1000"):
        envelope.attempt_of({"s": bad}, "s")


@pytest.mark.parametrize("key", ["a", "op_1", "fan.out[3]", "x,y-z", "k" * 255])
def test_step_key_accepted(key: str) -> None:
    assert envelope.check_step_key(key) == key


@pytest.mark.parametrize("key", ["", "k" * 256, "a b", "é", "a;b", "a/b", None, 3])
def test_step_key_refused(key: Any) -> None:
    with pytest.raises(envelope.BadStepArgs):
        envelope.check_step_key(key)


# ---- health: every row of docs/steps.md §4 -------------------------------------------------------


def test_no_row_is_healthy(conn: Any) -> None:
    h = sc.check(conn, new_key())
    assert h.is_healthy and h.unhealthy_reason is None
    assert "queued" in h.reason


@pytest.mark.parametrize("state", ["claimed", "running"])
def test_live_is_healthy(claims_db: str, conn: Any, state: str) -> None:
    k = new_key()
    add_step_claim(claims_db, k, state=state, heartbeat_ago=2)
    h = sc.check(conn, k, ttl_s=60)
    assert h.is_healthy, h
    assert WORKER in h.reason


def test_stale_is_unhealthy_naming_worker_host_pid_age(claims_db: str, conn: Any) -> None:
    k = new_key()
    add_step_claim(claims_db, k, heartbeat_ago=95)
    h = sc.check(conn, k, ttl_s=60)
    assert not h.is_healthy
    assert h.unhealthy_reason is not None
    assert f"step worker {WORKER} on box7 (pid 4242) stopped heartbeating 95 s ago" in h.reason


def test_ttl_is_the_boundary(claims_db: str, conn: Any) -> None:
    k = new_key()
    add_step_claim(claims_db, k, heartbeat_ago=30)
    assert sc.check(conn, k, ttl_s=60).is_healthy
    assert not sc.check(conn, k, ttl_s=20).is_healthy


def test_attempt_is_part_of_the_key(claims_db: str, conn: Any) -> None:
    """A stale claim of attempt 1 says nothing about attempt 2 (no row: healthy)."""
    k1 = new_key(attempt=1)
    add_step_claim(claims_db, k1, heartbeat_ago=500)
    k2 = sc.StepKey(k1.run_id, k1.step_key, 2)
    assert not sc.check(conn, k1).is_healthy
    assert sc.check(conn, k2).is_healthy
    assert sc.check(conn, sc.StepKey(k1.run_id, "another", 1)).is_healthy


def test_done_exit_0_is_healthy_without_events(claims_db: str, conn: Any) -> None:
    k = new_key()
    add_step_claim(claims_db, k, state="done", exit_code=0, outcome="exited", heartbeat_ago=500)
    h = sc.check(conn, k)
    assert h.is_healthy and "exited with code 0" in h.reason


DONE_BADLY = [
    (3, None, "exited", "step worker exited with code 3"),
    (None, 9, "signaled", "killed by signal 9"),
    (None, None, "lost", "lost: its worker died"),
    (None, None, "gave_up", "gave up: the step's message was received 6 times"),
    (None, 15, "stopped", "stopped on request"),
    (None, 15, "canceled", "canceled"),
    (None, 15, "drained", "drained"),
    (None, 9, "timeout", "timed out"),
    (None, None, "spawn_failed", "could not be started"),
    (None, None, "bad_run", "bad_run"),
]


@pytest.mark.parametrize("exit_code,sig,outcome,words", DONE_BADLY)
def test_done_otherwise_without_the_steps_event_is_unhealthy(
    claims_db: str, conn: Any, exit_code: Optional[int], sig: Optional[int], outcome: str,
    words: str
) -> None:
    k = new_key()
    add_step_claim(claims_db, k, state="done", exit_code=exit_code, term_signal=sig,
                   outcome=outcome, receive_count=6, claimed_ago=30)
    # Not the step's own end: a previous attempt's (before the claim), another step's, a
    # non-terminal one.
    add_event(claims_db, k.run_id, k.step_key, "STEP_UP_FOR_RETRY", ago=60)
    add_event(claims_db, k.run_id, "other_step", "STEP_SUCCESS", ago=10)
    add_event(claims_db, k.run_id, k.step_key, "STEP_START", ago=10)
    add_event(claims_db, str(uuid.uuid4()), k.step_key, "STEP_SUCCESS", ago=10)
    h = sc.check(conn, k)
    assert not h.is_healthy, h
    assert words in h.reason, h.reason
    assert k.step_key in h.reason and WORKER in h.reason


@pytest.mark.parametrize("event", sc.TERMINAL_EVENTS)
@pytest.mark.parametrize("exit_code,sig,outcome,words", DONE_BADLY[:3])
def test_done_otherwise_with_the_steps_own_end_event_is_healthy(
    claims_db: str, conn: Any, event: str, exit_code: Optional[int], sig: Optional[int],
    outcome: str, words: str
) -> None:
    k = new_key()
    add_step_claim(claims_db, k, state="done", exit_code=exit_code, term_signal=sig,
                   outcome=outcome, claimed_ago=30)
    add_event(claims_db, k.run_id, k.step_key, event, ago=5)
    h = sc.check(conn, k)
    assert h.is_healthy, h
    assert words in h.reason


def test_event_log_through_its_own_connection(claims_db: str, conn: Any) -> None:
    """check() reads the event log through event_conn when given (the event log storage)."""
    import contextlib

    k = new_key()
    add_step_claim(claims_db, k, state="done", exit_code=1, outcome="exited")
    used = []

    @contextlib.contextmanager
    def event_conn() -> Iterator[Any]:
        used.append(1)
        yield conn

    assert not sc.check(conn, k, event_conn=event_conn).is_healthy
    assert used == [1]
    add_event(claims_db, k.run_id, k.step_key, "STEP_FAILURE", ago=1)
    assert sc.check(conn, k, event_conn=event_conn).is_healthy
    # No event read for a live or an exit-0 claim.
    add_step_claim(claims_db, k, state="done", exit_code=0, outcome="exited")
    assert sc.check(conn, k, event_conn=event_conn).is_healthy
    assert used == [1, 1]


def test_assess_needs_the_event_answer_for_a_bad_end() -> None:
    k = new_key()
    claim = sc.StepClaim(k, WORKER, 1, None, None, "done", None, 0.0, 1.0, 1.0, 1.0, 2, None,
                         "exited", None)
    assert sc.needs_event_check(claim)
    with pytest.raises(ValueError):
        sc.assess(k, claim)
    assert not sc.assess(k, claim, terminal_event=False).is_healthy


# ---- terminate: stop_requested_at ------------------------------------------------------------


@pytest.mark.parametrize("state", ["claimed", "running"])
def test_request_stop_marks_a_not_done_claim_once(claims_db: str, conn: Any, state: str) -> None:
    k = new_key()
    add_step_claim(claims_db, k, state=state)
    assert stop_requested(claims_db, k) == ""
    assert sc.request_stop(conn, k) is True
    first = stop_requested(claims_db, k)
    assert first
    assert sc.request_stop(conn, k) is False  # already asked: the first time stays
    assert stop_requested(claims_db, k) == first
    c = sc.fetch(conn, k)
    assert c is not None and c.stop_requested_age_s is not None and c.stop_requested_age_s >= 0


def test_request_stop_leaves_done_and_missing_claims(claims_db: str, conn: Any) -> None:
    k = new_key()
    add_step_claim(claims_db, k, state="done", exit_code=0, outcome="exited")
    assert sc.request_stop(conn, k) is False
    assert stop_requested(claims_db, k) == ""
    assert sc.request_stop(conn, new_key()) is False
    # Only the key's row: another attempt of the same step is untouched.
    k2 = sc.StepKey(k.run_id, k.step_key, 2)
    add_step_claim(claims_db, k2, state="running")
    other = sc.StepKey(k.run_id, k.step_key, 3)
    add_step_claim(claims_db, other, state="running")
    assert sc.request_stop(conn, k2) is True
    assert stop_requested(claims_db, k2) and stop_requested(claims_db, other) == ""


def test_fetch_reads_every_column(claims_db: str, conn: Any) -> None:
    k = new_key()
    add_step_claim(claims_db, k, state="done", exit_code=None, term_signal=9, outcome="signaled",
                   heartbeat_ago=7, claimed_ago=40, worker="h-1.x:77:1")
    c = sc.fetch(conn, k)
    assert c is not None
    assert c.key == k and c.worker_id == "h-1.x:77:1" and c.host == "h-1.x" and c.pid == 77
    assert c.state == "done" and c.done and c.child_pid == 5151 and c.message_id == "m-1"
    assert c.term_signal == 9 and c.exit_code is None and c.outcome == "signaled"
    assert 6 < c.heartbeat_age_s < 60 and 39 < c.claimed_age_s < 100
    assert c.finished_age_s is not None and c.fencing_token > 0
    now = float(psql(claims_db, "SELECT extract(epoch FROM now())"))
    assert 39 < now - c.claimed_at_s < 100


def test_table_missing_is_a_clear_error() -> None:
    import sqlalchemy

    db = fresh_db("dsw_py_nosteps")
    try:
        engine = sqlalchemy.create_engine(pg_url(db), isolation_level="AUTOCOMMIT")
        with engine.connect() as c:
            with pytest.raises(run_claims.ClaimsSchemaMissing, match="db-init"):
                sc.fetch(c, new_key())
            with pytest.raises(run_claims.ClaimsSchemaMissing, match="schema version 2"):
                sc.request_stop(c, new_key())
        engine.dispose()
    finally:
        psql("postgres", f"DROP DATABASE {db} WITH (FORCE)")
