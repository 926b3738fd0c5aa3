"""Fixtures on real parts: PostgreSQL, moto and fauxqs from scripts/services.sh (their endpoints
in DSW_TEST_* variables), the dagster-sqs-worker binary (DSW_BIN, else build/ of the repository)
and the Dagster importable in this interpreter (a tree from ../shared/dagster via its env.sh,
or an installed one).

Tests that need a part which is missing are skipped, and the summary says so loudly: a skipped
test did not pass. scripts/test.sh fails the stage under CI=true when Dagster was not found.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE.parent))  # the package from the source tree

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
REGION = os.environ.get("AWS_REGION") or os.environ["AWS_DEFAULT_REGION"]

try:
    import dagster  # noqa: F401

    HAVE_DAGSTER = True
    DAGSTER_VERSION = getattr(dagster, "__version__", "?")
except Exception:  # noqa: BLE001 - any import failure means no usable Dagster
    HAVE_DAGSTER = False
    DAGSTER_VERSION = None

try:
    import sqlalchemy  # noqa: F401
    import psycopg2  # noqa: F401

    HAVE_SQL = True
except Exception:  # noqa: BLE001
    HAVE_SQL = False


def _daemon_bin() -> Optional[str]:
    b = os.environ.get("DSW_BIN") or str(REPO / "build" / "dagster-sqs-worker")
    return b if os.access(b, os.X_OK) else None


DSW_BIN = _daemon_bin()
PG_PORT = os.environ.get("DSW_TEST_PG_PORT")
SQS_SERVERS = {
    k: v
    for k, v in (
        ("moto", os.environ.get("DSW_TEST_MOTO_URL")),
        ("fauxqs", os.environ.get("DSW_TEST_FAUXQS_URL")),
    )
    if v
}

_skipped: List[str] = []


def pytest_configure(config: Any) -> None:
    config.addinivalue_line("markers", "dagster: needs an importable Dagster")
    config.addinivalue_line("markers", "daemon: needs the dagster-sqs-worker binary")


def pytest_collection_modifyitems(config: Any, items: List[Any]) -> None:
    for item in items:
        why = []
        if item.get_closest_marker("dagster") and not HAVE_DAGSTER:
            why.append("no importable Dagster")
        if item.get_closest_marker("daemon") and not DSW_BIN:
            why.append("no dagster-sqs-worker binary (set DSW_BIN)")
        if not PG_PORT:
            why.append("no PostgreSQL (DSW_TEST_PG_PORT; start scripts/services.sh)")
        if not HAVE_SQL:
            why.append("no sqlalchemy/psycopg2")
        if why:
            item.add_marker(pytest.mark.skip(reason="; ".join(why)))
            _skipped.append(item.nodeid)
    if _skipped and os.environ.get("DSW_PY_REQUIRE_ALL"):
        raise pytest.UsageError(
            f"{len(_skipped)} tests would be skipped for missing parts and DSW_PY_REQUIRE_ALL "
            f"(CI=true) is set: {_skipped[0]}: see the header for what is missing"
        )


def pytest_report_header(config: Any) -> str:
    return (
        f"dagster: {DAGSTER_VERSION or 'NOT FOUND'} ({os.environ.get('DSW_DAGSTER_TREE', '')}); "
        f"daemon: {DSW_BIN or 'NOT FOUND'}; postgres port: {PG_PORT or 'NOT FOUND'}; "
        f"sqs: {', '.join(SQS_SERVERS) or 'NOT FOUND'} (botocore sqs protocol "
        f"{_botocore_sqs_protocol()}: launcher tests on {', '.join(sorted(LAUNCHER_SQS)) or 'none'})"
    )


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _skipped:
        tr = terminalreporter
        tr.write_sep("!", f"{len(_skipped)} TESTS DID NOT RUN (skipped: they did not pass)", red=True)
        if not HAVE_DAGSTER:
            tr.write_line("Dagster is not importable: eval \"$(bash ../shared/dagster/env.sh 1.3)\"")


# ---- PostgreSQL ------------------------------------------------------------------------------


def pg_url(db: str) -> str:
    return f"postgresql://postgres@127.0.0.1:{PG_PORT}/{db}"


def pg_conninfo(db: str) -> str:
    return f"host=127.0.0.1 port={PG_PORT} user=postgres dbname={db}"


def psql(db: str, sql: str) -> str:
    out = subprocess.run(
        ["psql", pg_conninfo(db), "-qAtX", "-v", "ON_ERROR_STOP=1", "-c", sql],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def fresh_db(prefix: str) -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    psql("postgres", f"CREATE DATABASE {name}")
    return name


def db_init(db: str) -> None:
    env = dict(os.environ, DSW_POSTGRES_CONNINFO=pg_conninfo(db))
    r = subprocess.run([DSW_BIN or "false", "db-init"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


# ---- SQS -------------------------------------------------------------------------------------


def sqs_client(endpoint: str) -> Any:
    import boto3

    return boto3.session.Session().client("sqs", endpoint_url=endpoint, region_name=REGION)


def new_queue(endpoint: str) -> str:
    return str(sqs_client(endpoint).create_queue(QueueName="py-" + uuid.uuid4().hex[:12])["QueueUrl"])


def receive_all(endpoint: str, queue_url: str, want: int, timeout: float = 20) -> List[Dict[str, Any]]:
    """Receive until ``want`` messages arrived (each made invisible for 60 s), or fail."""
    c = sqs_client(endpoint)
    got: List[Dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(got) < want:
        assert time.monotonic() < deadline, f"only {len(got)} of {want} messages arrived"
        r = c.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1, VisibilityTimeout=60
        )
        got.extend(r.get("Messages", []))
    return got


# ---- waiting ---------------------------------------------------------------------------------


def wait_until(pred: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    """Poll a condition (never a bare sleep as synchronisation); fail with ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


# ---- the daemon ------------------------------------------------------------------------------


class Daemon:
    """The real dagster-sqs-worker, configured by DSW_* variables, logging to a file."""

    def __init__(self, workdir: Path, env: Dict[str, str]):
        self.log_path = workdir / f"daemon-{uuid.uuid4().hex[:6]}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [DSW_BIN or "false", "run"], env=env, stdout=self._log, stderr=subprocess.STDOUT
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return int(self.proc.returncode)


def daemon_env(
    db: str, endpoint: str, queue_url: str, dagster_home: str, **overrides: str
) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSW_") or k.startswith("DSW_TEST")}
    dagster_cmd = shutil.which("dagster") or ""
    env.update(
        DSW_QUEUE_URL=queue_url,
        DSW_QUEUE_ENDPOINT=endpoint,
        DSW_QUEUE_REGION=REGION,
        DSW_QUEUE_WAIT_TIME="1s",
        DSW_QUEUE_VISIBILITY_TIMEOUT="10s",
        DSW_QUEUE_HEARTBEAT="2s",
        DSW_POSTGRES_CONNINFO=pg_conninfo(db),
        DSW_CLAIMS_TTL="3s",
        DSW_CLAIMS_HEARTBEAT="500ms",
        DSW_CLAIMS_SWEEP="1s",
        DSW_RUNS_DAGSTER_HOME=dagster_home,
        DSW_RUNS_COMMAND=dagster_cmd,
        DSW_RUNS_CANCEL_POLL="300ms",
        DSW_RUNS_KILL_GRACE="10s",
        DSW_RUNS_MAX_CONCURRENT="2",
        DSW_RUNS_REQUEUE_DELAY="1s",
        DSW_HTTP_LISTEN="off",
        DSW_LOG_LEVEL="info",
    )
    env.update(overrides)
    return env


@pytest.fixture
def workdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="dsw-py-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def daemons() -> Iterator[List[Daemon]]:
    """Daemons a test starts; each is stopped (and its log shown on failure) at the end."""
    started: List[Daemon] = []
    yield started
    keep = os.environ.get("DSW_PY_LOGS")  # a directory to keep every daemon log in
    for d in started:
        d.stop()
        sys.stderr.write(f"---- {d.log_path}\n{d.log()[-6000:]}\n")
        if keep:
            os.makedirs(keep, exist_ok=True)
            shutil.copy(d.log_path, os.path.join(keep, d.log_path.name))


@pytest.fixture(scope="session")
def dagster_db() -> Iterator[str]:
    """A fresh database with the installed Dagster's tables (created by Dagster itself) and the
    daemon's claims schema (created by db-init)."""
    from dagster_setup import instance_at, write_home

    db = fresh_db("dsw_py_dagster")
    home = Path(tempfile.mkdtemp(prefix="dsw-py-home-"))
    inst = instance_at(write_home(home, db, None))
    inst.dispose()
    shutil.rmtree(home, ignore_errors=True)
    db_init(db)
    yield db
    if not os.environ.get("DSW_PY_KEEP_DB"):
        psql("postgres", f"DROP DATABASE {db} WITH (FORCE)")


def _botocore_sqs_protocol() -> str:
    try:
        import botocore.session

        return str(botocore.session.get_session().get_service_model("sqs").protocol)
    except Exception:  # noqa: BLE001
        return "?"


# fauxqs speaks only SQS's JSON protocol; botocore < 1.34 (Debian 12's) only the Query one.
BOTO_SQS_PROTOCOL = _botocore_sqs_protocol()
LAUNCHER_SQS = {
    k: v for k, v in SQS_SERVERS.items() if k != "fauxqs" or BOTO_SQS_PROTOCOL == "json"
}


@pytest.fixture(params=sorted(LAUNCHER_SQS) or ["none"])
def sqs_endpoint(request: Any) -> str:
    """Each SQS server boto3 can talk to (moto; fauxqs too with a JSON-protocol botocore)."""
    if request.param == "none":
        pytest.skip("no SQS server boto3 can use (DSW_TEST_MOTO_URL)")
    return LAUNCHER_SQS[request.param]
