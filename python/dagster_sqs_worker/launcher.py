"""SqsRunLauncher: Dagster's side of dagster-sqs-worker.

``launch_run`` sends the ``execute_job`` TaskIQ envelope to the queue the daemon reads and tags
the run with the message id; ``terminate`` asks for cancellation (CANCELING, which the daemon
turns into SIGTERM -> CANCELED, or CANCELED on receipt); ``check_run_worker_health`` reads the
daemon's claim through the instance's own PostgreSQL connection; ``resume_run`` sends
``resume_job``. See :mod:`dagster_sqs_worker.run_claims` for how health is judged.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any, ContextManager, Dict, Iterator, Mapping, Optional, cast

from dagster import (
    Field,
    Noneable,
    StringSource,
    _check as check,
)
from dagster._core.events import EngineEventData
from dagster._core.launcher import (
    CheckRunHealthResult,
    LaunchRunContext,
    ResumeRunContext,
    RunLauncher,
    WorkerStatus,
)
from dagster._core.storage.dagster_run import DagsterRun
from dagster._serdes import ConfigurableClass, ConfigurableClassData

from . import envelope, run_claims

if TYPE_CHECKING:
    from dagster._core.instance import DagsterInstance

TAG_MESSAGE_ID = "dagster-sqs-worker/message_id"
TAG_RESUME_MESSAGE_ID = "dagster-sqs-worker/resume_message_id"


def queue_fields(queue_description: str) -> Dict[str, Field]:
    """The queue keys the launcher and the step executor share: queue_url, endpoint_url, region."""
    return {
        "queue_url": Field(StringSource, description=queue_description),
        "endpoint_url": Field(
            Noneable(StringSource),
            is_required=False,
            default_value=None,
            description="SQS endpoint (LocalStack, moto, fauxqs...); default AWS.",
        ),
        "region": Field(
            Noneable(StringSource),
            is_required=False,
            default_value=None,
            description="AWS region; default from the queue URL or the AWS environment.",
        ),
    }


class SqsLaunchError(RuntimeError):
    """A run could not be put on the queue (Dagster then fails the launch)."""


def _health_result(h: run_claims.Health) -> CheckRunHealthResult:
    """CheckRunHealthResult of the installed Dagster: 1.3 has (status, msg); later versions add
    transient and run_worker_id."""
    fields = getattr(CheckRunHealthResult, "_fields", ("status", "msg"))
    kwargs: Dict[str, Any] = {"status": WorkerStatus[h.status], "msg": h.msg}
    if "run_worker_id" in fields:
        kwargs["run_worker_id"] = h.run_worker_id
    if "transient" in fields:
        kwargs["transient"] = h.transient
    return CheckRunHealthResult(**kwargs)


class SqsRunLauncher(RunLauncher, ConfigurableClass):
    """Launches runs by sending them to the SQS queue dagster-sqs-worker consumes.

    ``claim_ttl_seconds`` must equal the daemon's ``claims.ttl`` (default 60 s): a lease older
    than that is stale. ``no_claim_grace_seconds``: how long a STARTED run without any claim is
    reported RUNNING before it is reported FAILED (see run_claims.assess).
    """

    def __init__(
        self,
        queue_url: str,
        endpoint_url: Optional[str] = None,
        region: Optional[str] = None,
        claim_ttl_seconds: float = run_claims.DEFAULT_CLAIM_TTL_S,
        no_claim_grace_seconds: float = run_claims.DEFAULT_NO_CLAIM_GRACE_S,
        message_group_id: Optional[str] = None,
        inst_data: Optional[ConfigurableClassData] = None,
    ):
        self._inst_data = inst_data
        self.queue_url = check.str_param(queue_url, "queue_url")
        if not self.queue_url.strip():
            raise SqsLaunchError("SqsRunLauncher: queue_url is empty")
        self.endpoint_url = endpoint_url or None
        self.region = region or region_from(self.queue_url)
        self.claim_ttl_seconds = float(claim_ttl_seconds)
        self.no_claim_grace_seconds = float(no_claim_grace_seconds)
        self.message_group_id = message_group_id
        if self.claim_ttl_seconds <= 0 or self.no_claim_grace_seconds < 0:
            raise SqsLaunchError(
                "SqsRunLauncher: claim_ttl_seconds must be > 0 and no_claim_grace_seconds >= 0"
            )
        self._client: Any = None
        super().__init__()

    # ---- ConfigurableClass ------------------------------------------------------------------

    @property
    def inst_data(self) -> Optional[ConfigurableClassData]:
        return self._inst_data

    @classmethod
    def config_type(cls) -> Dict[str, Field]:
        return {
            **queue_fields("URL of the queue the daemon reads."),
            "claim_ttl_seconds": Field(
                float,
                is_required=False,
                default_value=run_claims.DEFAULT_CLAIM_TTL_S,
                description="The daemon's claims.ttl: a lease older than this is stale.",
            ),
            "no_claim_grace_seconds": Field(
                float,
                is_required=False,
                default_value=run_claims.DEFAULT_NO_CLAIM_GRACE_S,
                description="A STARTED run with no claim is RUNNING this long, then FAILED.",
            ),
            "message_group_id": Field(
                Noneable(StringSource),
                is_required=False,
                default_value=None,
                description="MessageGroupId for FIFO queues (every run in one group).",
            ),
        }

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]
    ) -> "SqsRunLauncher":
        return cls(inst_data=inst_data, **config_value)

    @property
    def _inst(self) -> "DagsterInstance":
        return cast("DagsterInstance", self._instance)

    # ---- SQS --------------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = sqs_client(self.endpoint_url, self.region)
        return self._client

    def send(self, body: str, run_id: str) -> str:
        """Send one message body; returns its message id or raises SqsLaunchError."""
        dedup = run_id + ":" + body[13:45] if self.message_group_id else None  # task id
        return send_body(
            self.client, self.queue_url, body, f"run {run_id}", self.endpoint_url,
            self.message_group_id, dedup,
        )

    def _send_run(self, run: DagsterRun, resume: bool, attempt: Optional[int] = None) -> str:
        body = envelope.run_envelope(run, resume=resume)
        mid = self.send(body, run.run_id)
        tag = TAG_RESUME_MESSAGE_ID if resume else TAG_MESSAGE_ID
        self._inst.add_run_tags(run.run_id, {tag: mid})
        what = "resume" if resume else "execute"
        if attempt is not None:
            what += f" (attempt {attempt})"
        self._inst.report_engine_event(
            f"Sent run to dagster-sqs-worker: {what} message {mid} on {self.queue_url}.",
            run,
            EngineEventData(
                metadata={"queue_url": self.queue_url, "message_id": mid, "task": what}
            ),
            cls=self.__class__,
        )
        return mid

    # ---- RunLauncher ------------------------------------------------------------------------

    def launch_run(self, context: LaunchRunContext) -> None:
        self._send_run(context.dagster_run, resume=False)

    @property
    def supports_resume_run(self) -> bool:
        return True

    def resume_run(self, context: ResumeRunContext) -> None:
        self._send_run(
            context.dagster_run,
            resume=True,
            attempt=getattr(context, "resume_attempt_number", None),
        )

    def terminate(self, run_id: str) -> bool:
        run = self._inst.get_run_by_id(run_id)
        if run is None or run.is_finished:
            return False
        self._inst.report_run_canceling(run)
        return True

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def _connect(self) -> ContextManager[Any]:
        return storage_connection(self._inst, "SqsRunLauncher")

    def read_claim(self, run_id: str) -> "tuple[Optional[run_claims.Claim], Optional[float]]":
        with self._connect() as conn:
            claim = run_claims.fetch_claim(conn, run_id)
            age = run_claims.run_age_s(conn, run_id) if claim is None else None
        return claim, age

    def assess(self, run: DagsterRun) -> run_claims.Health:
        claim, age = self.read_claim(run.run_id)
        return run_claims.assess(claim, age, self.claim_ttl_seconds, self.no_claim_grace_seconds)

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        return _health_result(self.assess(run))

    def get_run_worker_debug_info(self, run: DagsterRun, *args: Any, **kwargs: Any) -> str:
        claim, _ = self.read_claim(run.run_id)
        return run_claims.describe(claim, self.claim_ttl_seconds)

    def dispose(self) -> None:
        self._client = None


def sqs_client(endpoint_url: Optional[str], region: Optional[str]) -> Any:
    """The boto3 SQS client the launcher and the step executor send with (a private session:
    boto3's default session is not thread-safe)."""
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "sqs",
        endpoint_url=endpoint_url,
        region_name=region,
        config=Config(
            connect_timeout=5,
            read_timeout=15,
            retries={"max_attempts": 3, "mode": "standard"},
        ),
    )


def send_body(
    client: Any,
    queue_url: str,
    body: str,
    what: str,
    endpoint_url: Optional[str] = None,
    group_id: Optional[str] = None,
    dedup_id: Optional[str] = None,
) -> str:
    """Send one message body (``what``: "run X", "step S of run X" for the error); returns its
    message id or raises SqsLaunchError naming the queue, the endpoint and the cause."""
    kwargs: Dict[str, Any] = {"QueueUrl": queue_url, "MessageBody": body}
    if group_id:
        kwargs["MessageGroupId"] = group_id
        kwargs["MessageDeduplicationId"] = dedup_id
    try:
        reply = client.send_message(**kwargs)
    except Exception as e:  # botocore's error classes; each names the cause
        raise SqsLaunchError(
            f"dagster-sqs-worker: could not send {what} to {queue_url}"
            f"{' via ' + endpoint_url if endpoint_url else ''}: "
            f"{type(e).__name__}: {e}"
        ) from e
    mid = reply.get("MessageId") if isinstance(reply, dict) else None
    if not mid:
        raise SqsLaunchError(
            f"dagster-sqs-worker: the queue {queue_url} returned no MessageId for {what}"
        )
    return str(mid)


@contextlib.contextmanager
def storage_connection(instance: Any, who: str, storage_name: str = "run_storage") -> Iterator[Any]:
    """A connection of the instance's own dagster-postgres storage (``run_storage``, or
    ``event_log_storage``), where dagster-sqs-worker's claims are read; ClaimsUnavailable when
    it is not PostgreSQL."""
    storage = getattr(instance, storage_name)
    method = "connect" if storage_name == "run_storage" else "index_connection"
    connect = getattr(storage, method, None)
    engine = getattr(storage, "_engine", None)
    if connect is None or engine is None or engine.dialect.name != "postgresql":
        raise run_claims.ClaimsUnavailable(
            f"{who} reads dagster-sqs-worker's claims from the instance's {storage_name}, "
            f"which must be dagster-postgres (this instance has {type(storage).__name__})"
        )
    with connect() as conn:
        yield conn


def region_from(queue_url: str) -> Optional[str]:
    """us-east-1 from https://sqs.us-east-1.amazonaws.com/...; else the AWS environment."""
    host = queue_url.split("://", 1)[-1].split("/", 1)[0]
    parts = host.split(".")
    if len(parts) >= 4 and parts[0] == "sqs" and parts[2] == "amazonaws":
        return parts[1]
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
