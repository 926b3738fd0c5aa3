"""The launcher's message equals `dagster-sqs-worker enqueue`'s for the same run (both received
from a real queue, parsed, minus task_id), and the daemon's decoder accepts it."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from conftest import DSW_BIN, REGION, new_queue, pg_conninfo, receive_all

pytestmark = [pytest.mark.dagster, pytest.mark.daemon]


def enqueue(db: str, endpoint: str, queue_url: str, run_id: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, DSW_QUEUE_URL=queue_url, DSW_QUEUE_ENDPOINT=endpoint,
               DSW_QUEUE_REGION=REGION, DSW_POSTGRES_CONNINFO=pg_conninfo(db))
    return subprocess.run([DSW_BIN or "false", "enqueue", run_id], env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("resume", [False, True])
def test_launcher_envelope_equals_enqueue(dagster_db: str, sqs_endpoint: str, workdir: Path,
                                          resume: bool) -> None:
    from dagster._core.launcher import LaunchRunContext, ResumeRunContext

    from dagster_setup import create_run, instance_at, write_home, workspace

    queue = new_queue(sqs_endpoint)
    inst = instance_at(write_home(workdir / "home", dagster_db,
                                  {"queue_url": queue, "endpoint_url": sqs_endpoint,
                                   "region": REGION}))
    with workspace(inst) as ws:
        run = create_run(inst, ws)
    r = enqueue(dagster_db, sqs_endpoint, queue, run.run_id)
    assert r.returncode == 0, r.stderr
    m = re.search(r"as message (\S+)", r.stdout)
    assert m, r.stdout
    enqueue_mid = m.group(1)
    run = inst.get_run_by_id(run.run_id)
    assert run.status.value == "STARTING"  # enqueue moved it as Dagster's launch_run does
    launcher = inst.run_launcher
    if resume:
        launcher.resume_run(ResumeRunContext(dagster_run=run, workspace=None))
    else:
        launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))
    tag = "dagster-sqs-worker/resume_message_id" if resume else "dagster-sqs-worker/message_id"
    launcher_mid = inst.get_run_by_id(run.run_id).tags[tag]

    msgs = {m["MessageId"]: m["Body"] for m in receive_all(sqs_endpoint, queue, 2)}
    assert set(msgs) == {enqueue_mid, launcher_mid}
    ours, theirs = json.loads(msgs[launcher_mid]), json.loads(msgs[enqueue_mid])
    assert re.fullmatch(r"[0-9a-f]{32}", ours["task_id"])
    assert re.fullmatch(r"[0-9a-f]{32}", theirs["task_id"])
    assert ours["task_id"] != theirs["task_id"]
    del ours["task_id"], theirs["task_id"]
    if resume:
        # enqueue only sends execute_job; the resume form differs in exactly the two names.
        assert ours["task_name"] == "resume_job"
        packed = ours["kwargs"].pop("resume_job_args_packed")
        assert packed.pop("__class__") == "ResumeRunArgs"
        packed["__class__"] = "ExecuteRunArgs"
        ours["kwargs"]["execute_job_args_packed"] = packed
        ours["task_name"] = "execute_job"
    assert ours == theirs
    # The byte layout is json.dumps' (key order and spacing) like dagster-taskiq's.
    body = msgs[launcher_mid]
    assert body.startswith('{"task_id": "') and '"labels": {}, "labels_types": null, "args": []' in body
    args = ours["kwargs"]["execute_job_args_packed"]
    assert args["pipeline_run_id"] == run.run_id and args["instance_ref"] is None
    assert args["set_exit_code_on_failure"] is True
    raw = json.loads(body)["kwargs"]
    (raw_args,) = raw.values()
    assert list(raw_args) == sorted(raw_args)  # Dagster's serdes sorts keys


def test_daemon_decoder_accepts_the_launcher_envelope(dagster_db: str, workdir: Path) -> None:
    """`dagster-sqs-worker exec -` decodes the body; for a run that is already finished it
    deletes nothing and starts nothing, so the verdict is the decoder's."""
    from dagster._core.storage.dagster_run import DagsterRunStatus

    from dagster_setup import create_run, instance_at, write_home, workspace
    from dagster_sqs_worker.envelope import run_envelope

    inst = instance_at(write_home(workdir / "home", dagster_db, None))
    with workspace(inst) as ws:
        run = create_run(inst, ws)
    inst.report_run_canceled(run)
    for resume in (False, True):
        body = run_envelope(inst.get_run_by_id(run.run_id), resume=resume)
        env = dict(os.environ, DSW_POSTGRES_CONNINFO=pg_conninfo(dagster_db),
                   DSW_QUEUE_URL="http://127.0.0.1:1/000000000000/unused",
                   DSW_RUNS_DAGSTER_HOME=str(workdir / "home"), DSW_LOG_FORMAT="json")
        r = subprocess.run([DSW_BIN or "false", "exec", "-"], input=body, env=env,
                           capture_output=True, text=True, timeout=60)
        assert "rejected" not in r.stderr, r.stderr
        kind = "resume" if resume else "execute"
        assert f"{kind} request (taskiq form)" in r.stderr, r.stderr
        assert "delete_terminal" in r.stderr, r.stderr
    assert inst.get_run_by_id(run.run_id).status == DagsterRunStatus.CANCELED
