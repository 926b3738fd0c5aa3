#!/usr/bin/python3
"""Write the step vectors of tests/vectors (execute_step_args_*, taskiq_execute_step_*,
celery_execute_plan_*) with REAL Dagster: a job with a RetryPolicy and a dynamic fan-out runs
under Dagster's own StepDelegatingExecutor with a step handler that records every
ExecuteStepArgs it is handed (and runs the step as Dagster's own test handler does: a
`dagster api execute_step` subprocess), so known_state, retry_mode and the step keys are exactly
what a step-delegating executor sends for each attempt. The recorded args then get the fixed run
id, job origin and instance ref of the run vectors (ExecuteStepArgs._replace, still Dagster's
object) and are written with serialize_value. The Celery form is Celery 5.2's execute_plan task
(dagster_celery.tasks.create_task, as dagster_celery.executor._submit_task applies it) published
through kombu's SQS transport with the send captured (no network): the body SQS would carry.

    eval "$(bash ../shared/dagster/env.sh 1.3)"; "$DSW_DAGSTER_PYTHON" tests/vectors/make_step_vectors.py
    eval "$(bash ../shared/dagster/env.sh 1.7)"; "$DSW_DAGSTER_PYTHON" tests/vectors/make_step_vectors.py

--check FILE [FILE...]: deserialize each file as ExecuteStepArgs in this tree's Dagster, print
its step keys, and say whether serialize_value writes it back byte for byte (how the expected
output of dsw_dagster_step_args in test_dagster.c was checked).
"""
import base64
import json
import os
import subprocess
import sys
import tempfile
from typing import Any, Dict, Iterator, List

import dagster
from dagster import (
    DynamicOut,
    DynamicOutput,
    In,
    Out,
    RetryPolicy,
    executor,
    job,
    op,
    reconstructable,
)
from dagster._core.code_pointer import FileCodePointer
from dagster._core.definitions.executor_definition import multiple_process_executor_requirements
from dagster._core.execution.retries import RetryMode
from dagster._core.executor.step_delegating import (
    CheckStepHealthResult,
    StepDelegatingExecutor,
    StepHandler,
)
from dagster._core.instance import DagsterInstance
from dagster._grpc.types import ExecuteStepArgs
from dagster._serdes import deserialize_value, pack_value, serialize_value

HERE = os.path.dirname(os.path.abspath(__file__))
RUN_ID = "00000000-0000-4000-8000-000000000003"
TREE = os.environ.get("DSW_DAGSTER_TREE", "1.3").replace(".", "_")


@op(retry_policy=RetryPolicy(max_retries=3))
def flaky(context) -> int:
    if context.retry_number < 2:
        raise Exception("flaky fails its first two attempts")
    return 1


@op(out=DynamicOut(int))
def fan_out() -> Iterator[DynamicOutput]:
    for key in ("a", "b"):
        yield DynamicOutput(1, mapping_key=key)


@op(retry_policy=RetryPolicy(max_retries=2))
def process(context, x: int) -> int:
    if context.retry_number < 1:
        raise Exception("process fails its first attempt")
    return x


@op(ins={"xs": In(), "f": In()}, out=Out(int))
def collect(xs, f) -> int:
    return sum(xs) + f


class RecordingStepHandler(StepHandler):
    """Dagster's test step handler (a subprocess per step) that also records its args."""

    def __init__(self) -> None:
        super().__init__()
        self.procs: List[subprocess.Popen] = []

    @property
    def name(self) -> str:
        return "RecordingStepHandler"

    def launch_step(self, step_handler_context) -> Iterator[Any]:
        args = step_handler_context.execute_step_args
        record = os.environ.get("DSW_STEP_RECORD")  # set by run_job
        if record:
            with open(record, "a") as f:
                f.write(serialize_value(args) + "\n")
        self.procs.append(
            subprocess.Popen(args.get_command_args(), stdout=subprocess.DEVNULL)
        )
        return iter(())

    def check_step_health(self, step_handler_context) -> CheckStepHealthResult:
        return CheckStepHealthResult.healthy()

    def terminate_step(self, step_handler_context) -> Iterator[Any]:
        raise NotImplementedError()


@executor(name="recording", requirements=multiple_process_executor_requirements())
def recording_executor(_init_context):
    return StepDelegatingExecutor(
        RecordingStepHandler(), retries=RetryMode.ENABLED, sleep_seconds=0.05
    )


@job(executor_def=recording_executor)
def step_job():
    collect(fan_out().map(process).collect(), flaky())


def run_job(record: str) -> None:
    with tempfile.TemporaryDirectory() as home:
        os.environ["DSW_STEP_RECORD"] = record
        instance = DagsterInstance.local_temp(home)
        result = dagster.execute_job(reconstructable(step_job), instance=instance)
        if not result.success:
            sys.exit("make_step_vectors: the job did not succeed")


def run_vector(name: str) -> Dict[str, Any]:
    with open(os.path.join(HERE, name)) as f:
        return json.load(f)


def fixed(args: ExecuteStepArgs) -> ExecuteStepArgs:
    """The recorded args with the run vectors' run id, job origin and instance ref."""
    run = run_vector("execute_run_args.json")
    origin = deserialize_value(json.dumps(run["pipeline_origin"]))
    ref = deserialize_value(json.dumps(run["instance_ref"]))
    origin = origin._replace(job_name="step_job")
    return args._replace(job_origin=origin, run_id=RUN_ID, instance_ref=ref)


def attempt(args: ExecuteStepArgs) -> int:
    key = args.step_keys_to_execute[0]
    state = args.known_state
    return 1 + (state.previous_retry_attempts.get(key, 0) if state else 0)


def pick(launches: List[ExecuteStepArgs], key: str, n: int) -> ExecuteStepArgs:
    for a in launches:
        if a.step_keys_to_execute == [key] and attempt(a) == n:
            return fixed(a)
    sys.exit(f"make_step_vectors: no launch of {key} attempt {n}")


def write(name: str, text: str) -> None:
    with open(os.path.join(HERE, name), "w", newline="") as f:
        f.write(text)
    print(f"wrote {name}")


def taskiq(args: ExecuteStepArgs) -> str:
    """The execute_step TaskIQ envelope (docs/steps.md section 1), packed args as a JSON string."""
    env = {
        "task_id": "0123456789abcdef0123456789abcd03",
        "task_name": "execute_step",
        "labels": {},
        "labels_types": None,
        "args": [],
        "kwargs": {"execute_step_args_packed": serialize_value(args)},
    }
    return json.dumps(env)


def celery(args: ExecuteStepArgs) -> str:
    """execute_plan as dagster_celery applies it, the SQS MessageBody kombu would send."""
    from celery import Celery
    from dagster_celery.tasks import create_task
    from kombu.transport import SQS

    sent: List[str] = []

    def put(self, queue, message, **kwargs):  # kombu.transport.SQS.Channel._put, no send
        sent.append(base64.b64encode(json.dumps(message).encode()).decode())

    SQS.Channel._put = put
    SQS.Channel._new_queue = lambda self, queue, **kw: "http://127.0.0.1:1/000000000000/" + queue
    SQS.Channel._size = lambda self, queue: 0  # queue_declare's message count
    app = Celery(broker="sqs://k:s@127.0.0.1:1")
    app.conf.broker_transport_options = {
        "region": "us-east-1",
        "predefined_queues": {"dagster": {"url": "http://127.0.0.1:1/000000000000/dagster"}},
    }
    app.conf.task_default_queue = "dagster"
    # The job's code pointer as the run vectors have it (the executable_dict is ignored by the
    # daemon, but committed data should not carry this machine's paths).
    recon = reconstructable(step_job)
    pointer = FileCodePointer("/srv/dagster/project/jobs.py", "defs", "/srv/dagster/project")
    recon = recon._replace(repository=recon.repository._replace(pointer=pointer))
    sig = create_task(app).si(
        execute_step_args_packed=pack_value(args), executable_dict=recon.to_dict()
    )
    sig.apply_async(priority=0, queue="dagster", routing_key="dagster.execute_plan")
    if len(sent) != 1:
        sys.exit("make_step_vectors: kombu sent %d messages" % len(sent))
    return sent[0]


def check(paths: List[str]) -> None:
    for p in paths:
        with open(p) as f:
            text = f.read().rstrip("\n")
        args = deserialize_value(text, ExecuteStepArgs)
        same = serialize_value(args) == text
        print(f"{p}: {args.step_keys_to_execute} attempt {attempt(args)} "
              f"round trip {'identical' if same else 'DIFFERS'}")
        if not same:
            print(serialize_value(args))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--check":
        check(sys.argv[2:])
        return
    with tempfile.TemporaryDirectory() as tmp:
        record = os.path.join(tmp, "launches.jsonl")
        run_job(record)
        with open(record) as f:
            launches = [deserialize_value(line, ExecuteStepArgs) for line in f if line.strip()]
    write(f"execute_step_args_{TREE}.json", serialize_value(pick(launches, "flaky", 3)))
    write(f"execute_step_args_first_{TREE}.json", serialize_value(pick(launches, "fan_out", 1)))
    write(f"execute_step_args_mapped_{TREE}.json",
          serialize_value(pick(launches, "process[b]", 2)))
    write(f"taskiq_execute_step_{TREE}.json", taskiq(pick(launches, "collect", 1)))
    write(f"celery_execute_plan_{TREE}_b64.txt", celery(pick(launches, "process[a]", 2)))


if __name__ == "__main__":
    main()
