"""sqs_executor: a Dagster executor whose steps run as supervised children of dagster-sqs-worker.

Built on Dagster's StepDelegatingExecutor (as the Docker and Kubernetes step executors are):
the run worker plans the run and tails its event log, and :class:`SqsStepHandler`

- ``launch_step``: sends the ``execute_step`` TaskIQ envelope (docs/steps.md §1, built by
  :func:`envelope.step_envelope`) to the queue with the launcher's SQS client and send path;
- ``check_step_health``: judges the step attempt's claim in ``dagster_sqs_worker.step_claims``
  (docs/steps.md §4, :mod:`step_claims`) through the instance's own PostgreSQL connections;
- ``terminate_step``: sets the claim's ``stop_requested_at``; the owning daemon stops the step.

.. code-block:: python

    from dagster import job
    from dagster_sqs_worker import sqs_executor

    @job(executor_def=sqs_executor.configured({"queue_url": "https://sqs.../dagster-steps"}))
    def fan_out(): ...
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional

from dagster import (
    Executor,
    Field,
    InitExecutorContext,
    IntSource,
    MetadataValue,
    Noneable,
    executor,
    multiple_process_executor_requirements,
)
from dagster._core.events import DagsterEvent, EngineEventData
from dagster._core.execution.retries import RetryMode, get_retries_config
from dagster._core.executor.step_delegating import (
    CheckStepHealthResult,
    StepDelegatingExecutor,
    StepHandler,
    StepHandlerContext,
)

from . import envelope, step_claims
from .launcher import (
    SqsLaunchError,
    queue_fields,
    region_from,
    send_body,
    sqs_client,
    storage_connection,
)
from .run_claims import DEFAULT_CLAIM_TTL_S

DEFAULT_HEALTH_CHECK_INTERVAL_S = 20  # StepDelegatingExecutor's own default

SQS_EXECUTOR_CONFIG = {
    **queue_fields("URL of the queue a dagster-sqs-worker reads: the runs queue or a steps queue."),
    "max_concurrent": Field(
        Noneable(IntSource),
        is_required=False,
        default_value=None,
        description="At most this many steps of one run in flight (queued or running); "
        "default no limit.",
    ),
    "claims_ttl": Field(
        float,
        is_required=False,
        default_value=DEFAULT_CLAIM_TTL_S,
        description="The daemon's claims.ttl in seconds: a step claim whose heartbeat is older "
        "is stale (its worker is gone) and the step is reported unhealthy.",
    ),
    "health_check_interval": Field(
        IntSource,
        is_required=False,
        default_value=DEFAULT_HEALTH_CHECK_INTERVAL_S,
        description="Seconds between two health checks of the steps in flight.",
    ),
    "retries": get_retries_config(),
}


class SqsStepHandler(StepHandler):
    """Sends each step to dagster-sqs-worker and follows it through its step claim."""

    def __init__(
        self,
        queue_url: str,
        endpoint_url: Optional[str] = None,
        region: Optional[str] = None,
        claims_ttl: float = DEFAULT_CLAIM_TTL_S,
    ):
        if not isinstance(queue_url, str) or not queue_url.strip():
            raise SqsLaunchError("sqs_executor: queue_url is empty")
        if claims_ttl <= 0:
            raise SqsLaunchError("sqs_executor: claims_ttl must be > 0")
        self.queue_url = queue_url
        self.endpoint_url = endpoint_url or None
        self.region = region or region_from(queue_url)
        self.claims_ttl = float(claims_ttl)
        self._client: Any = None
        super().__init__()

    @property
    def name(self) -> str:
        return "SqsStepHandler"

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = sqs_client(self.endpoint_url, self.region)
        return self._client

    @staticmethod
    def step_key(ctx: StepHandlerContext) -> step_claims.StepKey:
        """The claim key of the context's one step: (run id, step key, attempt)."""
        args = ctx.execute_step_args
        key, attempt = envelope.step_of(args)
        return step_claims.StepKey(args.run_id, key, attempt)

    def _connect(self, ctx: StepHandlerContext, storage: str = "run_storage") -> Any:
        return storage_connection(ctx.instance, "sqs_executor", storage)

    def launch_step(self, step_handler_context: StepHandlerContext) -> Iterator[DagsterEvent]:
        key = self.step_key(step_handler_context)
        body = envelope.step_envelope(step_handler_context.execute_step_args)
        mid = send_body(self.client, self.queue_url, body, str(key), self.endpoint_url)
        yield DagsterEvent.step_worker_starting(
            step_handler_context.get_step_context(key.step_key),
            message=f"Sent step {key.step_key} (attempt {key.attempt}) to dagster-sqs-worker: "
            f"message {mid} on {self.queue_url}.",
            metadata={
                "queue_url": MetadataValue.text(self.queue_url),
                "message_id": MetadataValue.text(mid),
                "step_key": MetadataValue.text(key.step_key),
                "attempt": MetadataValue.int(key.attempt),
            },
        )

    def health(self, step_handler_context: StepHandlerContext) -> step_claims.StepHealth:
        """The step attempt's health from its claim (and, for a claim that ended badly, the
        run's event log), through the instance's own storage connections."""
        key = self.step_key(step_handler_context)

        @contextlib.contextmanager
        def event_conn() -> Iterator[Any]:
            with self._connect(step_handler_context, "event_log_storage") as conn:
                yield conn

        with self._connect(step_handler_context) as conn:
            return step_claims.check(conn, key, self.claims_ttl, event_conn)

    def check_step_health(self, step_handler_context: StepHandlerContext) -> CheckStepHealthResult:
        h = self.health(step_handler_context)
        if h.is_healthy:
            return CheckStepHealthResult.healthy()
        return CheckStepHealthResult.unhealthy(h.reason)

    def terminate_step(self, step_handler_context: StepHandlerContext) -> Iterator[DagsterEvent]:
        key = self.step_key(step_handler_context)
        with self._connect(step_handler_context) as conn:
            marked = step_claims.request_stop(conn, key)
        if marked:
            what = "asked its dagster-sqs-worker to stop it (stop_requested_at set)"
        else:
            what = "no running claim to stop (not claimed yet, already done, or already asked)"
        yield DagsterEvent.engine_event(
            step_handler_context.get_step_context(key.step_key),
            f"Terminating step {key.step_key} (attempt {key.attempt}): {what}.",
            EngineEventData(
                metadata={
                    "step_key": MetadataValue.text(key.step_key),
                    "attempt": MetadataValue.int(key.attempt),
                    "stop_requested": MetadataValue.bool(marked),
                }
            ),
        )


@executor(
    name="sqs",
    config_schema=SQS_EXECUTOR_CONFIG,
    requirements=multiple_process_executor_requirements(),
)
def sqs_executor(init_context: InitExecutorContext) -> Executor:
    """Runs each step of a job as a supervised child of a dagster-sqs-worker daemon.

    Every step is sent as an ``execute_step`` message to ``queue_url``; a daemon claims it per
    (run id, step key, attempt), runs ``dagster api execute_step`` from the stored run's code
    origin and records how it ended. The run worker tails the steps' events from the event log,
    checks each step in flight every ``health_check_interval`` seconds (a claim whose heartbeat
    is older than ``claims_ttl``, or that ended without the step's own end event, is unhealthy:
    the step fails and Dagster's retry policy decides), and terminates steps by asking their
    daemon to stop them. Needs dagster-postgres storage with ``dagster-sqs-worker db-init``
    (schema version 2) run against it.

    .. code-block:: python

        @job(executor_def=sqs_executor.configured({"queue_url": "https://sqs.../steps"}))
        def fan_out(): ...
    """
    cfg = init_context.executor_config
    handler = SqsStepHandler(
        queue_url=str(cfg["queue_url"]),
        endpoint_url=_opt_str(cfg.get("endpoint_url")),
        region=_opt_str(cfg.get("region")),
        claims_ttl=float(cfg.get("claims_ttl", DEFAULT_CLAIM_TTL_S)),  # type: ignore[arg-type]
    )
    retries = RetryMode.from_config(cfg["retries"])  # type: ignore[arg-type]
    max_concurrent = cfg.get("max_concurrent")
    interval = cfg.get("health_check_interval", DEFAULT_HEALTH_CHECK_INTERVAL_S)
    return StepDelegatingExecutor(
        handler,
        retries=retries if retries is not None else RetryMode.ENABLED,
        max_concurrent=int(max_concurrent) if max_concurrent is not None else None,  # type: ignore[call-overload]
        check_step_health_interval_seconds=int(interval),  # type: ignore[call-overload]
    )


def _opt_str(v: object) -> Optional[str]:
    return None if v is None else str(v)
