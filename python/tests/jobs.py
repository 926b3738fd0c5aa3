"""The Dagster code the end-to-end tests launch: a job whose first op waits for a file (so a
test decides when a run may finish, without timing), then a second op."""

import os
import time

from dagster import Field, in_process_executor, job, op, repository


@op(config_schema={"gate": Field(str, is_required=False, default_value=""),
                   "timeout": Field(float, is_required=False, default_value=120.0)})
def gate(context) -> int:
    path = context.op_config["gate"]
    deadline = time.monotonic() + context.op_config["timeout"]
    while path and not os.path.exists(path):
        if time.monotonic() > deadline:
            raise Exception(f"gate {path} never opened")
        time.sleep(0.1)
    context.log.info(f"gate open in pid {os.getpid()}")
    return 1


@op
def after(x: int) -> int:
    return x + 1


@job
def gated():
    after(gate())


@job(executor_def=in_process_executor)
def gated_in_process():
    after(gate())


@repository
def dsw_repo():
    return [gated, gated_in_process]
