"""The peer: a Celery 5 worker shaped like dagster-celery's run task, on kombu's SQS transport.

Run with Debian's /usr/bin/python3 (python3-celery 5.2, python3-kombu 5.2, python3-boto3,
python3-pycurl, python3-psycopg2):
    BENCH_BROKER=sqs://KEY:SECRET@127.0.0.1:PORT BENCH_QUEUE=NAME BENCH_QUEUE_URL=URL \
    BENCH_PG=CONNINFO BENCH_CHILD=/path/fake_dagster BENCH_EVENTS=FILE \
    python3 -m celery -A celery_peer worker -P prefork -c S --without-gossip --without-mingle
The task `execute_job(execute_job_args_packed)` checks the run's status in Postgres, runs the child
(`<child> api execute_run <json>`) with subprocess and returns its exit code. acks_late, prefetch 1,
no result backend. BENCH_EVENTS gets "received <t>" (the worker's task_received signal, main
process) and "deleted <t>" (after kombu's DeleteMessage returned, main process) lines, so the run
rate is measured from first receive to last delete, as for the daemon.
"""
import json
import os
import subprocess
import threading
import time

import psycopg2
from celery import Celery
from celery.signals import task_received
from kombu.transport import SQS

app = Celery("celery_peer", broker=os.environ.get("BENCH_BROKER", "sqs://x:y@127.0.0.1:1"))
app.conf.update(
    broker_transport_options={
        "is_secure": False,
        "region": "us-east-1",
        "predefined_queues": {
            os.environ.get("BENCH_QUEUE", "runs"): {"url": os.environ.get("BENCH_QUEUE_URL", "")}
        },
    },
    task_default_queue=os.environ.get("BENCH_QUEUE", "runs"),
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    result_backend=None,
    worker_send_task_events=False,
    broker_connection_retry_on_startup=True,
)

_events_lock = threading.Lock()


def _event(kind):
    path = os.environ.get("BENCH_EVENTS")
    if not path:
        return
    line = "%s %.6f\n" % (kind, time.time())
    with _events_lock:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)


@task_received.connect
def _on_received(sender=None, request=None, **kw):
    _event("received")


_orig_ack = SQS.Channel.basic_ack


def _basic_ack(self, delivery_tag, multiple=False):
    _orig_ack(self, delivery_tag, multiple)
    _event("deleted")


SQS.Channel.basic_ack = _basic_ack

_pg = None


def _status(run_id):
    global _pg
    if _pg is None or _pg.closed:
        _pg = psycopg2.connect(os.environ["BENCH_PG"])
        _pg.autocommit = True
    with _pg.cursor() as cur:
        cur.execute("SELECT status FROM runs WHERE run_id = %s", (run_id,))
        row = cur.fetchone()
    return row[0] if row else None


@app.task(name="execute_job", bind=True)
def execute_job(self, execute_job_args_packed):
    args = execute_job_args_packed
    if isinstance(args, str):
        args = json.loads(args)
    run_id = args["pipeline_run_id"]
    status = _status(run_id)
    if status not in ("NOT_STARTED", "STARTING"):
        return 0
    cmd = [os.environ["BENCH_CHILD"], "api", "execute_run", json.dumps(args)]
    return subprocess.run(cmd, stdin=subprocess.DEVNULL).returncode
