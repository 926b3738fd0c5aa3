#!/usr/bin/python3
"""Publish one dagster-celery task to an SQS server (moto) through kombu's SQS transport, then
receive it raw with boto3 and write the body exactly as SQS delivers it to --out.

Run with Debian's /usr/bin/python3 (python3-kombu 5.2, python3-boto3). The message is built as
Celery 5.2's amqp.as_task_v2 builds it for CeleryRunLauncher's
task.si(execute_job_args_packed=pack_value(args)).apply_async(): protocol 2 headers,
body (args, kwargs, embed), JSON serializer; kombu then base64-encodes the body and the
envelope (SPEC §1.3). Prints the Celery task id on stdout.

usage: celery_publish.py --endpoint http://127.0.0.1:PORT --queue NAME --args-file FILE
                         --out FILE [--task execute_job|resume_job] [--no-sqs-base64]
                         [--compression zlib|gzip|bzip2|lzma|...] [--leave]
--leave publishes only: the message stays on the queue for a daemon (--out is not written).

--compression is kombu's Producer.publish(compression=...), what Celery does with
task_compression (and, in 5.2, result_compression): kombu.compression.compress the serialized
body and set headers.compression to its content type (zlib/gzip -> application/x-gzip).
"""
import argparse
import json
import socket
import sys
import uuid
from urllib.parse import urlsplit

import boto3
from kombu import Connection, Exchange, Producer, Queue

KEY, SECRET, REGION = "testing", "testing", "us-east-1"


def celery_message(task, kwarg, packed):
    """Headers, body and properties as celery.app.amqp.AMQP.as_task_v2 makes them."""
    task_id = str(uuid.uuid4())
    kwargs = {kwarg: packed}
    headers = {
        "lang": "py",
        "task": task,
        "id": task_id,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": task_id,
        "parent_id": None,
        "argsrepr": "()",
        "kwargsrepr": repr(kwargs)[:1024],  # saferepr(kwargs, kwargsrepr_maxsize=1024)
        "origin": f"gen{1234}@{socket.gethostname()}",
        "ignore_result": False,
    }
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    body = ((), kwargs, embed)
    return task_id, headers, body


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--queue", required=True)
    ap.add_argument("--args-file", required=True)
    ap.add_argument("--out")
    ap.add_argument("--leave", action="store_true")
    ap.add_argument("--task", default="execute_job", choices=["execute_job", "resume_job"])
    ap.add_argument("--no-sqs-base64", action="store_true")
    ap.add_argument("--compression", default=None)
    opt = ap.parse_args()

    ep = urlsplit(opt.endpoint)
    sqs = boto3.client("sqs", endpoint_url=opt.endpoint, region_name=REGION,
                       aws_access_key_id=KEY, aws_secret_access_key=SECRET)
    url = sqs.create_queue(QueueName=opt.queue)["QueueUrl"]

    with open(opt.args_file) as f:
        packed = json.load(f)
    if opt.task == "resume_job":
        packed["__class__"] = "ResumeRunArgs"
    kwarg = opt.task + "_args_packed"
    task_id, headers, body = celery_message(opt.task, kwarg, packed)

    # kombu 5.2 has no endpoint option: host and port come from the broker URL (SPEC §10).
    options = {
        "is_secure": False,
        "region": REGION,
        "predefined_queues": {opt.queue: {"url": url}},
        "sqs_base64_encoding": not opt.no_sqs_base64,
    }
    with Connection(f"sqs://{KEY}:{SECRET}@{ep.hostname}:{ep.port}",
                    transport_options=options) as conn:
        producer = Producer(conn.channel())
        producer.publish(body, routing_key=opt.queue, exchange=Exchange(""),
                         declare=[Queue(opt.queue)], serializer="json", headers=headers,
                         correlation_id=task_id, reply_to="", priority=0, retry=False,
                         compression=opt.compression)

    if opt.leave:
        print(task_id)
        return
    got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=1, WaitTimeSeconds=5,
                              MessageAttributeNames=["All"])
    msgs = got.get("Messages", [])
    if len(msgs) != 1:
        sys.exit(f"celery_publish: expected 1 message on {opt.queue}, got {len(msgs)}")
    with open(opt.out, "w", encoding="utf-8", newline="") as f:
        f.write(msgs[0]["Body"])
    sqs.delete_message(QueueUrl=url, ReceiptHandle=msgs[0]["ReceiptHandle"])
    print(task_id)


if __name__ == "__main__":
    main()
