"""Parsers for every event format, over the vendor-format samples and our own edge cases."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from syncd.events.parse import (
    EventFormatError,
    EventKind,
    gcs_marker,
    pad_sequencer,
    parse,
    parse_record,
    parse_text,
)

# payloads in each vendor's documented format, written for these tests
SAMPLES = Path(__file__).resolve().parent / "fixtures" / "events"


def sample(name: str):
    return json.loads((SAMPLES / name).read_text())


def one(payload):
    parsed = parse(payload)
    assert len(parsed.events) == 1, parsed
    return parsed.events[0]


@pytest.mark.parametrize(
    ("name", "kind", "provider", "bucket", "key"),
    [
        ("s3-put.json", "created", "s3", "acme-images", "raw/2026/red flower.jpg"),
        ("s3-delete.json", "deleted", "s3", "acme-images", "raw/2026/red flower.jpg"),
        ("s3-delete-marker.json", "deleted", "s3", "acme-images", "raw/2026/old.png"),
        ("s3-multipart.json", "created", "s3", "acme-images", "raw/video/clipé 01.mp4"),
        (
            "eventbridge-object-created.json",
            "created",
            "s3",
            "acme-images",
            "raw/2026/blue sky.jpg",
        ),
        (
            "eventbridge-object-deleted.json",
            "deleted",
            "s3",
            "acme-images",
            "raw/2026/blue sky.jpg",
        ),
        (
            "gcs-cloudevent-finalized.json",
            "created",
            "gcs",
            "acme-images-gcs",
            "raw/2026/cat 01.jpg",
        ),
        ("gcs-cloudevent-deleted.json", "deleted", "gcs", "acme-images-gcs", "raw/2026/cat 01.jpg"),
        (
            "gcs-pubsub-overwrite-finalize.json",
            "created",
            "gcs",
            "acme-images-gcs",
            "raw/2026/dog.jpg",
        ),
        (
            "gcs-pubsub-overwrite-delete.json",
            "deleted",
            "gcs",
            "acme-images-gcs",
            "raw/2026/dog.jpg",
        ),
        ("azure-eventgrid-created.json", "created", "azure", "images", "raw/2026/bird one.png"),
        ("azure-eventgrid-deleted.json", "deleted", "azure", "images", "raw/2026/bird one.png"),
    ],
)
def test_samples(name: str, kind: str, provider: str, bucket: str, key: str) -> None:
    event = one(sample(name))
    assert (event.kind, event.provider, event.bucket, event.key) == (
        EventKind(kind),
        provider,
        bucket,
        key,
    )
    assert event.marker is not None


def test_sample_details() -> None:
    put = one(sample("s3-put.json"))
    assert (put.size, put.etag, put.marker) == (
        1024,
        "0123456789abcdef0123456789abcdef",
        pad_sequencer("0055AED6DCD90281E5"),
    )
    fin = one(sample("gcs-pubsub-overwrite-finalize.json"))
    old = one(sample("gcs-pubsub-overwrite-delete.json"))
    assert (fin.size, fin.version, fin.content_type) == (5120, "1763632920000002.1", "image/jpeg")
    assert (
        old.marker < fin.marker
    )  # the overwritten generation's delete is older than the overwrite
    az = one(sample("azure-eventgrid-created.json"))
    assert (az.account, az.size, az.etag, az.content_type) == (
        "acmestore",
        524288,
        "0x8DE1B2C3D4E5F60",
        "image/png",
    )
    assert az.event_time.isoformat() == "2026-11-20T10:03:00+00:00"


def test_test_event_and_validation_are_recognised() -> None:
    assert parse(sample("s3-test-event.json")).skipped == ["s3:TestEvent"]
    validation = parse(sample("azure-eventgrid-validation.json"))
    assert (
        validation.validation_code == "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"
        and validation.events == []
    )


def test_sqs_batch_records_parse_one_by_one() -> None:
    good, bad = sample("sqs-batch.json")["Records"]
    assert parse_record(good).events[0].key == "raw/2026/red flower.jpg"
    with pytest.raises(EventFormatError, match="SQS body is not valid JSON"):
        parse_record(bad)


def s3_record(key: str, name: str = "ObjectCreated:Put") -> dict:
    return {
        "eventSource": "aws:s3",
        "eventName": name,
        "eventTime": "2026-11-20T10:00:00.000Z",
        "s3": {
            "bucket": {"name": "b"},
            "object": {"key": key, "size": 1, "eTag": "e", "sequencer": "0A"},
        },
    }


@pytest.mark.parametrize(
    ("encoded", "key"),
    [
        ("a+b.jpg", "a b.jpg"),  # form encoding: + is a space
        ("a%2Bb.jpg", "a+b.jpg"),
        ("100%25.txt", "100%.txt"),
        ("caf%C3%A9/%E6%97%A5%E6%9C%AC.txt", "café/日本.txt"),
        ("deep%2Fpath%2Fx", "deep/path/x"),  # moto also encodes /
    ],
)
def test_s3_keys_are_form_decoded(encoded: str, key: str) -> None:
    assert one({"Records": [s3_record(encoded)]}).key == key


def test_sns_inside_sqs_and_lambda_sns() -> None:
    inner = json.dumps({"Records": [s3_record("x+y")]})
    sns = {"Type": "Notification", "Message": inner}
    sqs = {"Records": [{"messageId": "1", "eventSource": "aws:sqs", "body": json.dumps(sns)}]}
    assert one(sqs).key == "x y"
    lambda_sns = {"Records": [{"EventSource": "aws:sns", "Sns": {"Message": inner}}]}
    assert one(lambda_sns).key == "x y"


def test_eventbridge_keys_are_not_form_decoded() -> None:
    payload = sample("eventbridge-object-created.json")
    payload["detail"]["object"]["key"] = "a+b %20.jpg"
    assert one(payload).key == "a+b %20.jpg"


def test_azure_cloudevents_schema_and_url_fallback() -> None:
    payload = {
        "specversion": "1.0",
        "type": "Microsoft.Storage.BlobCreated",
        "id": "1",
        "source": "/subscriptions/x/resourceGroups/y/providers/Microsoft.Storage/storageAccounts/acct",
        "subject": "/blobServices/default/containers/c/blobs/a b/ü+%.png",
        "time": "2026-11-20T10:03:00.1234567Z",
        "data": {
            "api": "PutBlob",
            "eTag": "0x1",
            "contentLength": 3,
            "sequencer": "00000001",
            "url": "https://acct.blob.core.windows.net/c/a%20b/%C3%BC%2B%25.png",
        },
    }
    event = one(payload)
    assert (event.account, event.bucket, event.key, event.size) == ("acct", "c", "a b/ü+%.png", 3)
    del payload["subject"]
    assert one(payload).key == "a b/ü+%.png"  # from the URL-encoded data.url


def test_gcs_background_event_and_bare_pubsub_message() -> None:
    data = {
        "bucket": "g",
        "name": "p/q r.jpg",
        "generation": "7",
        "metageneration": "2",
        "size": "9",
        "etag": "E",
    }
    legacy = {
        "context": {
            "eventId": "1",
            "eventType": "google.storage.object.finalize",
            "timestamp": "2026-11-20T10:00:00Z",
        },
        "data": data,
    }
    event = one(legacy)
    assert (event.key, event.size, event.marker) == ("p/q r.jpg", 9, gcs_marker(7, 2))
    bare = {
        "attributes": {
            "eventType": "OBJECT_DELETE",
            "bucketId": "g",
            "objectId": "p/q r.jpg",
            "objectGeneration": "7",
        },
        "data": base64.b64encode(json.dumps(data).encode()).decode(),
    }
    assert one(bare).kind is EventKind.DELETED


def test_unknown_types_are_skipped_not_failed() -> None:
    assert parse({"Records": [s3_record("k", "ObjectRestore:Completed")]}).skipped
    assert parse(
        {"specversion": "1.0", "type": "google.cloud.pubsub.topic.v1.messagePublished", "data": {}}
    ).skipped
    payload = sample("azure-eventgrid-created.json")
    payload[0]["eventType"] = "Microsoft.Storage.BlobTierChanged"
    assert parse(payload).skipped and not parse(payload).events


@pytest.mark.parametrize(
    "payload",
    [
        42,
        {"hello": "world"},
        {"Records": "nope"},
        {"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put"}]},
        {
            "Records": [
                s3_record("k")
                | {"s3": {"bucket": {"name": "b"}, "object": {"key": "k", "size": "big"}}}
            ]
        },
        {"Records": [s3_record("k") | {"eventTime": "yesterday"}]},
        {
            "specversion": "1.0",
            "type": "google.cloud.storage.object.v1.finalized",
            "data": {"bucket": "b", "name": "n"},
        },
        {"message": {"attributes": {"eventType": "OBJECT_FINALIZE"}, "data": "!!!"}},
        [{"eventType": "Microsoft.Storage.BlobCreated", "subject": "/nothing", "data": {}}],
    ],
)
def test_malformed_payloads_raise_a_clear_error(payload) -> None:
    with pytest.raises(EventFormatError) as info:
        parse(payload)
    assert "\n" not in str(info.value)


def test_parse_text_accepts_json_lines() -> None:
    text = "\n".join(json.dumps({"Records": [s3_record(k)]}) for k in ("a", "b"))
    assert [e.key for e in parse_text(text).events] == ["a", "b"]
    with pytest.raises(EventFormatError, match="not valid JSON"):
        parse_text("{nope")


@pytest.mark.parametrize(
    ("name", "key", "size"),
    [
        ("sns-notification.json", "raw/2026/red flower.jpg", 1024),  # SNS raw delivery off
        ("gcs-pubsub-pull-message.json", "raw/2026/fox.jpg", 777),  # a pulled message, bare
        ("azure-cloudevent-created.json", "raw/2026/bird two.png", 1000),  # CloudEvents schema
    ],
)
def test_wrapped_and_alternate_schema_samples(name: str, key: str, size: int) -> None:
    event = one(sample(name))
    assert (event.kind, event.key, event.size) == (EventKind.CREATED, key, size)
    assert event.marker is not None
