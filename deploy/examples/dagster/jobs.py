"""The worked example's code location: one job of two ops.

Load it in your Dagster deployment with `-f /opt/dagster/app/jobs.py` (workspace.yaml:
`python_file: /opt/dagster/app/jobs.py`), the same path as in the worker image
(deploy/examples/Containerfile.dagster). Launch `hello_job` from the UI or with
`dagster job launch -f /opt/dagster/app/jobs.py -j hello_job`; the dagster-taskiq run launcher
enqueues it and dagster-sqs-worker executes it.
"""
from dagster import Definitions, OpExecutionContext, job, op


@op
def greeting(context: OpExecutionContext) -> str:
    context.log.info("running in %s", context.run_id)
    return "hello from dagster-sqs-worker"


@op
def shout(context: OpExecutionContext, text: str) -> int:
    context.log.info(text.upper())
    return len(text)


@job
def hello_job():
    shout(greeting())


defs = Definitions(jobs=[hello_job])
