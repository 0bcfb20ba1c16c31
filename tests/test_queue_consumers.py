"""Queue consumers against real queues: moto's SQS, Azurite's Storage Queue, and real Pub/Sub
message objects through the consumer's seam (no Pub/Sub emulator installs here).

A recording sink commits nothing but remembers what it got; a failing sink raises. Every wait
is on a condition with a deadline: the queue's own state, or what the sink received.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import queue
import time
from collections.abc import Callable
from typing import Any

import boto3
import pytest

from syncd.daemon.queues import open_consumer
from syncd.daemon.queues.azure_queue import MAX_DEQUEUE
from syncd.events.parse import ObjectEvent
from tests.conftest import unique_bucket
from tests.emulators import Emulator, notify_queue


def s3_notification(key: str, seq: str, *, deleted: bool = False) -> str:
    obj: dict[str, Any] = {"key": key, "sequencer": seq}
    if not deleted:
        obj |= {"size": 3, "eTag": f"etag{seq}"}
    return json.dumps(
        {
            "Records": [
                {
                    "eventSource": "aws:s3",
                    "eventTime": "2026-11-24T00:00:00.000Z",
                    "eventName": "ObjectRemoved:Delete" if deleted else "ObjectCreated:Put",
                    "s3": {"bucket": {"name": "bkt"}, "object": obj},
                }
            ]
        }
    )


class Sink:
    """Records committed events; fails the first ``fail`` calls."""

    def __init__(self, fail: int = 0) -> None:
        self.events: list[ObjectEvent] = []
        self.fail = fail
        self.calls = 0
        self.changed = asyncio.Event()

    async def __call__(self, events: list[ObjectEvent], *, source: str) -> None:
        self.calls += 1
        if self.fail:
            self.fail -= 1
            raise RuntimeError("catalog unavailable")
        self.events += events
        self.changed.set()

    async def wait_for(self, condition: Callable[[], bool], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"sink got {len(self.events)} events"
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), timeout=min(remaining, 1))


async def until(condition: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await asyncio.to_thread(condition)
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


# -- SQS ------------------------------------------------------------------------------------


@pytest.fixture
def sqs(moto: Emulator, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, str]:
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.url)
    client = boto3.client("sqs", endpoint_url=moto.url)
    url = client.create_queue(QueueName=unique_bucket("q"), Attributes={"VisibilityTimeout": "1"})[
        "QueueUrl"
    ]
    return client, url


def visible_and_hidden(client: Any, url: str) -> int:
    attrs = client.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(
        attrs["ApproximateNumberOfMessagesNotVisible"]
    )


async def test_sqs_delivers_then_deletes_and_leaves_poison(sqs: tuple[Any, str]) -> None:
    client, url = sqs
    client.send_message(QueueUrl=url, MessageBody=s3_notification("raw/a", "01"))
    sns = {"Type": "Notification", "Message": s3_notification("raw/b", "02")}
    client.send_message(QueueUrl=url, MessageBody=json.dumps(sns))
    client.send_message(QueueUrl=url, MessageBody=json.dumps({"Event": "s3:TestEvent"}))
    client.send_message(QueueUrl=url, MessageBody="this is not json")
    consumer = open_consumer("s3-events", "sqs", url=url, wait_seconds=1)
    sink, stop = Sink(), asyncio.Event()
    task = asyncio.create_task(consumer.run(sink, stop))
    await sink.wait_for(lambda: {e.key for e in sink.events} == {"raw/a", "raw/b"})
    # the three good messages (the test event too: nothing to apply) are deleted; the
    # malformed one keeps coming back for the redrive policy
    await until(lambda: visible_and_hidden(client, url) == 1, "the good messages deleted")
    await until(lambda: consumer.stats.malformed >= 2, "the malformed one redelivered")
    stop.set()
    await asyncio.wait_for(task, timeout=30)
    assert consumer.stats.acknowledged == 3 and visible_and_hidden(client, url) == 1


async def test_sqs_acknowledges_nothing_the_sink_did_not_commit(sqs: tuple[Any, str]) -> None:
    client, url = sqs
    client.send_message(QueueUrl=url, MessageBody=s3_notification("raw/c", "03"))
    consumer = open_consumer("s3-events", "sqs", url=url, wait_seconds=1)
    sink, stop = Sink(fail=1), asyncio.Event()
    task = asyncio.create_task(consumer.run(sink, stop))
    # the first delivery fails; the message comes back after its visibility timeout
    await sink.wait_for(lambda: [e.key for e in sink.events] == ["raw/c"])
    assert sink.calls == 2 and consumer.stats.errors == 1
    await until(lambda: visible_and_hidden(client, url) == 0, "the message deleted")
    stop.set()
    await asyncio.wait_for(task, timeout=30)


async def test_sqs_with_real_s3_notifications(moto: Emulator, sqs: tuple[Any, str]) -> None:
    client, url = sqs
    s3 = boto3.client("s3", endpoint_url=moto.url)
    bucket = unique_bucket()
    s3.create_bucket(Bucket=bucket)
    notify_queue(s3, client, bucket, url)
    s3.put_object(Bucket=bucket, Key="dir/a b+c.jpg", Body=b"abc")
    s3.delete_object(Bucket=bucket, Key="dir/a b+c.jpg")
    consumer = open_consumer("s3-events", "sqs", url=url, wait_seconds=1)
    sink, stop = Sink(), asyncio.Event()
    task = asyncio.create_task(consumer.run(sink, stop))
    await sink.wait_for(lambda: len([e for e in sink.events if e.bucket == bucket]) == 2)
    stop.set()
    await asyncio.wait_for(task, timeout=30)
    created, deleted = sorted((e for e in sink.events if e.bucket == bucket), key=lambda e: e.kind)
    assert (created.key, created.size, deleted.key) == ("dir/a b+c.jpg", 3, "dir/a b+c.jpg")


async def test_stop_returns_within_a_poll(sqs: tuple[Any, str]) -> None:
    _, url = sqs
    consumer = open_consumer("s3-events", "sqs", url=url, wait_seconds=2)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(Sink(), stop))
    await asyncio.sleep(0)  # let it start polling
    stop.set()
    await asyncio.wait_for(task, timeout=2 + 20)


# -- Azure Storage Queue --------------------------------------------------------------------


def event_grid(name: str, seq: int, *, deleted: bool = False) -> list[dict[str, Any]]:
    data: dict[str, Any] = {
        "api": "DeleteBlob" if deleted else "PutBlob",
        "url": f"http://127.0.0.1/devstoreaccount1/images/{name}",
        "sequencer": f"{seq:032x}",
        "blobType": "BlockBlob",
    }
    if not deleted:
        data |= {"contentLength": 5, "eTag": f"0x{seq:X}", "contentType": "text/plain"}
    return [
        {
            "id": f"id-{seq}",
            "topic": "/subscriptions/x/resourceGroups/r/providers/Microsoft.Storage/"
            "storageAccounts/devstoreaccount1",
            "subject": f"/blobServices/default/containers/images/blobs/{name}",
            "eventType": "Microsoft.Storage.BlobDeleted"
            if deleted
            else "Microsoft.Storage.BlobCreated",
            "eventTime": "2026-11-24T00:00:00Z",
            "data": data,
            "dataVersion": "",
            "metadataVersion": "1",
        }
    ]


@pytest.fixture
def azure_queue(azurite_queue: Emulator, monkeypatch: pytest.MonkeyPatch) -> Any:
    from azure.storage.queue import QueueClient

    conn = azurite_queue.extra["connection_string"]
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", conn)
    client = QueueClient.from_connection_string(conn, unique_bucket("blob-events"))
    client.create_queue()
    return client


def queue_length(client: Any) -> int:
    return client.get_queue_properties().approximate_message_count


async def test_azure_queue_plain_and_base64_then_poison(azure_queue: Any) -> None:
    azure_queue.send_message(json.dumps(event_grid("a.txt", 1)))
    azure_queue.send_message(base64.b64encode(json.dumps(event_grid("b.txt", 2)).encode()).decode())
    azure_queue.send_message("not an event at all")
    consumer = open_consumer("blob-events", "azure-queue", queue=azure_queue.queue_name)
    consumer.visibility = 1  # poison handling needs redeliveries: let them come back soon
    sink, stop = Sink(), asyncio.Event()
    task = asyncio.create_task(consumer.run(sink, stop))
    try:
        await sink.wait_for(lambda: {e.key for e in sink.events} == {"a.txt", "b.txt"})
        await until(lambda: consumer.stats.poisoned == 1, "the malformed message poisoned")
        await until(lambda: queue_length(azure_queue) == 0, "the queue emptied")
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)
    assert consumer.stats.malformed == MAX_DEQUEUE + 1
    assert consumer.stats.acknowledged == 2
    assert consumer.poison_messages() == ["not an event at all"]


async def test_azure_queue_keeps_what_the_sink_did_not_commit(azure_queue: Any) -> None:
    azure_queue.send_message(json.dumps(event_grid("c.txt", 3)))
    consumer = open_consumer("blob-events", "azure-queue", queue=azure_queue.queue_name)
    consumer.visibility = 1
    sink, stop = Sink(fail=1), asyncio.Event()
    task = asyncio.create_task(consumer.run(sink, stop))
    try:
        await sink.wait_for(lambda: [e.key for e in sink.events] == ["c.txt"])
        assert sink.calls == 2
        await until(lambda: queue_length(azure_queue) == 0, "the message deleted")
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


# -- Pub/Sub, through the seam with real message objects ------------------------------------


def pubsub_message(attributes: dict[str, str], data: bytes, requests: queue.Queue) -> Any:
    from google.cloud.pubsub_v1.subscriber.message import Message
    from google.protobuf import timestamp_pb2
    from google.pubsub_v1.types import PubsubMessage

    raw = PubsubMessage(
        data=data,
        attributes=attributes,
        message_id="m-" + attributes.get("objectId", "x"),
        publish_time=timestamp_pb2.Timestamp(seconds=int(time.time())),
    )
    return Message(PubsubMessage.pb(raw), f"ack-{raw.message_id}", 1, requests)


def gcs_notification(name: str, generation: str, requests: queue.Queue) -> Any:
    resource = {
        "kind": "storage#object",
        "name": name,
        "bucket": "acme",
        "generation": generation,
        "metageneration": "1",
        "size": "12",
        "md5Hash": "XrY7u+Ae7tCTyyK7j1rNww==",
        "etag": "CJ+x",
        "contentType": "image/jpeg",
        "updated": "2026-11-24T00:00:00.000Z",
    }
    attributes = {
        "eventType": "OBJECT_FINALIZE",
        "bucketId": "acme",
        "objectId": name,
        "objectGeneration": generation,
        "payloadFormat": "JSON_API_V1",
        "eventTime": "2026-11-24T00:00:00.000Z",
    }
    return pubsub_message(attributes, json.dumps(resource).encode(), requests)


def acks_and_nacks(requests: queue.Queue) -> tuple[list[str], list[str]]:
    from google.cloud.pubsub_v1.subscriber._protocol import requests as kinds

    acks, nacks = [], []
    while not requests.empty():
        request = requests.get_nowait()
        if isinstance(request, kinds.AckRequest):
            acks.append(request.ack_id)
        elif isinstance(request, kinds.NackRequest):
            nacks.append(request.ack_id)
    return acks, nacks


async def test_pubsub_acks_after_commit_and_nacks_failures() -> None:
    requests: queue.Queue = queue.Queue()
    consumer = open_consumer("gcs-events", "pubsub", subscription="projects/p/subscriptions/s")
    good = gcs_notification("raw/cat.jpg", "1700000000000001", requests)
    bad = pubsub_message({"eventType": "OBJECT_FINALIZE"}, b"not json", requests)
    sink = Sink()
    await consumer.handle([good, bad], sink)
    assert [(e.key, e.size) for e in sink.events] == [("raw/cat.jpg", 12)]
    assert acks_and_nacks(requests) == (["ack-m-raw/cat.jpg"], ["ack-m-x"])
    assert consumer.stats.malformed == 1 and consumer.stats.acknowledged == 1

    failing = Sink(fail=1)
    again = gcs_notification("raw/dog.jpg", "1700000000000002", requests)
    with pytest.raises(RuntimeError):
        await consumer.handle([again], failing)
    assert acks_and_nacks(requests) == ([], ["ack-m-raw/dog.jpg"])
