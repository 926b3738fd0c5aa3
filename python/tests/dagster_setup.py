"""A real Dagster instance on the test PostgreSQL with SqsRunLauncher in its dagster.yaml,
and the in-process workspace the runs are created from (tests/jobs.py)."""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

import yaml

from conftest import HERE, pg_url, psql

REPO_NAME = "dsw_repo"


def write_home(home: Path, db: str, launcher_config: Optional[Dict[str, Any]],
               max_resume: int = 0) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    conf: Dict[str, Any] = {
        "storage": {"postgres": {"postgres_url": pg_url(db)}},
        "telemetry": {"enabled": False},
        "run_monitoring": {"enabled": True, "max_resume_run_attempts": max_resume},
    }
    if launcher_config is not None:
        conf["run_launcher"] = {
            "module": "dagster_sqs_worker",
            "class": "SqsRunLauncher",
            "config": launcher_config,
        }
    (home / "dagster.yaml").write_text(yaml.safe_dump(conf))
    return home


def instance_at(home: Path) -> Any:
    from dagster._core.instance import DagsterInstance, InstanceRef

    return DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))


@contextlib.contextmanager
def workspace(instance: Any) -> Iterator[Any]:
    from dagster._core.test_utils import in_process_test_workspace
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

    origin = LoadableTargetOrigin(
        executable_path=sys.executable,
        python_file=str(HERE / "jobs.py"),
        attribute=REPO_NAME,
        working_directory=str(HERE),
    )
    with in_process_test_workspace(instance, origin) as ws:
        yield ws


def create_run(instance: Any, ws: Any, run_config: Optional[Dict[str, Any]] = None,
               job_name: str = "gated") -> Any:
    """A NOT_STARTED run of job_name with the code origins a launcher needs."""
    import jobs

    location = next(iter(ws.get_workspace_snapshot().values())).code_location
    assert location is not None
    external_job = location.get_repository(REPO_NAME).get_full_external_job(job_name)
    return instance.create_run_for_job(
        job_def=getattr(jobs, job_name),
        run_config=run_config or {},
        external_job_origin=external_job.get_external_origin(),
        job_code_origin=external_job.get_python_origin(),
    )


def gate_config(gate: Path) -> Dict[str, Any]:
    return {"ops": {"gate": {"config": {"gate": str(gate)}}}}


def run_status(instance: Any, run_id: str) -> str:
    run = instance.get_run_by_id(run_id)
    return run.status.value if run else "MISSING"


def event_count(db: str, run_id: str, event_type: str) -> int:
    return int(psql(db, f"SELECT count(*) FROM event_logs WHERE run_id = '{run_id}'"
                        f" AND dagster_event_type = '{event_type}'"))


def claim_row(db: str, run_id: str) -> Optional[Dict[str, str]]:
    out = psql(db, "SELECT state, coalesce(child_pid, 0), worker_id, coalesce(exit_code, -1),"
                   " coalesce(outcome, ''), kind, attempt FROM dagster_sqs_worker.run_claims"
                   f" WHERE run_id = '{run_id}'")
    if not out:
        return None
    s, pid, w, x, o, k, a = out.split("|")
    return {"state": s, "child_pid": pid, "worker_id": w, "exit_code": x, "outcome": o,
            "kind": k, "attempt": a}


def monitor_started_run(instance: Any, ws: Any, run_id: str) -> None:
    """One pass of Dagster's own run-monitoring function over one STARTED run."""
    try:
        from dagster._daemon.monitoring.run_monitoring import monitor_started_run as mon
    except ImportError:  # 1.3
        from dagster._daemon.monitoring.monitoring_daemon import monitor_started_run as mon
    record = instance.get_run_record_by_id(run_id)
    mon(instance, ws, record, logging.getLogger("dsw-test-monitor"))
