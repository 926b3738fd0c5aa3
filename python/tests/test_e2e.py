"""End to end: real Dagster with SqsRunLauncher in dagster.yaml, the real daemon executing real
`dagster api execute_run` children, real PostgreSQL and moto.

The daemon runs with claims.ttl = 3 s (and the launcher's claim_ttl_seconds = 3) so a dead
worker's lease goes stale quickly; every wait polls a condition with a deadline.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest

from conftest import (
    REGION,
    Daemon,
    daemon_env,
    new_queue,
    wait_until,
)

pytestmark = [pytest.mark.dagster, pytest.mark.daemon]

TTL = 3.0


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


class Setup:
    def __init__(self, db: str, endpoint: str, workdir: Path, max_resume: int = 0,
                 grace: float = 180.0):
        from dagster_setup import instance_at, write_home

        self.db, self.endpoint, self.workdir = db, endpoint, workdir
        self.queue = new_queue(endpoint)
        self.home = write_home(
            workdir / "home", db,
            {"queue_url": self.queue, "endpoint_url": endpoint, "region": REGION,
             "claim_ttl_seconds": TTL, "no_claim_grace_seconds": grace},
            max_resume=max_resume)
        self.instance = instance_at(self.home)

    def daemon(self, daemons: List[Daemon], **overrides: str) -> Daemon:
        d = Daemon(self.workdir, daemon_env(self.db, self.endpoint, self.queue, str(self.home),
                                            **overrides))
        daemons.append(d)
        return d

    def status(self, run_id: str) -> str:
        from dagster_setup import run_status

        return run_status(self.instance, run_id)

    def wait_status(self, run_id: str, want: str, timeout: float = 90) -> None:
        try:
            wait_until(lambda: self.status(run_id) == want, timeout, f"run {run_id} {want}")
        except AssertionError as e:
            raise AssertionError(f"{e}; it is {self.status(run_id)}") from None

    def claim(self, run_id: str) -> Any:
        from dagster_setup import claim_row

        return claim_row(self.db, run_id)

    def wait_running_child(self, run_id: str, timeout: float = 90) -> Dict[str, str]:
        def ready() -> Any:
            c = self.claim(run_id)
            return c if c and c["state"] == "running" and self.status(run_id) == "STARTED" \
                else None
        return wait_until(ready, timeout, f"run {run_id} STARTED under a running claim")

    def health(self, run: Any) -> Any:
        return self.instance.run_launcher.check_run_worker_health(run)


@pytest.fixture
def setup(dagster_db: str, sqs_endpoint: str, workdir: Path) -> Setup:
    return Setup(dagster_db, sqs_endpoint, workdir)


def launch(s: Setup, run_config: Dict[str, Any], job_name: str = "gated") -> Any:
    from dagster_setup import create_run, workspace

    with workspace(s.instance) as ws:
        run = create_run(s.instance, ws, run_config, job_name)
        s.instance.launch_run(run.run_id, ws)
    return s.instance.get_run_by_id(run.run_id)


def test_launch_executes_to_success_with_health(setup: Setup, daemons: List[Daemon],
                                                workdir: Path) -> None:
    from dagster._core.launcher import WorkerStatus

    from dagster_setup import event_count, gate_config

    s = setup
    d = s.daemon(daemons)
    gate = workdir / "gate"
    run = launch(s, gate_config(gate))
    assert run.tags.get("dagster-sqs-worker/message_id")
    logs = s.instance.all_logs(run.run_id)
    assert any("Sent run to dagster-sqs-worker" in (e.message or "") for e in logs)

    claim = s.wait_running_child(run.run_id)
    h = s.health(run)
    assert h.status == WorkerStatus.RUNNING, h
    assert f":{d.pid}:" in claim["worker_id"]
    if "run_worker_id" in type(h)._fields:
        assert h.run_worker_id == claim["worker_id"]
    assert str(d.pid) in s.instance.run_launcher.get_run_worker_debug_info(run)

    gate.touch()
    s.wait_status(run.run_id, "SUCCESS")
    wait_until(lambda: (s.claim(run.run_id) or {}).get("state") == "done", 30, "claim done")
    h = s.health(s.instance.get_run_by_id(run.run_id))
    assert h.status == WorkerStatus.SUCCESS, h
    assert event_count(s.db, run.run_id, "PIPELINE_SUCCESS") == 1
    assert event_count(s.db, run.run_id, "PIPELINE_FAILURE") == 0


# Both executors: the daemon's SIGTERM goes to the run worker alone (as a container stop does),
# which interrupts its steps itself and records CANCELED; with the multiprocess executor a
# SIGTERM to the whole group used to kill the steps under it and end the run FAILURE.
@pytest.mark.parametrize("job_name", ["gated_in_process", "gated"])
def test_terminate_while_running_cancels(setup: Setup, daemons: List[Daemon],
                                         workdir: Path, job_name: str) -> None:
    from dagster_setup import gate_config

    s = setup
    s.daemon(daemons)
    run = launch(s, gate_config(workdir / "never"), job_name)
    claim = s.wait_running_child(run.run_id)
    child = int(claim["child_pid"])
    assert pid_alive(child)
    t0 = time.monotonic()
    assert s.instance.run_launcher.terminate(run.run_id) is True
    wait_until(lambda: s.status(run.run_id) in ("CANCELED", "FAILURE", "SUCCESS"), 60,
               "the run to finish")
    assert s.status(run.run_id) == "CANCELED"
    wait_until(lambda: not pid_alive(child), 30, f"run worker {child} gone")
    print(f"terminate -> CANCELED and child gone in {time.monotonic() - t0:.1f} s")
    assert s.instance.run_launcher.terminate(run.run_id) is False  # already finished


def test_terminate_before_receipt_cancels_without_starting(setup: Setup, daemons: List[Daemon],
                                                           workdir: Path) -> None:
    from dagster_setup import event_count, gate_config

    s = setup
    run = launch(s, gate_config(workdir / "never"))  # no daemon yet: the message waits
    assert s.status(run.run_id) == "STARTING"
    assert s.instance.run_launcher.terminate(run.run_id) is True
    assert s.status(run.run_id) == "CANCELING"
    s.daemon(daemons)
    s.wait_status(run.run_id, "CANCELED", 60)
    assert event_count(s.db, run.run_id, "PIPELINE_START") == 0  # never started
    c = s.claim(run.run_id)
    assert c is None or c["child_pid"] == "0"


def test_started_without_claim_grace_then_failed(dagster_db: str, sqs_endpoint: str,
                                                 workdir: Path) -> None:
    """A STARTED run nobody claimed (e.g. started by hand): RUNNING within the grace window,
    FAILED after it — and Dagster's monitoring then fails it."""
    from dagster._core.launcher import WorkerStatus

    from dagster_setup import create_run, monitor_started_run, workspace

    s = Setup(dagster_db, sqs_endpoint, workdir, grace=2.0)
    with workspace(s.instance) as ws:
        run = create_run(s.instance, ws)
        s.instance.report_dagster_event(_start_event(run), run.run_id)  # STARTED, no claim
        run = s.instance.get_run_by_id(run.run_id)
        assert run.status.value == "STARTED"
        h = s.health(run)
        assert h.status == WorkerStatus.RUNNING and "claimed" in h.msg, h
        monitor_started_run(s.instance, ws, run.run_id)
        assert s.status(run.run_id) == "STARTED"  # monitoring left it alone
        wait_until(lambda: s.health(run).status == WorkerStatus.FAILED, 30,
                   "no-claim grace to pass")
        monitor_started_run(s.instance, ws, run.run_id)
        assert s.status(run.run_id) == "FAILURE"


def _start_event(run: Any) -> Any:
    from dagster._core.events import DagsterEvent, DagsterEventType

    return DagsterEvent(event_type_value=DagsterEventType.PIPELINE_START.value,
                        job_name=run.job_name, message="started by hand")


def _kill_daemon_under_running_run(s: Setup, daemons: List[Daemon], gate: Path) -> Any:
    from dagster._core.launcher import WorkerStatus

    from dagster_setup import gate_config

    d = s.daemon(daemons)
    run = launch(s, gate_config(gate))
    claim = s.wait_running_child(run.run_id)
    child = int(claim["child_pid"])
    assert s.health(run).status == WorkerStatus.RUNNING
    d.kill9()
    t_kill = time.monotonic()
    wait_until(lambda: not pid_alive(child), 30, f"run worker {child} to die with its daemon")
    h = wait_until(lambda: (lambda r: r if r.status == WorkerStatus.FAILED else None)(
        s.health(run)), TTL + 30, "health FAILED after the lease went stale")
    t_failed = time.monotonic() - t_kill
    host = claim["worker_id"].split(":")[0]
    assert "stale" in h.msg and host in h.msg and f"pid {d.pid}" in h.msg, h.msg
    if "run_worker_id" in type(h)._fields:
        assert h.run_worker_id == claim["worker_id"]
    assert s.status(run.run_id) == "STARTED"
    return run, t_failed


def test_monitoring_resumes_a_run_whose_worker_died(dagster_db: str, sqs_endpoint: str,
                                                    workdir: Path, daemons: List[Daemon]) -> None:
    from dagster_setup import claim_row, event_count, monitor_started_run, workspace

    s = Setup(dagster_db, sqs_endpoint, workdir, max_resume=1)
    gate = workdir / "gate"
    t0 = time.monotonic()
    run, t_failed = _kill_daemon_under_running_run(s, daemons, gate)
    t1 = time.monotonic()
    with workspace(s.instance) as ws:
        monitor_started_run(s.instance, ws, run.run_id)
    run = s.instance.get_run_by_id(run.run_id)
    assert run.tags.get("dagster-sqs-worker/resume_message_id"), run.tags
    assert s.status(run.run_id) == "STARTED"
    gate.touch()
    # A restarted daemon; its sweeper waits long enough for the resume message to be taken.
    s.daemon(daemons, DSW_RUNS_RESUME="on", DSW_CLAIMS_SWEEP="60s")
    s.wait_status(run.run_id, "SUCCESS", 120)
    t2 = time.monotonic()
    c = claim_row(s.db, run.run_id)
    assert c and c["kind"] == "resume" and c["attempt"] == "2", c
    assert event_count(s.db, run.run_id, "PIPELINE_FAILURE") == 0
    print(f"\nresume timeline: launch+kill -> health FAILED {t_failed:.1f} s after kill -9; "
          f"monitoring -> resume_run sent at +{t1 - t0:.1f} s; restarted daemon -> SUCCESS "
          f"{t2 - t1:.1f} s later (total {t2 - t0:.1f} s)")


def test_monitoring_fails_a_run_whose_worker_died_once(dagster_db: str, sqs_endpoint: str,
                                                       workdir: Path,
                                                       daemons: List[Daemon]) -> None:
    from dagster_setup import event_count, monitor_started_run, workspace

    s = Setup(dagster_db, sqs_endpoint, workdir, max_resume=0)
    run, _ = _kill_daemon_under_running_run(s, daemons, workdir / "never")
    with workspace(s.instance) as ws:
        monitor_started_run(s.instance, ws, run.run_id)
    assert s.status(run.run_id) == "FAILURE"
    # A restarted daemon sweeps the stale claim and receives the message again: neither may
    # write a second failure.
    s.daemon(daemons)
    wait_until(lambda: (s.claim(run.run_id) or {}).get("state") == "done", 60,
               "the sweeper to close the stale claim")
    assert event_count(s.db, run.run_id, "PIPELINE_FAILURE") == 1
    assert s.status(run.run_id) == "FAILURE"


def test_dagster_job_launch_cli(setup: Setup, daemons: List[Daemon]) -> None:
    """`dagster job launch` with DAGSTER_HOME pointing at the instance uses SqsRunLauncher."""
    import shutil
    import subprocess
    import uuid

    from conftest import HERE

    s = setup
    s.daemon(daemons)
    run_id = str(uuid.uuid4())
    env = dict(os.environ, DAGSTER_HOME=str(s.home))
    r = subprocess.run(
        [shutil.which("dagster") or "dagster", "job", "launch", "-f", str(HERE / "jobs.py"),
         "-a", "dsw_repo", "-j", "gated_in_process", "--run-id", run_id],
        env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    run = s.instance.get_run_by_id(run_id)
    assert run is not None and run.tags.get("dagster-sqs-worker/message_id"), r.stderr[-3000:]
    s.wait_status(run_id, "SUCCESS", 120)


def test_monitoring_resumes_while_another_daemon_lives(dagster_db: str, sqs_endpoint: str,
                                                       workdir: Path,
                                                       daemons: List[Daemon]) -> None:
    """The fleet case: daemon B lives while A dies under a run. Dagster's monitoring (one pass
    right after the lease went stale, as a 120 s poll interval would catch it) must still be
    able to resume the run on B."""
    from dagster_setup import event_count, monitor_started_run, workspace

    s = Setup(dagster_db, sqs_endpoint, workdir, max_resume=1)
    gate = workdir / "gate"
    run, _ = _kill_daemon_under_running_run(s, daemons, gate)
    s.daemon(daemons, DSW_RUNS_RESUME="on")  # B: default-like ratio of sweep to ttl
    gate.touch()
    # Give B one sweep period (1 s here, 30 s by default) before monitoring looks.
    wait_until(lambda: (s.claim(run.run_id) or {}).get("worker_id", "").split(":")[1]
               != str(daemons[0].pid) or s.status(run.run_id) != "STARTED", 30,
               "daemon B to act on the stale claim")
    if s.status(run.run_id) == "STARTED":
        with workspace(s.instance) as ws:
            monitor_started_run(s.instance, ws, run.run_id)
    wait_until(lambda: s.status(run.run_id) in ("SUCCESS", "FAILURE", "CANCELED"), 120,
               "the run to finish")
    failures = [e.message for e in s.instance.all_logs(run.run_id)
                if e.dagster_event and e.dagster_event.event_type_value == "PIPELINE_FAILURE"]
    assert s.status(run.run_id) == "SUCCESS", failures
    assert event_count(s.db, run.run_id, "PIPELINE_FAILURE") == 0
