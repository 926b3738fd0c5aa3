"""Bad configuration gives a clear Dagster error: no queue URL, an endpoint nobody answers, a
queue that does not exist, bad credentials (a moto that verifies SigV4), storage that is not
PostgreSQL. A failed send fails the launch: never a silent loss."""

from __future__ import annotations

import socket
import subprocess
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator

import pytest

from conftest import REGION, REPO, new_queue

pytestmark = pytest.mark.dagster


def _home(workdir: Path, db: str, cfg: Any) -> Any:
    from dagster_setup import instance_at, write_home

    return instance_at(write_home(workdir / ("home-" + uuid.uuid4().hex[:6]), db, cfg))


def _launch_fails(inst: Any, match: str) -> Any:
    from dagster_setup import create_run, workspace

    with workspace(inst) as ws:
        run = create_run(inst, ws)
        with pytest.raises(Exception, match=match) as ei:
            inst.launch_run(run.run_id, ws)
    after = inst.get_run_by_id(run.run_id)
    assert after.status.value == "FAILURE", after.status  # Dagster failed the launch
    assert "dagster-sqs-worker/message_id" not in after.tags
    return ei.value


def test_no_queue_url(dagster_db: str, workdir: Path) -> None:
    from dagster._core.errors import DagsterInvalidConfigError

    with pytest.raises(DagsterInvalidConfigError, match='Missing required config entry "queue_url"'):
        inst = _home(workdir, dagster_db, {"endpoint_url": "http://127.0.0.1:1"})
        inst.run_launcher  # noqa: B018 - built here when run monitoring did not build it


def test_queue_url_from_env_source(dagster_db: str, workdir: Path, sqs_endpoint: str,
                                   monkeypatch: Any) -> None:
    """queue_url: {env: VAR} resolves like any StringSource."""
    q = new_queue(sqs_endpoint)
    monkeypatch.setenv("DSW_PY_TEST_QUEUE", q)
    inst = _home(workdir, dagster_db, {"queue_url": {"env": "DSW_PY_TEST_QUEUE"},
                                       "endpoint_url": sqs_endpoint, "region": REGION})
    assert inst.run_launcher.queue_url == q


def test_unreachable_endpoint_fails_the_launch(dagster_db: str, workdir: Path) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nobody listens there now
    url = f"http://127.0.0.1:{port}"
    inst = _home(workdir, dagster_db, {"queue_url": url + "/000000000000/q", "endpoint_url": url,
                                       "region": REGION})
    e = _launch_fails(inst, "could not send run")
    assert "EndpointConnectionError" in str(e) or "Connect" in str(e), e


def test_missing_queue_fails_the_launch(dagster_db: str, workdir: Path, sqs_endpoint: str) -> None:
    q = new_queue(sqs_endpoint).rsplit("/", 1)[0] + "/no-such-queue-" + uuid.uuid4().hex[:6]
    inst = _home(workdir, dagster_db, {"queue_url": q, "endpoint_url": sqs_endpoint,
                                       "region": REGION})
    _launch_fails(inst, "NonExistentQueue|QueueDoesNotExist")


@pytest.fixture
def moto_auth(workdir: Path) -> Iterator[Dict[str, str]]:
    """A moto that verifies SigV4 (tests/support/moto_auth.sh), with one valid key."""
    d = workdir / "moto-auth"
    script = str(REPO / "tests" / "support" / "moto_auth.sh")
    r = subprocess.run(["bash", script, "start", str(d)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"moto_auth.sh: {r.stderr}")
    env = dict(line.split("=", 1) for line in (d / "env").read_text().splitlines() if "=" in line)
    yield env
    subprocess.run(["bash", script, "stop", str(d)], capture_output=True)


def test_bad_credentials_fail_the_launch(dagster_db: str, workdir: Path, moto_auth: Dict[str, str],
                                         monkeypatch: Any) -> None:
    import boto3

    url = moto_auth["URL"]
    good = boto3.session.Session(aws_access_key_id=moto_auth["KEY"],
                                 aws_secret_access_key=moto_auth["SECRET"])
    q = good.client("sqs", endpoint_url=url, region_name="us-east-1").create_queue(
        QueueName="auth-" + uuid.uuid4().hex[:8])["QueueUrl"]
    cfg = {"queue_url": q, "endpoint_url": url, "region": "us-east-1"}

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIANOTAREALKEY00000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    _launch_fails(_home(workdir, dagster_db, cfg), "InvalidClientTokenId|SignatureDoesNotMatch|"
                  "UnrecognizedClient|security token")

    # The same launcher with the real key (boto3's credential chain: the environment) sends.
    from dagster_setup import create_run, workspace

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto_auth["KEY"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", moto_auth["SECRET"])
    inst = _home(workdir, dagster_db, cfg)
    with workspace(inst) as ws:
        run = create_run(inst, ws)
        inst.launch_run(run.run_id, ws)
    assert inst.get_run_by_id(run.run_id).tags["dagster-sqs-worker/message_id"]


def test_health_on_non_postgres_storage_is_a_clear_error(workdir: Path) -> None:
    from dagster._core.instance import DagsterInstance, InstanceRef
    from dagster._core.storage.dagster_run import DagsterRun

    from dagster_sqs_worker import run_claims

    home = workdir / "sqlite-home"
    home.mkdir()
    (home / "dagster.yaml").write_text(
        "run_launcher:\n  module: dagster_sqs_worker\n  class: SqsRunLauncher\n"
        "  config: {queue_url: 'http://127.0.0.1:1/000000000000/q'}\n"
        "telemetry: {enabled: false}\n")
    inst = DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))
    with pytest.raises(run_claims.ClaimsUnavailable, match="dagster-postgres"):
        inst.run_launcher.check_run_worker_health(DagsterRun(job_name="j", run_id=str(uuid.uuid4())))
