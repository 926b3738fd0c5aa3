"""Read dagster-sqs-worker's step claims and judge a step's health from them (docs/steps.md §3-§4).

The daemon keeps one row per step attempt in ``dagster_sqs_worker.step_claims`` (schema
version 2 of ``dagster-sqs-worker db-init``), keyed by (run id, step key, attempt), the attempt
being ``1 + known_state.previous_retry_attempts[step_key]`` (:func:`envelope.attempt_of`). A
claim is live while it is not done and its heartbeat is at most ``claims.ttl`` old (database
clock). Health, as the executor's ``check_step_health`` reports it:

- no row: healthy (the message is queued or being received);
- live: healthy;
- not done and stale: unhealthy ("step worker W on H (pid N) stopped heartbeating N s ago");
- done, exited with code 0: healthy (the step's own events tell the rest);
- done otherwise: healthy if the run's event log has the step's own STEP_SUCCESS, STEP_FAILURE
  or STEP_UP_FOR_RETRY written after the claim's claimed_at (the step reported its end, the
  executor learns it from the events), else unhealthy naming the outcome.

``terminate_step`` sets the claim's ``stop_requested_at`` (:func:`request_stop`); the daemon
polls it and stops the step (SIGTERM, SIGKILL after runs.kill_grace), outcome ``stopped``.

Like :mod:`run_claims` (whose helpers it shares), nothing here imports Dagster: the functions
take SQLAlchemy connections (the executor passes the instance's own storage connections) and
:func:`assess` is pure. Ages are computed by the database, never by this process's clock.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

from .run_claims import (
    DEFAULT_CLAIM_TTL_S,
    SCHEMA,
    ClaimsSchemaMissing,
    _text,
    has_table,
    OwnerWords,
)

TABLE = SCHEMA + ".step_claims"
TERMINAL_EVENTS = ("STEP_SUCCESS", "STEP_FAILURE", "STEP_UP_FOR_RETRY")

_SQL_CLAIM = (
    "SELECT c.run_id, c.step_key, c.attempt, c.worker_id, c.fencing_token, c.message_id,"
    " c.receive_count, c.state, c.child_pid,"
    " extract(epoch FROM c.claimed_at)::float8 AS claimed_at_s,"
    " extract(epoch FROM now() - c.claimed_at)::float8 AS claimed_age_s,"
    " extract(epoch FROM now() - c.heartbeat_at)::float8 AS heartbeat_age_s,"
    " extract(epoch FROM now() - c.finished_at)::float8 AS finished_age_s,"
    " c.exit_code, c.term_signal, c.outcome,"
    " extract(epoch FROM now() - c.stop_requested_at)::float8 AS stop_requested_age_s"
    " FROM " + TABLE + " c"
    " WHERE c.run_id = :run_id AND c.step_key = :step_key AND c.attempt = :attempt"
)
# Dagster's event_logs.timestamp is naive UTC; claimed_at_s is unix seconds (database clock).
_SQL_TERMINAL_EVENT = (
    "SELECT EXISTS (SELECT 1 FROM event_logs e WHERE e.run_id = :run_id"
    " AND e.step_key = :step_key"
    " AND e.dagster_event_type IN ('" + "', '".join(TERMINAL_EVENTS) + "')"
    " AND e.timestamp >= (to_timestamp(:since) AT TIME ZONE 'UTC'))"
)
_SQL_REQUEST_STOP = (
    "UPDATE " + TABLE + " SET stop_requested_at = now()"
    " WHERE run_id = :run_id AND step_key = :step_key AND attempt = :attempt"
    " AND state <> 'done' AND stop_requested_at IS NULL"
)

# What a done claim's outcome means, for the unhealthy reason (docs/steps.md §3).
_OUTCOME_WORDS = {
    "stopped": "stopped on request (terminate_step)",
    "canceled": "canceled: the run was canceling or finished",
    "drained": "drained: its worker shut down before the step finished",
    "timeout": "timed out (the daemon's runs.timeout)",
    "lost": "lost: its worker died",
    "spawn_failed": "the step process could not be started (spawn_failed)",
    "bad_run": "the run cannot be executed by the daemon (bad_run)",
}


@dataclasses.dataclass(frozen=True)
class StepKey:
    """The key of a step claim: which attempt of which step of which run."""

    run_id: str
    step_key: str
    attempt: int

    def __str__(self) -> str:
        return f"step {self.step_key} (attempt {self.attempt}) of run {self.run_id}"

    def params(self) -> "dict[str, Any]":
        return {"run_id": self.run_id, "step_key": self.step_key, "attempt": self.attempt}


@dataclasses.dataclass(frozen=True)
class StepClaim(OwnerWords):
    """One row of dagster_sqs_worker.step_claims, with its ages from the database clock."""

    key: StepKey
    worker_id: str
    fencing_token: int
    message_id: Optional[str]
    receive_count: Optional[int]
    state: str  # claimed | running | done
    child_pid: Optional[int]
    claimed_at_s: float  # unix seconds
    claimed_age_s: float
    heartbeat_age_s: float
    finished_age_s: Optional[float]
    exit_code: Optional[int]
    term_signal: Optional[int]
    outcome: Optional[str]
    stop_requested_age_s: Optional[float]


    def live(self, ttl_s: float) -> bool:
        """docs/steps.md §3: not done and heartbeat_at >= now() - claims.ttl."""
        return not self.done and self.heartbeat_age_s <= ttl_s

    def exited_zero(self) -> bool:
        return (
            self.done
            and self.exit_code == 0
            and not self.term_signal
            and self.outcome in (None, "exited")
        )


@dataclasses.dataclass(frozen=True)
class StepHealth:
    """The verdict on one step attempt (CheckStepHealthResult's two fields and why)."""

    is_healthy: bool
    reason: str  # the unhealthy reason, or why it is healthy (for logs and tests)

    @property
    def unhealthy_reason(self) -> Optional[str]:
        return None if self.is_healthy else self.reason


def _require_table(conn: Any) -> None:
    if not has_table(conn, TABLE):
        raise ClaimsSchemaMissing(
            f"{TABLE} is missing in the Dagster database: run `dagster-sqs-worker db-init` "
            "(schema version 2) against it"
        )


def fetch(conn: Any, key: StepKey) -> Optional[StepClaim]:
    """The claim row of ``key``, or None. Raises ClaimsSchemaMissing without the table."""
    _require_table(conn)
    row = conn.execute(_text(_SQL_CLAIM), key.params()).mappings().first()
    if row is None:
        return None

    def opt_float(name: str) -> Optional[float]:
        return None if row[name] is None else float(row[name])

    return StepClaim(
        key=StepKey(row["run_id"], row["step_key"], int(row["attempt"])),
        worker_id=row["worker_id"],
        fencing_token=int(row["fencing_token"]),
        message_id=row["message_id"],
        receive_count=row["receive_count"],
        state=row["state"],
        child_pid=row["child_pid"],
        claimed_at_s=float(row["claimed_at_s"]),
        claimed_age_s=float(row["claimed_age_s"]),
        heartbeat_age_s=float(row["heartbeat_age_s"]),
        finished_age_s=opt_float("finished_age_s"),
        exit_code=row["exit_code"],
        term_signal=row["term_signal"],
        outcome=row["outcome"],
        stop_requested_age_s=opt_float("stop_requested_age_s"),
    )


def has_terminal_event(conn: Any, key: StepKey, since_s: float) -> bool:
    """Whether the run's event log (Dagster's event_logs, through ``conn``) has the step's
    STEP_SUCCESS/STEP_FAILURE/STEP_UP_FOR_RETRY written at or after ``since_s`` (unix s)."""
    params = {"run_id": key.run_id, "step_key": key.step_key, "since": since_s}
    return bool(conn.execute(_text(_SQL_TERMINAL_EVENT), params).scalar())


def request_stop(conn: Any, key: StepKey) -> bool:
    """Ask the owning worker to stop the step: True when a not-done claim was marked now."""
    _require_table(conn)
    return int(conn.execute(_text(_SQL_REQUEST_STOP), key.params()).rowcount or 0) > 0


def _who(c: StepClaim) -> str:
    pid = c.pid if c.pid is not None else "?"
    return f"step worker {c.worker_id} on {c.host} (pid {pid})"


def end_words(c: StepClaim) -> str:
    """How a done claim ended, in words (the unhealthy reason's core)."""
    if c.outcome == "gave_up":
        n = f" {c.receive_count} times" if c.receive_count else ""
        return f"gave up: the step's message was received{n} without being claimed"
    if c.outcome in _OUTCOME_WORDS:
        return _OUTCOME_WORDS[c.outcome]
    if c.term_signal:
        return f"killed by signal {c.term_signal}"
    if c.exit_code is not None:
        return f"step worker exited with code {c.exit_code}"
    return f"ended with outcome {c.outcome or 'unknown'}"


def needs_event_check(claim: Optional[StepClaim]) -> bool:
    """Whether :func:`assess` needs to know if the step wrote its own terminal event."""
    return claim is not None and claim.done and not claim.exited_zero()


def assess(
    key: StepKey,
    claim: Optional[StepClaim],
    ttl_s: float = DEFAULT_CLAIM_TTL_S,
    terminal_event: Optional[bool] = None,
) -> StepHealth:
    """docs/steps.md §4. ``terminal_event``: whether the step's own terminal event was written after
    the claim's claimed_at (needed only when :func:`needs_event_check`)."""
    if claim is None:
        return StepHealth(True, f"no claim yet for {key}: its message is queued or being received")
    if claim.exited_zero():
        return StepHealth(True, f"{key} exited with code 0 on {claim.worker_id}")
    if claim.done:
        if terminal_event is None:
            raise ValueError("assess: a done claim needs terminal_event")
        words = end_words(claim)
        if terminal_event:
            return StepHealth(True, f"{key} wrote its own end event; its worker then: {words}")
        return StepHealth(
            False,
            f"{words} ({key}, worker {claim.worker_id}; the step wrote no "
            f"{'/'.join(TERMINAL_EVENTS)} event)",
        )
    if claim.live(ttl_s):
        return StepHealth(True, f"{key} {claim.state} by {_who(claim)}")
    return StepHealth(
        False,
        f"{_who(claim)} stopped heartbeating {claim.heartbeat_age_s:.0f} s ago "
        f"(claims.ttl {ttl_s:.0f} s; {key})",
    )


def check(
    conn: Any,
    key: StepKey,
    ttl_s: float = DEFAULT_CLAIM_TTL_S,
    event_conn: Optional[Callable[[], Any]] = None,
) -> StepHealth:
    """Read the claim of ``key`` through ``conn`` and judge it; the event log is read (only
    when needed) through the context manager ``event_conn()`` returns, else through ``conn``."""
    claim = fetch(conn, key)
    seen: Optional[bool] = None
    if claim is not None and needs_event_check(claim):
        if event_conn is None:
            seen = has_terminal_event(conn, key, claim.claimed_at_s)
        else:
            with event_conn() as econn:
                seen = has_terminal_event(econn, key, claim.claimed_at_s)
    return assess(key, claim, ttl_s, seen)
