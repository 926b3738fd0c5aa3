"""Read dagster-sqs-worker's claims table and judge a run worker's health from it.

The daemon keeps one row per run in ``dagster_sqs_worker.run_claims`` (created by
``dagster-sqs-worker db-init``): which worker (``host:pid:start``) holds the run, a lease
(``heartbeat_at``, refreshed every ``claims.heartbeat`` and aged with the database clock),
and, once the run worker exited, its exit code, signal and outcome. A lease older than the
daemon's ``claims.ttl`` is stale: its worker is gone.

Nothing here imports Dagster: :func:`fetch_claim` takes a SQLAlchemy connection (the
launcher passes the instance's own run-storage connection) and :func:`assess` is a pure
function, so both are tested against a real PostgreSQL without Dagster. Ages are computed by
the database (``now() - heartbeat_at``), never by this process's clock.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

SCHEMA = "dagster_sqs_worker"
TABLE = SCHEMA + ".run_claims"

# Health statuses, spelled as Dagster's WorkerStatus members.
RUNNING = "RUNNING"
FAILED = "FAILED"
SUCCESS = "SUCCESS"
UNKNOWN = "UNKNOWN"

DEFAULT_CLAIM_TTL_S = 60.0  # the daemon's claims.ttl default
DEFAULT_NO_CLAIM_GRACE_S = 180.0

_SQL_HAS_TABLE = "SELECT pg_catalog.to_regclass(:table) IS NOT NULL"
_SQL_CLAIM = (
    "SELECT c.run_id, c.kind, c.attempt, c.worker_id, c.fencing_token, c.message_id,"
    " c.receive_count, c.state, c.child_pid,"
    " extract(epoch FROM now() - c.claimed_at)::float8 AS claimed_age_s,"
    " extract(epoch FROM now() - c.heartbeat_at)::float8 AS heartbeat_age_s,"
    " extract(epoch FROM now() - c.finished_at)::float8 AS finished_age_s,"
    " c.exit_code, c.term_signal, c.outcome"
    " FROM " + TABLE + " c WHERE c.run_id = :run_id"
)
# Seconds since the run started (Dagster's start_time, unix seconds), else since its last update
# (naive UTC), measured with the database clock.
_SQL_RUN_AGE = (
    "SELECT extract(epoch FROM now())::float8 - coalesce(r.start_time,"
    " extract(epoch FROM (r.update_timestamp AT TIME ZONE 'UTC'))::float8,"
    " extract(epoch FROM (r.create_timestamp AT TIME ZONE 'UTC'))::float8)"
    " FROM runs r WHERE r.run_id = :run_id"
)


class ClaimsUnavailable(RuntimeError):
    """The claims cannot be read (storage that is not PostgreSQL, no claims schema)."""


class ClaimsSchemaMissing(ClaimsUnavailable):
    """The database has no dagster_sqs_worker schema: the daemon's db-init never ran there."""


class OwnerWords:
    """What a claim row of either table (run_claims, step_claims) says of its owner."""

    worker_id: str
    state: str

    @property
    def host(self) -> str:
        return split_worker_id(self.worker_id)[0]

    @property
    def pid(self) -> Optional[int]:
        return split_worker_id(self.worker_id)[1]

    @property
    def done(self) -> bool:
        return self.state == "done"


@dataclasses.dataclass(frozen=True)
class Claim(OwnerWords):
    """One row of dagster_sqs_worker.run_claims, with its ages from the database clock."""

    run_id: str
    kind: str
    attempt: int
    worker_id: str
    fencing_token: int
    message_id: Optional[str]
    receive_count: Optional[int]
    state: str  # claimed | running | done
    child_pid: Optional[int]
    claimed_age_s: float
    heartbeat_age_s: float
    finished_age_s: Optional[float]
    exit_code: Optional[int]
    term_signal: Optional[int]
    outcome: Optional[str]


    def live(self, ttl_s: float) -> bool:
        """The daemon's own rule (store.c): not done and heartbeat younger than claims.ttl."""
        return not self.done and self.heartbeat_age_s < ttl_s

    def succeeded(self) -> bool:
        return (
            self.done
            and self.exit_code == 0
            and not self.term_signal
            and self.outcome in (None, "exited")
        )


@dataclasses.dataclass(frozen=True)
class Health:
    """The verdict on one run worker; ``status`` is a WorkerStatus member name."""

    status: str
    msg: str
    run_worker_id: Optional[str] = None
    transient: Optional[bool] = None


def split_worker_id(worker_id: str) -> "tuple[str, Optional[int]]":
    """``host:pid:start`` (the daemon's form) or ``host:pid`` -> (host, pid)."""
    parts = worker_id.split(":")
    if len(parts) >= 3 and parts[-1].isdigit() and parts[-2].isdigit():
        return ":".join(parts[:-2]), int(parts[-2])
    if len(parts) >= 2 and parts[-1].isdigit():
        return ":".join(parts[:-1]), int(parts[-1])
    return worker_id, None


def _text(sql: str) -> Any:
    import sqlalchemy

    return sqlalchemy.text(sql)


def has_table(conn: Any, table: str) -> bool:
    """Whether ``schema.table`` exists (db-init made it)."""
    return bool(conn.execute(_text(_SQL_HAS_TABLE), {"table": table}).scalar())


def has_schema(conn: Any) -> bool:
    return has_table(conn, TABLE)


def fetch_claim(conn: Any, run_id: str) -> Optional[Claim]:
    """The claim row of ``run_id``, or None. Raises ClaimsSchemaMissing without db-init."""
    if not has_schema(conn):
        raise ClaimsSchemaMissing(
            "the dagster_sqs_worker schema is missing in the Dagster database: run "
            "`dagster-sqs-worker db-init` against it"
        )
    row = conn.execute(_text(_SQL_CLAIM), {"run_id": run_id}).mappings().first()
    if row is None:
        return None
    return Claim(
        run_id=row["run_id"],
        kind=row["kind"],
        attempt=int(row["attempt"]),
        worker_id=row["worker_id"],
        fencing_token=int(row["fencing_token"]),
        message_id=row["message_id"],
        receive_count=row["receive_count"],
        state=row["state"],
        child_pid=row["child_pid"],
        claimed_age_s=float(row["claimed_age_s"]),
        heartbeat_age_s=float(row["heartbeat_age_s"]),
        finished_age_s=None if row["finished_age_s"] is None else float(row["finished_age_s"]),
        exit_code=row["exit_code"],
        term_signal=row["term_signal"],
        outcome=row["outcome"],
    )


def run_age_s(conn: Any, run_id: str) -> Optional[float]:
    """Seconds since the run started (else since it was last updated), by the database clock."""
    v = conn.execute(_text(_SQL_RUN_AGE), {"run_id": run_id}).scalar()
    return None if v is None else float(v)


def _exit_words(c: Claim) -> str:
    bits = []
    if c.exit_code is not None:
        bits.append(f"exit code {c.exit_code}")
    if c.term_signal:
        bits.append(f"signal {c.term_signal}")
    if c.outcome:
        bits.append(f"outcome {c.outcome}")
    return ", ".join(bits) if bits else "no exit status recorded"


def assess(
    claim: Optional[Claim],
    run_age: Optional[float],
    ttl_s: float = DEFAULT_CLAIM_TTL_S,
    no_claim_grace_s: float = DEFAULT_NO_CLAIM_GRACE_S,
) -> Health:
    """Judge a run worker from its claim.

    - live lease -> RUNNING (``run_worker_id`` = the worker id);
    - done -> SUCCESS when the run worker exited 0 on its own, else FAILED with the exit;
    - stale lease -> FAILED naming the worker's host, pid and heartbeat age;
    - no claim: the daemon claims a run before it starts its run worker, so a run with no claim
      has no worker of ours *yet* (its message is still queued, or being received). Within
      ``no_claim_grace_s`` of the run's start (or last update) that is RUNNING: Dagster's run
      monitoring resumes or fails every status other than RUNNING/SUCCESS, UNKNOWN included,
      so anything else would fail a run whose message is merely waiting. After the grace it is
      FAILED: no worker of this daemon executes it.
    """
    if claim is None:
        if run_age is None:
            return Health(UNKNOWN, "dagster-sqs-worker has no claim for this run and no run row")
        if run_age <= no_claim_grace_s:
            return Health(
                RUNNING,
                f"no dagster-sqs-worker has claimed this run yet ({run_age:.0f} s since it "
                f"started; it is failed after {no_claim_grace_s:.0f} s without a claim)",
                transient=True,
            )
        return Health(
            FAILED,
            f"no dagster-sqs-worker claimed this run in {run_age:.0f} s (grace "
            f"{no_claim_grace_s:.0f} s): no run worker of this daemon executes it",
        )
    host, pid = split_worker_id(claim.worker_id)
    who = f"worker {claim.worker_id} (host {host}, pid {pid if pid is not None else '?'})"
    if claim.done:
        words = _exit_words(claim)
        if claim.succeeded():
            return Health(SUCCESS, f"run worker finished on {who}: {words}", claim.worker_id)
        return Health(FAILED, f"run worker finished on {who}: {words}", claim.worker_id)
    if claim.live(ttl_s):
        child = f", run worker pid {claim.child_pid}" if claim.child_pid else ""
        return Health(
            RUNNING,
            f"{claim.state} by {who}{child}, heartbeat {claim.heartbeat_age_s:.1f} s ago",
            claim.worker_id,
        )
    return Health(
        FAILED,
        f"lease of {who} is stale: last heartbeat {claim.heartbeat_age_s:.1f} s ago "
        f"(claims.ttl {ttl_s:.0f} s); its dagster-sqs-worker is gone",
        claim.worker_id,
    )


def describe(claim: Optional[Claim], ttl_s: float = DEFAULT_CLAIM_TTL_S) -> str:
    """The claim row in words, for get_run_worker_debug_info."""
    if claim is None:
        return "dagster-sqs-worker: no claim for this run (no worker has received its message)"
    host, pid = split_worker_id(claim.worker_id)
    lease = "done" if claim.done else ("live" if claim.live(ttl_s) else "stale")
    parts = [
        f"dagster-sqs-worker claim: {claim.kind} attempt {claim.attempt}, state {claim.state}"
        f" (lease {lease})",
        f"worker {claim.worker_id} (host {host}, pid {pid if pid is not None else '?'})",
        f"run worker pid {claim.child_pid if claim.child_pid else '-'}",
        f"heartbeat {claim.heartbeat_age_s:.1f} s ago, claimed {claim.claimed_age_s:.1f} s ago",
        f"message {claim.message_id or '-'} (receive count {claim.receive_count or '-'})",
    ]
    if claim.done:
        parts.append(
            f"exit code {claim.exit_code if claim.exit_code is not None else '-'}, signal "
            f"{claim.term_signal if claim.term_signal else '-'}, outcome {claim.outcome or '-'}"
        )
    return "; ".join(parts)
