"""A real pipeline: moto S3 bucket notifications -> moto SQS -> the Lambda handler -> catalog."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from types import SimpleNamespace

import boto3
import pytest

from functions.aws_lambda import handler
from providers.config import DriverConfig
from syncd.reconcile.filters import Filters
from syncd.store.catalog import Catalog
from tests.conftest import dataset_state
from tests.emulators import Emulator, notify_queue
from tests.test_events_parse import SAMPLES


@pytest.fixture
def pipeline(moto: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    s3 = boto3.client("s3", endpoint_url=moto.url)
    sqs = boto3.client("sqs", endpoint_url=moto.url)
    bucket = f"events-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    queue_url = sqs.create_queue(QueueName=f"q-{bucket}")["QueueUrl"]
    arn = notify_queue(s3, sqs, bucket, queue_url)
    db = str(tmp_path / "catalog.db")
    catalog = Catalog.open(db)
    catalog.create_dataset(
        "ds", f"s3://{bucket}/raw/", DriverConfig(type="s3", bucket=bucket, path="raw"), Filters()
    )
    catalog.close()
    monkeypatch.setenv("SYNCD_DB", db)
    monkeypatch.delenv("SYNCD_API_URL", raising=False)
    return SimpleNamespace(s3=s3, sqs=sqs, bucket=bucket, queue_url=queue_url, arn=arn, db=db)


def drain(sqs, queue_url: str, arn: str) -> tuple[int, list]:
    """Receive everything queued and hand it to the handler as Lambda's SQS integration does."""
    delivered, failures = 0, []
    while True:
        msgs = sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0
        ).get("Messages", [])
        if not msgs:
            return delivered, failures
        event = {
            "Records": [
                {
                    "messageId": m["MessageId"],
                    "receiptHandle": m["ReceiptHandle"],
                    "body": m["Body"],
                    "attributes": {},
                    "messageAttributes": {},
                    "eventSource": "aws:sqs",
                    "eventSourceARN": arn,
                    "awsRegion": "us-east-1",
                }
                for m in msgs
            ]
        }
        result = handler(event, None)
        failed = {f["itemIdentifier"] for f in result["batchItemFailures"]}
        failures += failed
        for m in msgs:
            if m["MessageId"] not in failed:
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])
        delivered += len(msgs)


def bucket_state(s3, bucket: str) -> dict[str, tuple[int, str]]:
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="raw/"):
        for o in page.get("Contents", []):
            out[o["Key"]] = (o["Size"], o["ETag"].strip('"'))
    return out


def test_bucket_notifications_keep_the_dataset_in_step(pipeline) -> None:
    s3, sqs, bucket, queue_url, arn, db = (
        pipeline.s3,
        pipeline.sqs,
        pipeline.bucket,
        pipeline.queue_url,
        pipeline.arn,
        pipeline.db,
    )
    keys = ["raw/a.jpg", "raw/sub dir/b+c.png", "raw/ünï/日本.txt", "raw/100%.bin", "outside/x.jpg"]
    for k in keys:
        s3.put_object(Bucket=bucket, Key=k, Body=k.encode())
    delivered, failures = drain(sqs, queue_url, arn)
    assert delivered >= len(keys) and failures == []
    assert dataset_state(db) == bucket_state(s3, bucket)
    assert len(dataset_state(db)) == 4

    s3.put_object(Bucket=bucket, Key="raw/a.jpg", Body=b"overwritten, longer")
    s3.delete_object(Bucket=bucket, Key="raw/sub dir/b+c.png")
    s3.delete_object(Bucket=bucket, Key="raw/100%.bin")
    s3.put_object(Bucket=bucket, Key="raw/new.jpg", Body=b"n")
    delivered, failures = drain(sqs, queue_url, arn)
    assert delivered >= 4 and failures == []
    assert dataset_state(db) == bucket_state(s3, bucket)
    assert set(dataset_state(db)) == {"raw/a.jpg", "raw/ünï/日本.txt", "raw/new.jpg"}


def test_one_bad_record_in_ten_fails_only_itself(pipeline) -> None:
    bucket, db = pipeline.bucket, pipeline.db
    good = json.loads((SAMPLES / "sqs-batch.json").read_text())["Records"][0]
    records = []
    for i in range(10):
        body = json.loads(good["body"])
        body["Records"][0]["s3"]["bucket"]["name"] = bucket
        body["Records"][0]["s3"]["object"]["key"] = f"raw/item+{i}.jpg"
        body["Records"][0]["s3"]["object"]["sequencer"] = f"{i + 1:02X}"
        records.append({**good, "messageId": f"m{i}", "body": json.dumps(body)})
    records[6] = {**records[6], "body": "this is not json"}
    result = handler({"Records": records}, None)
    assert result == {"batchItemFailures": [{"itemIdentifier": "m6"}]}
    assert sorted(dataset_state(db)) == sorted(f"raw/item {i}.jpg" for i in range(10) if i != 6)


def test_delivery_failure_reports_every_message(pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SYNCD_DB")
    monkeypatch.setenv("SYNCD_API_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    good = json.loads((SAMPLES / "sqs-batch.json").read_text())["Records"][0]
    records = [{**good, "messageId": f"m{i}"} for i in range(3)]
    assert handler({"Records": records}, None) == {
        "batchItemFailures": [{"itemIdentifier": f"m{i}"} for i in range(3)]
    }


def test_direct_and_eventbridge_invocations(pipeline) -> None:
    db = pipeline.db
    catalog = Catalog.open(db)
    catalog.create_dataset(
        "acme",
        "s3://acme-images/raw/",
        DriverConfig(type="s3", bucket="acme-images", path="raw"),
        Filters(),
    )
    catalog.close()
    assert (
        handler(json.loads((SAMPLES / "s3-put.json").read_text()), None)["applied"]["created"] == 1
    )
    assert (
        handler(json.loads((SAMPLES / "eventbridge-object-created.json").read_text()), None)[
            "applied"
        ]["created"]
        == 1
    )
    assert handler(json.loads((SAMPLES / "s3-test-event.json").read_text()), None)["skipped"] == [
        "s3:TestEvent"
    ]
    with pytest.raises(ValueError):
        handler({"not": "an event"}, None)


@pytest.mark.parametrize(
    ("module", "path", "foreign"),
    [
        (
            "functions.aws_lambda",
            ".",
            ("google.cloud.storage", "google.api_core", "azure.", "functions_framework"),
        ),
        ("main", "functions/gcp", ("boto3", "botocore", "azure.", "google.cloud.storage")),
        (
            "function_app",
            "functions/azure",
            ("boto3", "botocore", "google.cloud.storage", "google.api_core", "functions_framework"),
        ),
    ],
)
def test_each_handler_imports_only_its_own_cloud(
    module: str, path: str, foreign: tuple[str, ...]
) -> None:
    root = Path(__file__).resolve().parent.parent
    code = (
        f"import sys; import {module}\n"
        f"bad = [m for m in sys.modules if m.startswith({foreign!r})]\n"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    env = {**os.environ, "PYTHONPATH": f"{root / path}{os.pathsep}{root}"}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=root / path
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
