"""The TaskIQ envelope dagster-sqs-worker reads (SPEC §1.1), built with Dagster's own serdes.

``{"task_id": "<32 hex>", "task_name": "execute_job", "labels": {}, "labels_types": null,
"args": [], "kwargs": {"execute_job_args_packed": ARGS}}`` written with ``json.dumps``
spacing, where ARGS is ``ExecuteRunArgs`` (``ResumeRunArgs`` and ``resume_job`` /
``resume_job_args_packed`` for a resume) serialized by Dagster (sorted keys, storage names
``pipeline_origin`` / ``pipeline_run_id``), with the stored run's code origin, ``instance_ref``
null (the daemon's child finds the instance through DAGSTER_HOME) and
``set_exit_code_on_failure`` true. This is what ``dagster-sqs-worker enqueue`` sends; a test
compares the two message by message.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Dict, Optional

EXECUTE_TASK = "execute_job"
RESUME_TASK = "resume_job"
KWARGS = {EXECUTE_TASK: "execute_job_args_packed", RESUME_TASK: "resume_job_args_packed"}


def wrap(task_name: str, packed: Dict[str, Any], task_id: Optional[str] = None) -> str:
    """The envelope text around an already packed args object."""
    if task_name not in KWARGS:
        raise ValueError(f"unsupported task {task_name!r}")
    envelope = {
        "task_id": task_id or uuid.uuid4().hex,
        "task_name": task_name,
        "labels": {},
        "labels_types": None,
        "args": [],
        "kwargs": {KWARGS[task_name]: packed},
    }
    return json.dumps(envelope)


def pack_run_args(run: Any, resume: bool = False) -> Dict[str, Any]:
    """ExecuteRunArgs/ResumeRunArgs for a stored DagsterRun, as Dagster serializes them."""
    from dagster._grpc.types import ExecuteRunArgs, ResumeRunArgs
    from dagster._serdes import serialize_value

    origin = run.job_code_origin
    if origin is None:
        raise ValueError(f"run {run.run_id} has no code origin: it cannot be executed remotely")
    cls = ResumeRunArgs if resume else ExecuteRunArgs
    args = cls(
        job_origin=origin,
        run_id=run.run_id,
        instance_ref=None,
        set_exit_code_on_failure=True,
    )
    return json.loads(serialize_value(args))


def run_envelope(run: Any, resume: bool = False, task_id: Optional[str] = None) -> str:
    """The message body for executing (or resuming) a stored DagsterRun."""
    return wrap(RESUME_TASK if resume else EXECUTE_TASK, pack_run_args(run, resume), task_id)
