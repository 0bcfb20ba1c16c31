"""Issue 21: keys no catalog can hold, event keys over the provider's limit, per-record errors
of ``syncd events apply``, and the serverless handlers' failure paths.

Every test here failed on 055b6dc (see each docstring for what it produced there).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from providers.config import DriverConfig
from syncd.events.parse import EventFormatError, parse
from syncd.reconcile.filters import Filters
from syncd.store.catalog import Catalog
from tests.conftest import CatalogMaker, catalog_state
from tests.emulators import Emulator
from tests.test_events_parse import SAMPLES
from tests.test_sync_cli import syncd


@pytest.fixture
def s3(moto: Emulator) -> Iterator[tuple[Any, str]]:
    """(a boto3 client, a fresh bucket), with ``AWS_ENDPOINT_URL`` set for syncd."""
    client = boto3.client("s3", endpoint_url=moto.url)
    bucket = f"nul-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=bucket)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ENDPOINT_URL", moto.url)
        yield client, bucket


def sync_json(source: str, db: str, *extra: str) -> tuple[int, dict[str, Any], str]:
    """``syncd sync SOURCE --dataset n --json``: (exit code, its summary, its stderr)."""
    proc = syncd("sync", source, "--dataset", "n", "--db", db, "--json", *extra)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    found = next((line["summary"] for line in lines if "summary" in line), {})
    return proc.returncode, found, proc.stderr


# -- 1. a NUL byte in a key -----------------------------------------------------------------


def test_a_listed_key_with_a_nul_byte_is_skipped_and_counted_on_both_stores(
    s3: tuple[Any, str], catalogs: CatalogMaker
) -> None:
    """On 055b6dc PostgreSQL failed every run with ``internal error: DataError`` (sqlite
    stored the key, so the two stores disagreed)."""
    client, bucket = s3
    for key in ("a.txt", "bad\x00key", "z/\x00", "z/ok"):
        client.put_object(Bucket=bucket, Key=key, Body=b"x")
    db = catalogs.new_url()
    for _run in range(2):  # the next run is not wedged either
        code, summary, err = sync_json(f"s3://{bucket}", db)
        assert code == 0, err
        assert summary["skipped"] == 2 and summary["listed"] == 2, summary
        assert err.count("NUL byte in the key: no catalog can hold it") == 2, err
        assert "\x00" not in err  # the key is shown escaped
    catalog = Catalog.open(db)
    try:
        assert sorted(catalog_state(catalog, "n")) == ["a.txt", "z/ok"]
    finally:
        catalog.close()


def test_a_split_run_does_not_cut_at_a_folder_with_a_nul_byte(
    s3: tuple[Any, str], postgres_url: str
) -> None:
    """A first split run cuts at the folders under the path: on 055b6dc the folder
    ``b\\x00/`` became a range bound the catalog could not store (``DataError``)."""
    client, bucket = s3
    for key in ("a/1", "b\x00/2", "c/3", "d/4"):
        client.put_object(Bucket=bucket, Key=key, Body=b"x")
    code, summary, err = sync_json(f"s3://{bucket}", postgres_url, "--ranges", "4")
    assert code == 0, err
    assert summary["skipped"] == 1, summary
    catalog = Catalog.open(postgres_url)
    try:
        assert sorted(catalog_state(catalog, "n")) == ["a/1", "c/3", "d/4"]
    finally:
        catalog.close()


def s3_event(key: str, bucket: str = "bkt") -> dict[str, Any]:
    """An S3 notification creating ``key`` (form-encoded as S3 writes it)."""
    from urllib.parse import quote_plus

    return {
        "Records": [
            {
                "eventSource": "aws:s3",
                "eventName": "ObjectCreated:Put",
                "eventTime": "2026-11-20T10:00:00.000Z",
                "s3": {
                    "bucket": {"name": bucket},
                    "object": {
                        "key": quote_plus(key, safe="/"),
                        "size": 3,
                        "eTag": "e",
                        "sequencer": "0A",
                    },
                },
            }
        ]
    }


@pytest.mark.parametrize(
    "payload",
    [
        s3_event("bad\x00key"),
        # the bucket, the ETag: every text field goes to the catalog
        json.loads(json.dumps(s3_event("k")).replace('"bkt"', '"b\\u0000kt"')),
        json.loads(json.dumps(s3_event("k")).replace('"eTag": "e"', '"eTag": "e\\u0000"')),
    ],
    ids=["key", "bucket", "etag"],
)
def test_an_event_with_a_nul_byte_is_refused(payload: dict[str, Any]) -> None:
    """On 055b6dc it parsed, and applying it failed on PostgreSQL with ``DataError``."""
    with pytest.raises(EventFormatError, match="NUL byte"):
        parse(payload)


def test_events_apply_refuses_a_nul_key_record_on_postgresql(
    tmp_path: Path, postgres_url: str
) -> None:
    """The record is refused by position, the others applied, exit 1: on 055b6dc the run
    died with ``internal error: DataError`` and applied nothing."""
    catalog = Catalog.open(postgres_url)
    catalog.create_dataset("ds", "s3://bkt/", DriverConfig(type="s3", bucket="bkt"), Filters())
    catalog.close()
    lines = tmp_path / "events.jsonl"
    lines.write_text("\n".join(json.dumps(s3_event(k)) for k in ("a", "bad\x00key", "c")))
    proc = syncd("events", "apply", str(lines), "--db", postgres_url, "--json")
    assert proc.returncode == 1, proc.stderr
    summary, error = map(json.loads, proc.stdout.splitlines())  # --json: the failure too
    assert summary["refused"] == 1 and error["exit_code"] == 1
    assert "line 2" in proc.stderr and "NUL byte" in proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    catalog = Catalog.open(postgres_url)
    try:
        assert sorted(catalog_state(catalog)) == ["a", "c"]
    finally:
        catalog.close()


# -- 3. one bad record does not refuse the file ---------------------------------------------


def test_a_bad_line_is_refused_alone_and_reading_stays_lazy() -> None:
    """On 055b6dc the bad line raised: the lines after it were never read or applied."""
    from syncd.events.stream import Refused, read_payloads

    read: list[int] = []

    def lines() -> Iterator[bytes]:
        for i in range(4):
            read.append(i)
            yield b"{oops\n" if i == 1 else json.dumps(s3_event(f"k{i}")).encode() + b"\n"
        raise AssertionError("read past what was asked for")

    stream = read_payloads(lines())
    assert [e.key for e in next(stream).events] == ["k0"]
    refused = next(stream)
    assert isinstance(refused, Refused) and refused.position == "line 2"
    assert read == [0, 1]  # nothing read ahead of what was parsed
    assert [e.key for e in next(stream).events] == ["k2"]
    assert read == [0, 1, 2]


def test_events_apply_applies_the_records_beside_a_bad_one(tmp_path: Path) -> None:
    """One pretty-printed payload whose second record is malformed: the first and third are
    applied, the second named (``record 2``), exit 1. On 055b6dc: exit 2, nothing applied."""
    db = str(tmp_path / "c.db")
    catalog = Catalog.open(db)
    catalog.create_dataset("ds", "s3://bkt/", DriverConfig(type="s3", bucket="bkt"), Filters())
    catalog.close()
    records = [s3_event(k)["Records"][0] for k in ("a", "b", "c")]
    records[1] = {**records[1], "s3": {"bucket": {"name": "bkt"}}}  # no object
    payload = tmp_path / "events.json"
    payload.write_text(json.dumps({"Records": records}, indent=2))
    proc = syncd("events", "apply", str(payload), "--db", db)
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 2 and "events.json: record 2: missing field s3.object" in err[0], err
    assert err[1].startswith("syncd: error: ") and "1 record(s) refused" in err[1]
    assert "refused 1" in proc.stdout
    catalog = Catalog.open(db)
    try:
        assert sorted(catalog_state(catalog)) == ["a", "c"]
    finally:
        catalog.close()


# -- 2. event keys over the provider's limit ------------------------------------------------

#: (sample, a key at the limit, a key one over it): S3 and GCS count bytes of UTF-8, Azure
#: characters (UTF-16 code units)
LIMITS = [
    ("s3-put.json", "é" * 512, "é" * 512 + "x"),
    ("eventbridge-object-created.json", "k" * 1024, "k" * 1025),
    ("gcs-cloudevent-finalized.json", "日" * 341 + "k", "日" * 341 + "kk"),
    ("gcs-pubsub-pull-message.json", "k" * 1024, "k" * 1023 + "é"),
    ("azure-eventgrid-created.json", "é" * 1024, "é" * 1025),
    ("azure-cloudevent-created.json", "😀" * 512, "😀" * 512 + "k"),
]


@pytest.mark.parametrize(("sample", "longest", "too_long"), LIMITS, ids=[s for s, *_ in LIMITS])
def test_event_keys_over_the_provider_limit_are_refused(
    sample: str, longest: str, too_long: str, tmp_path: Path
) -> None:
    """No object has such a name: on 055b6dc the event parsed, and applying it made an item
    no listing would ever show (a phantom)."""
    from syncd.events.apply import apply_events
    from tests.test_events_fuzz import BUCKETS, with_key

    assert [e.key for e in parse(with_key(sample, longest)).events] == [longest]
    with pytest.raises(EventFormatError, match=r"1,024|1024"):
        parse(with_key(sample, too_long))
    # and through the handlers' path: refused, nothing written
    catalog = Catalog.open(str(tmp_path / "c.db"))
    try:
        for provider, cfg in BUCKETS.items():
            catalog.create_dataset(provider, f"{provider}://x/", cfg, Filters())
        with pytest.raises(EventFormatError):
            apply_events(catalog, parse(with_key(sample, too_long)).events)
        assert all(not catalog_state(catalog, p) for p in BUCKETS)
    finally:
        catalog.close()


# -- 4, 5, 6, 8: the Lambda handler ---------------------------------------------------------

#: an SQS message of the samples: an S3 notification of acme-images raw/2026/red flower.jpg
SQS_GOOD = json.loads((SAMPLES / "sqs-batch.json").read_text())["Records"][0]


def sqs_record(message_id: str | None, body: str | None = None) -> dict[str, Any]:
    record = {**SQS_GOOD, "body": body if body is not None else SQS_GOOD["body"]}
    if message_id is None:
        del record["messageId"]
    else:
        record["messageId"] = message_id
    return record


@pytest.fixture
def lambda_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A catalog file with a dataset of the samples' S3 bucket, as the handler's ``SYNCD_DB``."""
    db = str(tmp_path / "c.db")
    catalog = Catalog.open(db)
    catalog.create_dataset(
        "ds", "s3://acme-images/", DriverConfig(type="s3", bucket="acme-images"), Filters()
    )
    catalog.close()
    monkeypatch.setenv("SYNCD_DB", db)
    monkeypatch.delenv("SYNCD_API_URL", raising=False)
    monkeypatch.delenv("SYNCD_API_TOKEN_SECRET_ARN", raising=False)
    return db


def stored(db: str) -> list[str]:
    catalog = Catalog.open(db)
    try:
        return sorted(catalog_state(catalog))
    finally:
        catalog.close()


def test_lambda_reports_every_message_on_a_locked_catalog(
    lambda_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On 055b6dc the handler raised ``CatalogUnavailable`` (its contract: never raise)."""
    from functions.aws_lambda import handler

    monkeypatch.setenv("SYNCD_DB_BUSY_TIMEOUT", "0.2")
    locker = sqlite3.connect(lambda_db, isolation_level=None)
    try:
        locker.execute("BEGIN EXCLUSIVE")
        locker.execute("CREATE TABLE held (x)")  # a write: the lock is really taken
        result = handler({"Records": [sqs_record("m1"), sqs_record("m2")]}, None)
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert result == {"batchItemFailures": [{"itemIdentifier": "m1"}, {"itemIdentifier": "m2"}]}
    # retried once the lock is gone: applied
    assert handler({"Records": [sqs_record("m1")]}, None) == {"batchItemFailures": []}
    assert stored(lambda_db) == ["raw/2026/red flower.jpg"]


SNS_CONFIRMATION = {
    "Type": "SubscriptionConfirmation",
    "MessageId": "165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
    "Token": "2336412f37fb687f5d51e6e241d09c805a5a57b30d712f794cc5f6a988666d92768dd60a747ba6f3",
    "TopicArn": "arn:aws:sns:eu-west-1:123456789012:syncd-events",
    "Message": "You have chosen to subscribe to the topic arn:aws:sns:eu-west-1:123456789012:"
    "syncd-events.\nTo confirm the subscription, visit the SubscribeURL included in this message.",
    "SubscribeURL": "https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription&Token=2336",
    "Timestamp": "2026-11-20T10:00:00.000Z",
    "SignatureVersion": "1",
    "Signature": "EXAMPLEpH+DcEwjAPg8O9mY8dReBSwksfg2S7WKQcikcNKWLQjwu6A4VbeS0QHVCkhRS7fUQvi2egU3N",
    "SigningCertURL": "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-0000.pem",
}


@pytest.mark.parametrize("kind", ["SubscriptionConfirmation", "UnsubscribeConfirmation"])
def test_sns_subscription_messages_in_a_queue_are_skipped(
    lambda_db: str, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """On 055b6dc they were malformed: the Lambda failed them and the daemon left them for the
    redrive policy, so they ended in the dead-letter queue."""
    from functions.aws_lambda import handler
    from syncd.events.parse import parse_text

    body = json.dumps({**SNS_CONFIRMATION, "Type": kind})
    parsed = parse_text(body)  # what the daemon's SQS consumer does with a message body
    assert parsed.events == [] and len(parsed.skipped) == 1 and kind in parsed.skipped[0]
    caplog.set_level(logging.INFO)
    batch = {"Records": [sqs_record("confirm", body), sqs_record("good")]}
    assert handler(batch, None) == {"batchItemFailures": []}
    assert stored(lambda_db) == ["raw/2026/red flower.jpg"]
    assert kind in caplog.text


def test_a_record_without_message_id_never_yields_an_empty_identifier(lambda_db: str) -> None:
    """On 055b6dc a malformed record without ``messageId`` gave ``{"itemIdentifier": ""}``,
    which makes Lambda fail the whole batch (good messages dead-lettered with it)."""
    from functions.aws_lambda import handler

    batch = {"Records": [sqs_record(None, "not json"), sqs_record("bad", "{}"), sqs_record("ok")]}
    assert handler(batch, None) == {"batchItemFailures": [{"itemIdentifier": "bad"}]}
    assert stored(lambda_db) == ["raw/2026/red flower.jpg"]
    # a valid record without an id is applied like the others
    catalog = Catalog.open(lambda_db)
    catalog.db.execute("DELETE FROM items")
    catalog.db.execute("DELETE FROM key_markers")
    catalog.close()
    assert handler({"Records": [sqs_record(None)]}, None) == {"batchItemFailures": []}
    assert stored(lambda_db) == ["raw/2026/red flower.jpg"]


def test_lambda_never_yields_an_empty_identifier_when_delivery_fails(
    lambda_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from functions.aws_lambda import handler

    monkeypatch.setenv("SYNCD_DB", str(tmp_path / "missing.db"))
    batch = {"Records": [sqs_record(None), sqs_record("m1")]}
    assert handler(batch, None) == {"batchItemFailures": [{"itemIdentifier": "m1"}]}
    assert not (tmp_path / "missing.db").exists()


def empty_catalog_refused(tmp_path: Path) -> bool:
    """Whether ``Catalog.open(..., create=False)`` refuses a 0-byte file (the central fix of
    issue 21 item 8, made in syncd/store by another change)."""
    from syncd.errors import UsageError

    probe = tmp_path / "probe.db"
    probe.touch()
    try:
        Catalog.open(str(probe), create=False).close()
    except UsageError:
        return True
    return False


def load_handler(folder: str, module: str) -> Any:
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "functions" / folder / f"{module}.py"
    spec = importlib.util.spec_from_file_location(f"syncd_test_{folder}_{module}", path)
    assert spec is not None and spec.loader is not None
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


def test_handlers_fail_on_an_empty_catalog_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``: > z.db; SYNCD_DB=z.db``: on 055b6dc the Lambda answered ``{"batchItemFailures":
    []}`` (the message deleted, the event lost) and the Azure and GCP handlers returned
    normally, each having turned the empty file into an empty catalog. Every record must fail
    (Lambda) or the handler raise (Azure, GCP: the platform retries), and the file stay empty.

    The handlers open ``SYNCD_DB`` with ``create=False``; refusing a 0-byte file is
    ``Catalog.open``'s part."""
    from cloudevents.http import CloudEvent

    from functions.aws_lambda import handler
    from syncd.events.delivery import DeliveryError

    assert empty_catalog_refused(tmp_path)  # the central refusal (syncd.store.db)
    empty = tmp_path / "z.db"
    empty.touch()
    monkeypatch.setenv("SYNCD_DB", str(empty))
    monkeypatch.delenv("SYNCD_API_URL", raising=False)
    batch = {"Records": [sqs_record("m1"), sqs_record("m2")]}
    assert handler(batch, None) == {
        "batchItemFailures": [{"itemIdentifier": "m1"}, {"itemIdentifier": "m2"}]
    }
    grid = json.loads((SAMPLES / "azure-eventgrid-created.json").read_text())[0]
    from tests.test_cloud_function_handlers import grid_event

    azure = load_handler("azure", "function_app")
    [function] = azure.app.get_functions()
    with pytest.raises(DeliveryError):
        function.get_user_function()(grid_event(grid))
    finalized = json.loads((SAMPLES / "gcs-cloudevent-finalized.json").read_text())
    gcp = load_handler("gcp", "main")
    attributes = {k: v for k, v in finalized.items() if k != "data"}
    with pytest.raises(DeliveryError):
        gcp.on_object_event(CloudEvent(attributes, finalized["data"]))
    assert empty.stat().st_size == 0  # not made into a catalog


# -- 7. an Event Grid event without a topic -------------------------------------------------


@pytest.mark.parametrize(
    ("url", "account"),
    [
        ("https://otheracct.blob.core.windows.net/images/raw/2026/bird%20one.png", "otheracct"),
        (
            "http://127.0.0.1:10000/devstoreaccount1/images/raw/2026/bird%20one.png",
            "devstoreaccount1",
        ),
        ("http://localhost:10000/otheracct/images/raw/2026/bird%20one.png", "otheracct"),
    ],
    ids=["azure", "azurite-ip", "azurite-localhost"],
)
def test_an_event_without_topic_takes_its_account_from_the_blob_url(
    url: str, account: str, tmp_path: Path
) -> None:
    """On 055b6dc the account was None: the event reached the ``images`` container of any
    account (here acmestore's), though its URL names another one."""
    from syncd.events.apply import apply_events

    grid = json.loads((SAMPLES / "azure-eventgrid-created.json").read_text())[0]
    del grid["topic"]
    grid["data"]["url"] = url
    [event] = parse(grid).events
    assert (event.account, event.bucket, event.key) == (account, "images", "raw/2026/bird one.png")
    catalog = Catalog.open(str(tmp_path / "c.db"))
    try:
        cfg = DriverConfig(type="azure", bucket="images", account="acmestore")
        catalog.create_dataset("az", "az://acmestore/images/", cfg, Filters())
        assert apply_events(catalog, [event]).as_dict()["unrouted"] == 1
        assert catalog_state(catalog, "az") == {}
        # the topic, when there is one, still names the account
        with_topic = parse(
            {
                **grid,
                "topic": json.loads((SAMPLES / "azure-eventgrid-created.json").read_text())[0][
                    "topic"
                ],
            }
        ).events[0]
        assert with_topic.account == "acmestore"
    finally:
        catalog.close()


async def test_the_daemon_acknowledges_sns_subscription_messages(moto: Emulator) -> None:
    """The daemon's SQS consumer on moto: the confirmation is deleted with the notification
    beside it, not counted as malformed. On 055b6dc it was malformed and left on the queue
    for the redrive policy (then the dead-letter queue)."""
    from syncd.daemon.queues import open_consumer

    client = boto3.client("sqs", endpoint_url=moto.url)
    url = client.create_queue(QueueName=f"q-{uuid.uuid4().hex[:10]}")["QueueUrl"]
    bodies = [json.dumps(SNS_CONFIRMATION), json.dumps(s3_event("a"))]
    for body in bodies:
        client.send_message(QueueUrl=url, MessageBody=body)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ENDPOINT_URL", moto.url)
        consumer = open_consumer("s3-events", "sqs", url=url, wait_seconds=0)
    got: list[str] = []

    async def sink(events: list[Any], *, source: str) -> None:
        got.extend(e.key for e in events)

    messages: list[dict[str, Any]] = []
    for _ in range(100):  # moto hands back what is queued at once; no wait involved
        if len(messages) == 2:
            break
        answer = client.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
        messages += answer.get("Messages", [])
    await consumer.handle(messages, sink)
    assert got == ["a"]
    assert consumer.stats.malformed == 0 and consumer.stats.acknowledged == 2
    attrs = client.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attrs["ApproximateNumberOfMessages"] == attrs["ApproximateNumberOfMessagesNotVisible"]
    assert attrs["ApproximateNumberOfMessages"] == "0"
