"""sqs_executor on a real Dagster (this tree), a real PostgreSQL instance and a real moto queue.

One real run of ``stepped`` (below) goes through Dagster's own StepDelegatingExecutor with our
SqsStepHandler: its ``launch_step`` puts each step's envelope on a moto queue, and a stand-in
for the daemon (this file's ``StandIn``: receive, claim, ``dagster api execute_step`` with the
message's packed args, record the exit, delete; no C daemon, that is tests/dagster's job) runs
it. The step handler contexts Dagster built are recorded (the real ``launch_step`` wraps) and
reused for the envelope, health and terminate tests.
"""


import dataclasses
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

# Without an importable Dagster (a plain clone, no ../shared) this module is skipped whole, like
# the tests the conftest marks: the jobs below are built at import time.
pytest.importorskip("dagster", reason="no importable Dagster")
from dagster import RetryPolicy, job, op  # noqa: E402

from dagster_sqs_worker import sqs_executor  # noqa: E402

pytestmark = [pytest.mark.dagster, pytest.mark.daemon]

HERE = Path(__file__).resolve().parent


@op(retry_policy=RetryPolicy(max_retries=1), config_schema={"marker": str})
def flaky(context) -> int:  # type: ignore[no-untyped-def]  # Dagster refuses Any here
    """Fails on its first attempt (no marker yet), succeeds on its second."""
    marker = context.op_config["marker"]
    if not os.path.exists(marker):
        Path(marker).write_text("1")
        raise Exception("first attempt fails on purpose")
    return 20


@op
def one() -> int:
    return 1


@op
def add(a: int, b: int) -> int:
    return a + b


@job(executor_def=sqs_executor)
def stepped() -> None:
    add(flaky(), one())


def executor_config(queue_url: str, endpoint: str, **extra: Any) -> Dict[str, Any]:
    from conftest import REGION

    cfg = {"queue_url": queue_url, "endpoint_url": endpoint, "region": REGION,
           "health_check_interval": 1, "claims_ttl": 60.0}
    cfg.update(extra)
    return cfg


class StandIn(threading.Thread):
    """What the daemon does with a step message, in Python: claim (running), run
    ``dagster api execute_step`` with the message's ExecuteStepArgs (instance_ref forwarded),
    record the exit in the claim, delete the message. Bodies are kept by message id."""

    def __init__(self, db: str, endpoint: str, queue_url: str, timeout: float = 240):
        super().__init__(daemon=True)
        self.db, self.endpoint, self.queue_url = db, endpoint, queue_url
        self.deadline = time.monotonic() + timeout
        self.stop = threading.Event()
        self.bodies: Dict[str, str] = {}
        self.order: List[str] = []
        self.errors: List[str] = []

    def run(self) -> None:
        from conftest import sqs_client

        c = sqs_client(self.endpoint)
        while not self.stop.is_set():
            if time.monotonic() > self.deadline:
                self.errors.append("stand-in deadline: interrupting the run")
                import _thread

                _thread.interrupt_main()
                return
            r = c.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=1,
                                  WaitTimeSeconds=1, VisibilityTimeout=120)
            for m in r.get("Messages", []):
                try:
                    self.execute(m)
                except Exception as e:  # noqa: BLE001 - reported by the test
                    self.errors.append(f"{type(e).__name__}: {e}")
                c.delete_message(QueueUrl=self.queue_url, ReceiptHandle=m["ReceiptHandle"])

    def execute(self, m: Dict[str, Any]) -> None:
        from conftest import psql
        from dagster_sqs_worker import envelope
        from test_step_claims import add_step_claim
        from dagster_sqs_worker.step_claims import StepKey

        self.bodies[m["MessageId"]] = m["Body"]
        self.order.append(m["MessageId"])
        args = decode(m["Body"])
        key_s, attempt = envelope.step_of(args)
        key = StepKey(args.run_id, key_s, attempt)
        add_step_claim(self.db, key, state="running", heartbeat_ago=0, claimed_ago=0,
                       worker=f"stand-in:{os.getpid()}:1")
        packed = json.dumps(json.loads(m["Body"])["kwargs"]["execute_step_args_packed"])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
        p = subprocess.run([sys.executable, "-m", "dagster", "api", "execute_step", packed],
                           env=env, cwd=str(HERE), capture_output=True, text=True, timeout=180)
        psql(self.db, f"UPDATE dagster_sqs_worker.step_claims SET state = 'done', exit_code ="
                      f" {p.returncode}, outcome = 'exited', finished_at = now() WHERE run_id ="
                      f" '{key.run_id}' AND step_key = '{key.step_key}' AND attempt = {attempt}")
        if p.returncode != 0:
            self.errors.append(f"execute_step {key}: {p.returncode}: {p.stderr[-2000:]}")


def decode(body: str) -> Any:
    """The message's ExecuteStepArgs, through Dagster's own deserialize_value."""
    from dagster._grpc.types import ExecuteStepArgs
    from dagster._serdes import deserialize_value

    packed = json.loads(body)["kwargs"]["execute_step_args_packed"]
    return deserialize_value(json.dumps(packed), ExecuteStepArgs)


@dataclasses.dataclass
class Ran:
    db: str
    instance: Any
    run_id: str
    success: bool
    endpoint: str
    queue_url: str
    contexts: List[Any]  # StepHandlerContexts Dagster built, in launch order
    # Their ExecuteStepArgs as they were at launch (Dagster's known_state.ready_outputs is the
    # live set of the run's outputs: it grows after the launch).
    launched: List[Any]
    bodies: Dict[str, str]  # message id -> body, as received
    order: List[str]


@pytest.fixture(scope="module")
def ran(dagster_db: str, tmp_path_factory: Any) -> Iterator[Ran]:
    from conftest import LAUNCHER_SQS, new_queue
    from dagster import execute_job, reconstructable

    from dagster_setup import instance_at, write_home
    from dagster_sqs_worker.executor import SqsStepHandler

    if "moto" not in LAUNCHER_SQS:
        pytest.skip("no moto (DSW_TEST_MOTO_URL)")
    endpoint = LAUNCHER_SQS["moto"]
    work = tmp_path_factory.mktemp("executor")
    inst = instance_at(write_home(work / "home", dagster_db, None))
    queue = new_queue(endpoint)
    from dagster._grpc.types import ExecuteStepArgs
    from dagster._serdes import deserialize_value, serialize_value

    recorded: List[Any] = []
    launched: List[Any] = []
    original = SqsStepHandler.launch_step

    def recording(self: Any, ctx: Any) -> Iterator[Any]:
        recorded.append(ctx)
        args = ctx.execute_step_args
        launched.append(deserialize_value(serialize_value(args), ExecuteStepArgs))
        yield from original(self, ctx)

    stand_in = StandIn(dagster_db, endpoint, queue)
    stand_in.start()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SqsStepHandler, "launch_step", recording)
        result = execute_job(
            reconstructable(stepped), instance=inst,
            run_config={"execution": {"config": executor_config(queue, endpoint)},
                        "ops": {"flaky": {"config": {"marker": str(work / "marker")}}}})
    stand_in.stop.set()
    stand_in.join(30)
    assert not stand_in.errors, stand_in.errors
    yield Ran(dagster_db, inst, result.run_id, result.success, endpoint, queue, recorded,
              launched, stand_in.bodies, stand_in.order)
    inst.dispose()


def step_events(r: Ran, event_type: str) -> List[Any]:
    from dagster import DagsterEventType

    return [e for e in r.instance.all_logs(r.run_id, of_type=DagsterEventType[event_type])]


def ctx_of(r: Ran, step_key: str, attempt: int = 1) -> Any:
    from dagster_sqs_worker import envelope

    for c in r.contexts:
        if envelope.step_of(c.execute_step_args) == (step_key, attempt):
            return c
    raise AssertionError(f"no context for {step_key} attempt {attempt}")


# ---- the run ---------------------------------------------------------------------------------


def test_the_run_succeeds_through_the_queue(ran: Ran) -> None:
    assert ran.success
    assert ran.instance.get_run_by_id(ran.run_id).status.value == "SUCCESS"
    # flaky twice (its first attempt failed, RetryPolicy), one, add: four messages, four steps.
    assert len(ran.contexts) == 4 and len(ran.bodies) == 4
    assert len(step_events(ran, "STEP_UP_FOR_RETRY")) == 1
    assert {e.step_key for e in step_events(ran, "STEP_SUCCESS")} == {"flaky", "one", "add"}


def test_each_message_is_exactly_the_envelope_of_its_context(ran: Ran) -> None:
    from dagster_sqs_worker import envelope

    bodies = [ran.bodies[mid] for mid in ran.order]
    by_task = {json.loads(b)["task_id"]: b for b in bodies}
    assert len(by_task) == 4  # one task id each
    for args in ran.launched:
        matches = [b for tid, b in by_task.items()
                   if envelope.step_envelope(args, task_id=tid) == b]
        assert len(matches) == 1, (args.step_keys_to_execute, bodies)


def test_envelope_shape_and_round_trip(ran: Ran) -> None:
    from dagster._grpc.types import ExecuteStepArgs

    for mid in ran.order:
        body = ran.bodies[mid]
        assert body.startswith('{"task_id": "')
        assert '"task_name": "execute_step", "labels": {}, "labels_types": null, "args": []' in body
        env = json.loads(body)
        assert list(env) == ["task_id", "task_name", "labels", "labels_types", "args", "kwargs"]
        assert list(env["kwargs"]) == ["execute_step_args_packed"]
        packed = env["kwargs"]["execute_step_args_packed"]
        assert packed["__class__"] == "ExecuteStepArgs" and list(packed) == sorted(packed)
        assert packed["pipeline_run_id"] == ran.run_id
        assert packed["retry_mode"] == {"__enum__": "RetryMode.DEFERRED"}
        assert packed["known_state"]["__class__"] == "KnownExecutionState"
        assert packed["pipeline_origin"]["__class__"] == "PipelinePythonOrigin"
        assert packed["instance_ref"]["__class__"] == "InstanceRef"
        args = decode(body)
        assert isinstance(args, ExecuteStepArgs) and len(args.step_keys_to_execute) == 1
        assert args.run_id == ran.run_id
        assert args in ran.launched  # exactly what Dagster handed the step handler


def _attempt(args: Any) -> int:
    from dagster_sqs_worker import envelope

    return envelope.step_attempt(args)


def test_attempt_from_real_known_state(ran: Ran) -> None:
    """flaky's retry carries previous_retry_attempts {flaky: 1}: attempt 2 (docs/steps.md §1)."""
    attempts = sorted((c.execute_step_args.step_keys_to_execute[0],
                       _attempt(c.execute_step_args)) for c in ran.contexts)
    assert attempts == [("add", 1), ("flaky", 1), ("flaky", 2), ("one", 1)]
    retry = ctx_of(ran, "flaky", 2).execute_step_args
    assert retry.known_state.previous_retry_attempts == {"flaky": 1}
    # The stand-in claimed each (run, step, attempt) it received.
    rows = _psql(ran.db, "SELECT step_key || ':' || attempt FROM dagster_sqs_worker.step_claims"
                         f" WHERE run_id = '{ran.run_id}' ORDER BY 1")
    assert rows.split() == ["add:1", "flaky:1", "flaky:2", "one:1"]


def _psql(db: str, sql: str) -> str:
    from conftest import psql

    return psql(db, sql)


def test_launch_step_logs_an_event_naming_queue_message_and_step(ran: Ran) -> None:
    evs = step_events(ran, "STEP_WORKER_STARTING")
    assert len(evs) == 4
    seen = set()
    for e in evs:
        md = e.dagster_event.event_specific_data.metadata
        mid = md["message_id"].value
        assert md["queue_url"].value == ran.queue_url and mid in ran.bodies
        assert md["step_key"].value == e.step_key
        assert ran.queue_url in e.message and mid in e.message and e.step_key in e.message
        seen.add((e.step_key, md["attempt"].value))
    assert seen == {("add", 1), ("flaky", 1), ("flaky", 2), ("one", 1)}


# ---- launch_step on its own ------------------------------------------------------------------


def handler(r: Ran, queue_url: str = "", endpoint: str = "") -> Any:
    from conftest import REGION
    from dagster_sqs_worker.executor import SqsStepHandler

    return SqsStepHandler(queue_url or r.queue_url, endpoint or r.endpoint, REGION, 60.0)


def test_launch_step_puts_exactly_the_envelope_on_the_queue(ran: Ran) -> None:
    from conftest import new_queue, receive_all
    from dagster_sqs_worker import envelope

    q = new_queue(ran.endpoint)
    ctx = ctx_of(ran, "flaky", 2)
    (event,) = list(handler(ran, q).launch_step(ctx))
    assert event.event_type_value == "STEP_WORKER_STARTING"
    (m,) = receive_all(ran.endpoint, q, 1)
    assert event.event_specific_data.metadata["message_id"].value == m["MessageId"]
    tid = json.loads(m["Body"])["task_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", tid)
    assert m["Body"] == envelope.step_envelope(ctx.execute_step_args, task_id=tid)
    assert decode(m["Body"]) == ctx.execute_step_args


def test_failed_send_is_a_clear_error(ran: Ran) -> None:
    import socket

    from dagster_sqs_worker import SqsLaunchError

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{s.getsockname()[1]}"
    s.close()  # nobody listens there now
    h = handler(ran, url + "/000000000000/q", url)
    with pytest.raises(SqsLaunchError, match="could not send step one .attempt 1. of run"):
        list(h.launch_step(ctx_of(ran, "one")))


def test_more_than_one_step_is_refused_before_sending(ran: Ran) -> None:
    from dagster_sqs_worker import envelope

    args = ctx_of(ran, "one").execute_step_args._replace(step_keys_to_execute=["one", "add"])
    with pytest.raises(envelope.BadStepArgs, match="one step per message"):
        envelope.step_envelope(args)


# ---- check_step_health: every row of docs/steps.md §4 --------------------------------------------


def _claim(r: Ran, step_key: str, attempt: int, **kw: Any) -> None:
    from dagster_sqs_worker.step_claims import StepKey
    from test_step_claims import add_step_claim

    add_step_claim(r.db, StepKey(r.run_id, step_key, attempt), **kw)


def _forget(r: Ran, step_key: str) -> None:
    _psql(r.db, "DELETE FROM dagster_sqs_worker.step_claims WHERE run_id ="
                f" '{r.run_id}' AND step_key = '{step_key}'")


def test_health_no_row_and_live(ran: Ran) -> None:
    h, ctx = handler(ran), ctx_of(ran, "one")
    _forget(ran, "one")
    assert h.check_step_health(ctx).is_healthy
    _claim(ran, "one", 1, state="running", heartbeat_ago=2)
    res = h.check_step_health(ctx)
    assert res.is_healthy and res.unhealthy_reason is None


def test_health_stale_is_unhealthy(ran: Ran) -> None:
    h, ctx = handler(ran), ctx_of(ran, "one")
    _claim(ran, "one", 1, state="running", heartbeat_ago=95, worker="w9:321:17")
    res = h.check_step_health(ctx)
    assert not res.is_healthy
    assert "step worker w9:321:17 on w9 (pid 321) stopped heartbeating 95 s ago" in (
        res.unhealthy_reason or "")


def test_health_uses_the_contexts_attempt(ran: Ran) -> None:
    """flaky attempt 2's context: a stale attempt-1 row does not count, its own row does."""
    h, ctx = handler(ran), ctx_of(ran, "flaky", 2)
    _forget(ran, "flaky")
    _claim(ran, "flaky", 1, state="running", heartbeat_ago=500)
    assert h.check_step_health(ctx).is_healthy  # no row for attempt 2
    _claim(ran, "flaky", 2, state="running", heartbeat_ago=500)
    assert not h.check_step_health(ctx).is_healthy


def test_health_done_exit_0_is_healthy(ran: Ran) -> None:
    h, ctx = handler(ran), ctx_of(ran, "add")
    _claim(ran, "add", 1, state="done", exit_code=0, outcome="exited", claimed_ago=0)
    assert h.check_step_health(ctx).is_healthy


@pytest.mark.parametrize("exit_code,sig,outcome,words", [
    (3, None, "exited", "step worker exited with code 3"),
    (None, 9, "signaled", "killed by signal 9"),
    (None, None, "lost", "lost: its worker died"),
    (None, None, "gave_up", "gave up"),
])
def test_health_done_otherwise_reads_the_real_event_log(
    ran: Ran, exit_code: Any, sig: Any, outcome: str, words: str
) -> None:
    """The run's real STEP_SUCCESS of `add` (written by Dagster) counts only after claimed_at."""
    h, ctx = handler(ran), ctx_of(ran, "add")
    _claim(ran, "add", 1, state="done", exit_code=exit_code, term_signal=sig, outcome=outcome,
           claimed_ago=3600)
    assert h.check_step_health(ctx).is_healthy  # the step's own STEP_SUCCESS came after
    _claim(ran, "add", 1, state="done", exit_code=exit_code, term_signal=sig, outcome=outcome,
           claimed_ago=-5)  # a claim younger than every event of the run
    res = h.check_step_health(ctx)
    assert not res.is_healthy and words in (res.unhealthy_reason or "")


def test_health_on_non_postgres_storage_is_a_clear_error(ran: Ran, tmp_path: Path) -> None:
    from dagster._core.instance import DagsterInstance, InstanceRef
    from dagster._core.executor.step_delegating import StepHandlerContext

    from dagster_sqs_worker import run_claims

    (tmp_path / "dagster.yaml").write_text("telemetry: {enabled: false}\n")
    sqlite = DagsterInstance.from_ref(InstanceRef.from_dir(str(tmp_path)))
    ctx = StepHandlerContext(sqlite, None, [], ctx_of(ran, "one").execute_step_args)  # type: ignore[arg-type]
    with pytest.raises(run_claims.ClaimsUnavailable, match="dagster-postgres"):
        handler(ran).check_step_health(ctx)
    sqlite.dispose()


# ---- terminate_step --------------------------------------------------------------------------


def _stop_at(r: Ran, step_key: str, attempt: int) -> str:
    return _psql(r.db, "SELECT coalesce(stop_requested_at::text, '') FROM"
                       f" dagster_sqs_worker.step_claims WHERE run_id = '{r.run_id}' AND"
                       f" step_key = '{step_key}' AND attempt = {attempt}")


def test_terminate_step_sets_stop_requested_for_a_running_claim_only(ran: Ran) -> None:
    h, ctx = handler(ran), ctx_of(ran, "flaky", 2)
    _forget(ran, "flaky")
    _claim(ran, "flaky", 1, state="running")
    _claim(ran, "flaky", 2, state="running")
    (ev,) = list(h.terminate_step(ctx))
    assert ev.event_type_value == "ENGINE_EVENT" and "flaky" in ev.message
    assert ev.event_specific_data.metadata["stop_requested"].value is True
    first = _stop_at(ran, "flaky", 2)
    assert first and _stop_at(ran, "flaky", 1) == ""  # only this attempt
    (ev,) = list(h.terminate_step(ctx))  # asked already: unchanged
    assert ev.event_specific_data.metadata["stop_requested"].value is False
    assert _stop_at(ran, "flaky", 2) == first


def test_terminate_step_leaves_a_done_claim(ran: Ran) -> None:
    h, ctx = handler(ran), ctx_of(ran, "one")
    _claim(ran, "one", 1, state="done", exit_code=0, outcome="exited")
    (ev,) = list(h.terminate_step(ctx))
    assert ev.event_specific_data.metadata["stop_requested"].value is False
    assert _stop_at(ran, "one", 1) == ""
    _forget(ran, "one")  # no claim at all: nothing to mark either
    (ev,) = list(h.terminate_step(ctx))
    assert ev.event_specific_data.metadata["stop_requested"].value is False


# ---- configuration ---------------------------------------------------------------------------


def test_executor_config_reaches_the_step_delegating_executor(ran: Ran) -> None:
    from dagster import reconstructable
    from dagster._core.executor.init import InitExecutorContext
    from dagster._core.executor.step_delegating import StepDelegatingExecutor

    from dagster_sqs_worker.executor import SqsStepHandler

    cfg = executor_config(ran.queue_url, ran.endpoint, max_concurrent=3, claims_ttl=7.5,
                          health_check_interval=4, retries={"disabled": {}})
    ex = sqs_executor.executor_creation_fn(InitExecutorContext(  # type: ignore[misc]
        job=reconstructable(stepped), executor_def=sqs_executor, executor_config=cfg,
        instance=ran.instance))
    assert isinstance(ex, StepDelegatingExecutor)
    assert ex._max_concurrent == 3 and ex._check_step_health_interval_seconds == 4
    assert ex.retries.value == "disabled"
    h = ex._step_handler
    assert isinstance(h, SqsStepHandler) and h.claims_ttl == 7.5
    assert h.queue_url == ran.queue_url and h.endpoint_url == ran.endpoint


def test_configured_job_definition(ran: Ran) -> None:
    """The documented form: @job(executor_def=sqs_executor.configured({...}))."""
    from dagster._core.definitions.executor_definition import ExecutorDefinition

    configured = sqs_executor.configured({"queue_url": ran.queue_url, "max_concurrent": 8})
    assert isinstance(configured, ExecutorDefinition)

    @job(executor_def=configured)
    def fan() -> None:
        one()

    assert fan.executor_def.name == "sqs"


def test_empty_queue_url_is_refused() -> None:
    from dagster_sqs_worker import SqsLaunchError
    from dagster_sqs_worker.executor import SqsStepHandler

    with pytest.raises(SqsLaunchError, match="queue_url"):
        SqsStepHandler(" ")
    with pytest.raises(SqsLaunchError, match="claims_ttl"):
        SqsStepHandler("http://127.0.0.1:1/0/q", claims_ttl=0)

