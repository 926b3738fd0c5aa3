"""The TaskIQ envelopes dagster-sqs-worker reads (SPEC §1.1, docs/steps.md §1), built with Dagster's
own serdes. One code path (:func:`wrap` around :func:`pack`) makes every form.

``{"task_id": "<32 hex>", "task_name": TASK, "labels": {}, "labels_types": null, "args": [],
"kwargs": {KWARG: ARGS}}`` written with ``json.dumps`` spacing, where ARGS is Dagster's own
serialization (sorted keys, storage names ``pipeline_origin`` / ``pipeline_run_id``) of:

- ``execute_job`` / ``execute_job_args_packed``: ``ExecuteRunArgs`` (``resume_job`` /
  ``resume_job_args_packed`` and ``ResumeRunArgs`` for a resume) with the stored run's code
  origin, ``instance_ref`` null (the daemon's child finds the instance through DAGSTER_HOME)
  and ``set_exit_code_on_failure`` true. This is what ``dagster-sqs-worker enqueue`` sends; a
  test compares the two message by message.
- ``execute_step`` / ``execute_step_args_packed``: the ``ExecuteStepArgs`` Dagster's
  StepDelegatingExecutor hands its step handler, as they are, for exactly one step key
  (docs/steps.md §1: the daemon rejects anything else as ``bad_envelope``, and so does
  :func:`step_envelope`, before sending).

The step's ATTEMPT (1-based, the step claim's key with run id and step key) is
``1 + known_state.previous_retry_attempts[step_key]``, as the daemon computes it
(:func:`step_attempt`).
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any, Dict, Mapping, Optional, Tuple

EXECUTE_TASK = "execute_job"
RESUME_TASK = "resume_job"
STEP_TASK = "execute_step"
KWARGS = {
    EXECUTE_TASK: "execute_job_args_packed",
    RESUME_TASK: "resume_job_args_packed",
    STEP_TASK: "execute_step_args_packed",
}

STEP_KEY_MAX = 255  # DSW_MSG_STEP_KEY_MAX
MAX_PREVIOUS_ATTEMPTS = 1000
_STEP_KEY_RE = re.compile(r"[A-Za-z0-9_.,\[\]-]{1,%d}" % STEP_KEY_MAX)


class BadStepArgs(ValueError):
    """ExecuteStepArgs the daemon would reject as bad_envelope (docs/steps.md §1)."""


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


def pack(args: Any) -> Dict[str, Any]:
    """A Dagster serdes object (ExecuteRunArgs, ExecuteStepArgs...) as Dagster serializes it."""
    from dagster._serdes import serialize_value

    packed = json.loads(serialize_value(args))
    if not isinstance(packed, dict):
        raise ValueError(f"{type(args).__name__} did not serialize to an object")
    return packed


def pack_run_args(run: Any, resume: bool = False) -> Dict[str, Any]:
    """ExecuteRunArgs/ResumeRunArgs for a stored DagsterRun, as Dagster serializes them."""
    from dagster._grpc.types import ExecuteRunArgs, ResumeRunArgs

    origin = run.job_code_origin
    if origin is None:
        raise ValueError(f"run {run.run_id} has no code origin: it cannot be executed remotely")
    cls = ResumeRunArgs if resume else ExecuteRunArgs
    return pack(
        cls(
            job_origin=origin,
            run_id=run.run_id,
            instance_ref=None,
            set_exit_code_on_failure=True,
        )
    )


def run_envelope(run: Any, resume: bool = False, task_id: Optional[str] = None) -> str:
    """The message body for executing (or resuming) a stored DagsterRun."""
    return wrap(RESUME_TASK if resume else EXECUTE_TASK, pack_run_args(run, resume), task_id)


def check_step_key(step_key: Any) -> str:
    """The step key if the daemon accepts it: 1..255 chars of ``[A-Za-z0-9_.,[]-]``."""
    if not isinstance(step_key, str) or not _STEP_KEY_RE.fullmatch(step_key):
        raise BadStepArgs(
            f"step key {step_key!r} is not 1..{STEP_KEY_MAX} characters of [A-Za-z0-9_.,[]-]"
        )
    return step_key


def attempt_of(previous_retry_attempts: Optional[Mapping[str, Any]], step_key: str) -> int:
    """docs/steps.md §1: 1 + previous_retry_attempts[step_key]; 0, absent or no mapping -> 1."""
    n = (previous_retry_attempts or {}).get(step_key, 0)
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_PREVIOUS_ATTEMPTS:
        raise BadStepArgs(
            f"previous_retry_attempts[{step_key!r}] is {n!r}: not an integer "
            f"0..{MAX_PREVIOUS_ATTEMPTS}"
        )
    return 1 + n


def step_of(args: Any) -> Tuple[str, int]:
    """(step key, attempt) of ExecuteStepArgs for exactly one step (else BadStepArgs)."""
    keys = args.step_keys_to_execute
    if keys is None or len(keys) != 1:
        raise BadStepArgs(
            f"dagster-sqs-worker executes one step per message, not {list(keys or [])!r}"
        )
    key = check_step_key(keys[0])
    known = args.known_state
    return key, attempt_of(known.previous_retry_attempts if known is not None else None, key)


def step_attempt(args: Any) -> int:
    """The attempt (1-based) of the one step of ExecuteStepArgs."""
    return step_of(args)[1]


def step_envelope(args: Any, task_id: Optional[str] = None) -> str:
    """The ``execute_step`` message body for ExecuteStepArgs of exactly one step."""
    step_of(args)
    return wrap(STEP_TASK, pack(args), task_id)
