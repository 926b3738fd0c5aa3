"""A Dagster RunLauncher for the real-Dagster layer: launch_run puts the run on an SQS queue the
way the launchers this daemon serves do (dagster-taskiq's TaskIQ envelope, its legacy forms,
bare ExecuteRunArgs, dagster-celery's Celery message), terminate asks for cancellation the way
SPEC §11's SqsRunLauncher does (report_run_canceling), resume_run sends resume_job.

The form is the run tag `dsw/harness_form`, the queue the tag `dsw/harness_queue` (else the
configured queue_url):
  taskiq         {"task_name": "execute_job", "kwargs": {"execute_job_args_packed": {...}}}
  taskiq_string  the same with the packed args as a JSON string (serialize_value form)
  legacy         {"task_name": "dagster_execute_job", "args": [{...}]}
  legacy_path    {"task_name": "dagster_taskiq.simple_tasks:execute_job", "args": [{...}]}
  bare           the ExecuteRunArgs object itself
  celery         dagster-celery: CeleryRunLauncher.launch_run where the tree has it (1.7+),
                 else Celery's send_task("execute_job", kwargs=...) as dagster-celery does
  celery_plain   the same with kombu's sqs_base64_encoding off (the envelope as plain JSON)
  celery_gzip    the same with Celery's task_compression = gzip (a zlib stream)
Messages go to SQS with boto3 (Debian's python3-boto3); Celery's go through kombu's SQS
transport, so the server must speak the Query protocol (moto).
"""
import json
import threading
import uuid
from urllib.parse import urlsplit

from dagster import Field, StringSource
from dagster import _check as check
from dagster._core.launcher import RunLauncher
from dagster._grpc.types import ExecuteRunArgs, ResumeRunArgs
from dagster._serdes import ConfigurableClass, pack_value, serialize_value

FORM_TAG = "dsw/harness_form"
QUEUE_TAG = "dsw/harness_queue"  # overrides the configured queue_url
KEY = SECRET = "testing"
REGION = "us-east-1"


_CLIENT_LOCK = threading.Lock()


def _sqs(endpoint):
    """A client from a session of its own, made under a lock: boto3's default session is not
    thread-safe (concurrent boto3.client() calls fail with KeyError 'endpoint_resolver'), and
    the harness launches runs from several threads at once."""
    import boto3

    with _CLIENT_LOCK:
        return boto3.session.Session().client(
            "sqs", endpoint_url=endpoint, region_name=REGION, aws_access_key_id=KEY,
            aws_secret_access_key=SECRET)


def envelope(form, packed, resume=False):
    """The message body of one form for packed ExecuteRunArgs/ResumeRunArgs (a dict)."""
    task = "resume_job" if resume else "execute_job"
    tid = uuid.uuid4().hex
    if form == "taskiq":
        return json.dumps({"task_id": tid, "task_name": task, "labels": {}, "labels_types": None,
                           "args": [], "kwargs": {task + "_args_packed": packed}})
    if form == "taskiq_string":
        return json.dumps({"task_id": tid, "task_name": task, "labels": {}, "labels_types": None,
                           "args": [], "kwargs": {task + "_args_packed": json.dumps(packed)}})
    if form in ("legacy", "legacy_path"):
        name = "dagster_execute_job" if form == "legacy" else \
            "dagster_taskiq.simple_tasks:execute_job"
        return json.dumps({"task_id": tid, "task_name": name, "labels": {}, "labels_types": {},
                           "args": [packed], "kwargs": {}})
    if form == "bare":
        return json.dumps(packed)
    raise ValueError("unknown form " + form)


class HarnessRunLauncher(RunLauncher, ConfigurableClass):
    def __init__(self, queue_url, endpoint_url, inst_data=None):
        self._inst_data = inst_data
        self.queue_url = queue_url
        self.endpoint_url = endpoint_url
        super().__init__()

    @property
    def inst_data(self):
        return self._inst_data

    @classmethod
    def config_type(cls):
        return {"queue_url": Field(StringSource), "endpoint_url": Field(StringSource)}

    @classmethod
    def from_config_value(cls, inst_data, config_value):
        return cls(inst_data=inst_data, **config_value)

    def _args(self, run, cls):
        return cls(job_origin=check.not_none(run.job_code_origin), run_id=run.run_id,
                   instance_ref=self._instance.get_ref(), set_exit_code_on_failure=True)

    def launch_run(self, context):
        run = context.dagster_run
        form = run.tags.get(FORM_TAG, "taskiq")
        args = self._args(run, ExecuteRunArgs)
        if form.startswith("celery"):
            self._celery(run, args, context, form)
            return
        body = envelope(form, json.loads(serialize_value(args)))
        mid = _sqs(self.endpoint_url).send_message(QueueUrl=self._queue(run),
                                                   MessageBody=body)["MessageId"]
        self._instance.add_run_tags(run.run_id, {"dsw/harness_message_id": mid})

    def _queue(self, run):
        return run.tags.get(QUEUE_TAG, self.queue_url)

    def _celery(self, run, args, context, form):
        url = self._queue(run)
        name = url.rstrip("/").rsplit("/", 1)[1]
        ep = urlsplit(self.endpoint_url)
        broker = "sqs://%s:%s@%s:%d" % (KEY, SECRET, ep.hostname, ep.port)
        transport = {"is_secure": False, "region": REGION,
                     "predefined_queues": {name: {"url": url}},
                     "sqs_base64_encoding": form != "celery_plain"}
        # celery_gzip: Celery's compression (kombu's zlib stream, headers.compression
        # application/x-gzip), as a deployment with compression turned on sends it.
        compression = "gzip" if form == "celery_gzip" else None
        try:
            from dagster_celery.launcher import CeleryRunLauncher
        except ImportError:
            CeleryRunLauncher = None
        if CeleryRunLauncher is not None:
            # The real launcher, its queue named by the dagster-celery/queue tag.
            source = {"broker_transport_options": transport}
            if compression:
                # Celery 5.2 compresses task messages by result_compression (task_compression
                # is read for nothing there); later Celery by task_compression: set both.
                source["task_compression"] = source["result_compression"] = compression
            launcher = CeleryRunLauncher(default_queue=name, broker=broker, config_source=source)
            launcher.register_instance(self._instance)
            self._instance.add_run_tags(run.run_id, {"dagster-celery/queue": name})
            launcher.launch_run(context._replace(dagster_run=self._instance.get_run_by_id(
                run.run_id)))
            return
        # dagster-celery before CeleryRunLauncher: Celery's own task sending, the same task
        # name and kwarg the later launcher uses.
        from celery import Celery

        app = Celery("dagster", broker=broker)
        app.conf.broker_transport_options = transport
        res = app.send_task("execute_job", kwargs={"execute_job_args_packed": pack_value(args)},
                            queue=name, routing_key=name + ".execute_job",
                            compression=compression)
        self._instance.add_run_tags(run.run_id, {"dagster-celery/task_id": res.task_id})

    def terminate(self, run_id):
        run = self._instance.get_run_by_id(run_id)
        if run is None:
            return False
        self._instance.report_run_canceling(run)
        return True

    @property
    def supports_resume_run(self):
        return True

    def resume_run(self, context):
        run = context.dagster_run
        body = envelope(run.tags.get(FORM_TAG, "taskiq"),
                        json.loads(serialize_value(self._args(run, ResumeRunArgs))), resume=True)
        _sqs(self.endpoint_url).send_message(QueueUrl=self._queue(run), MessageBody=body)
