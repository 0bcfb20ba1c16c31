"""Cloud sinks for the change feed (issue 22): the change log sent as messages to SQS (a
standard and a FIFO queue), SNS (read through an SQS queue subscribed to the topic) and Azure
Queue, on the real emulators (moto, Azurite); Pub/Sub through its seam (the real
``PubsubMessage`` a batch becomes, and the real client against an address that answers
nothing), as tests/test_queue_consumers.py drives its consumer.

Every change arrives once or more, none lost, in cursor order once duplicates are dropped by
batch id, through a daemon restart; a batch over the service's message size limit pauses the
sink with an error naming ``batch``; ``GET /api/v1/sinks`` lists what ``sinks ls`` does. (That
a sink's credentials appear nowhere is in tests/test_planted_secrets.py.) Every wait is on a
condition with a deadline."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from syncd.config import load_daemon_config
from syncd.daemon import service
from syncd.daemon.service import Daemon
from syncd.feed import delivery, sinks
from syncd.feed.delivery import Batch
from syncd.store import changes
from syncd.store.catalog import Catalog
from syncd.store.changes import Change
from tests.conftest import unique_bucket
from tests.emulators import Emulator, free_port
from tests.test_webhooks import (
    ROOT,
    TOKEN,
    folder_state,
    head_and_state,
    items,
    until,
)
from tests.waiting import wait_for

#: one received message: its batch id and its JSON body
Message = tuple[str, dict[str, Any]]


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Backoffs of milliseconds, looks every 0.1s, a prune every 0.2s (in-process daemons)."""
    monkeypatch.setattr(delivery, "BACKOFF_BASE", 0.01)
    monkeypatch.setattr(delivery, "BACKOFF_CAP", 0.05)
    monkeypatch.setattr(delivery, "POLL_SECONDS", 0.1)
    monkeypatch.setattr(service, "RETENTION_SECONDS", 0.2)


def config_text(src: Path, sink: str, *, server_port: int | None = None) -> str:
    text = (
        f'[drivers.disk]\ntype = "local"\nbucket = "{src}"\n'
        '[datasets.files]\ndriver = "disk"\nwatch = true\ninterval = 3600\n' + sink
    )
    if server_port:
        text += f'[server]\nhost = "127.0.0.1"\nport = {server_port}\n'
    return text


def sink_table(name: str, **fields: Any) -> str:
    lines = [f"[sinks.{name}]", *(f"{k} = {json.dumps(v)}" for k, v in fields.items())]
    return "\n".join(lines) + "\n"


@dataclasses.dataclass
class Target:
    """A sink's queue or topic on an emulator: its ``[sinks.NAME]`` fields, and how to read
    (and delete) every message it holds now."""

    fields: dict[str, Any]
    read: Callable[[], list[Message]]
    #: the service keeps the order messages were sent in (a FIFO queue)
    ordered: bool = False


def _sqs_reader(client: Any, url: str) -> Callable[[], list[Message]]:
    def read() -> list[Message]:
        out: list[Message] = []
        while True:
            got = client.receive_message(
                QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"]
            ).get("Messages", [])
            if not got:
                return out
            for m in got:
                batch_id = m["MessageAttributes"][sinks.ID_ATTRIBUTE]["StringValue"]
                out.append((batch_id, json.loads(m["Body"])))
                client.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])

    return read


@pytest.fixture
def aws(moto: Emulator, monkeypatch: pytest.MonkeyPatch) -> Emulator:
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.url)
    return moto


def sqs_target(moto: Emulator, *, fifo: bool = False) -> Target:
    client = boto3.client("sqs", endpoint_url=moto.url)
    name = unique_bucket("changes") + (".fifo" if fifo else "")
    attributes = {"VisibilityTimeout": "300"}
    if fifo:
        attributes["FifoQueue"] = "true"
    url = client.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
    return Target({"type": "sqs", "url": url}, _sqs_reader(client, url), ordered=fifo)


def sns_target(moto: Emulator) -> Target:
    """A topic, read through an SQS queue subscribed to it with raw delivery (the body is
    the message, the attributes are the message's)."""
    sns = boto3.client("sns", endpoint_url=moto.url)
    sqs = boto3.client("sqs", endpoint_url=moto.url)
    arn = sns.create_topic(Name=unique_bucket("changes"))["TopicArn"]
    url = sqs.create_queue(
        QueueName=unique_bucket("from-sns"), Attributes={"VisibilityTimeout": "300"}
    )["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    sns.subscribe(
        TopicArn=arn,
        Protocol="sqs",
        Endpoint=queue_arn,
        Attributes={"RawMessageDelivery": "true"},
    )
    return Target({"type": "sns", "topic_arn": arn}, _sqs_reader(sqs, url))


def azure_target(azurite_queue: Emulator, monkeypatch: pytest.MonkeyPatch) -> Target:
    from azure.storage.queue import QueueClient, TextBase64DecodePolicy

    conn = azurite_queue.extra["connection_string"]
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", conn)
    name = unique_bucket("changes")
    client = QueueClient.from_connection_string(
        conn, name, message_decode_policy=TextBase64DecodePolicy()
    )
    client.create_queue()

    def read() -> list[Message]:
        out: list[Message] = []
        while True:
            got = list(client.receive_messages(messages_per_page=32, visibility_timeout=300))
            if not got:
                return out
            for m in got:
                message = json.loads(m.content)
                out.append((message["id"], message))
                client.delete_message(m)

    return Target({"type": "azure-queue", "queue": name}, read)


@pytest.fixture(params=["sqs", "sqs-fifo", "sns", "azure-queue"])
def target(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Target:
    if request.param == "azure-queue":
        return azure_target(request.getfixturevalue("azurite_queue"), monkeypatch)
    moto = request.getfixturevalue("aws")
    if request.param == "sns":
        return sns_target(moto)
    return sqs_target(moto, fifo=request.param == "sqs-fifo")


def check_messages(messages: list[Message], name: str, head: int, *, ordered: bool) -> None:
    """Every batch id always carries the same body; after dropping repeated ids, the batches
    cover the changes 1..head exactly once, in cursor order (a standard queue may hand them
    out of order: then they are put in order by their ``next``)."""
    bodies: dict[str, dict[str, Any]] = {}
    unique = []
    for batch_id, body in messages:
        assert body["sink"] == name
        if batch_id in bodies:
            assert bodies[batch_id] == body, f"{batch_id} sent with another body"
            continue
        bodies[batch_id] = body
        unique.append(body)
    if not ordered:
        unique.sort(key=lambda b: b["next"])
    cursors = [c["cursor"] for b in unique for c in b["changes"]]
    assert cursors == list(range(1, head + 1))
    # each batch ends where it says: the next one starts after it
    assert all(c <= b["next"] for b in unique for c in (x["cursor"] for x in b["changes"]))
    assert unique[-1]["next"] == head


async def change_files(src: Path, db: str, rounds: range) -> None:
    """Create, overwrite and delete files, waiting each round for the watch to apply it."""
    for round_ in rounds:
        for i in range(3):
            (src / f"f{(round_ + i) % 5}.txt").write_text(f"{round_}-{i}")
        if round_ % 2:
            (src / f"f{round_ % 5}.txt").unlink()
        await until(lambda: items(db) == {k: len(v) for k, v in folder_state(src).items()},
                    "the watch to apply the round")  # fmt: skip


async def test_every_change_arrives_in_order_through_a_restart(
    tmp_path: Path, fast_retries: None, target: Target
) -> None:
    """A daemon watches a folder whose files change; the sink sends batches of 2. The daemon
    stops (a batch may be in flight), the folder changes while it is down, a second daemon
    starts: every change arrives, once per batch id, in cursor order, none lost."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "seed.txt").write_text("seed")
    (tmp_path / "syncd.toml").write_text(
        config_text(src, sink_table("out", **target.fields, batch=2))
    )
    config = load_daemon_config(str(tmp_path / "syncd.toml"))
    db = str(tmp_path / "c.db")

    def delivered() -> bool:
        head, state = head_and_state(db, "out")
        return bool(state and head and state.cursor == head)

    messages: list[Message] = []
    for run, rounds in enumerate((range(0, 4), range(4, 8))):
        daemon = Daemon(config, db, poll_seconds=1)
        task = asyncio.create_task(daemon.run())
        try:
            await until(lambda d=daemon, t=task: d.ready.is_set() or t.done(), "the start")
            if task.done():
                task.result()  # it failed: say why
            await change_files(src, db, rounds)
            if run == 1:
                await until(delivered, "every change to be delivered")
        finally:
            # the first run stops right after its last round: its batches may be in flight
            daemon.stop.set()
            await asyncio.wait_for(task, 60)
        messages += await asyncio.to_thread(target.read)
        if run == 0:
            for name in ("f0.txt", "f1.txt"):  # changed while no daemon runs
                (src / name).write_text("while down")
    head, state = head_and_state(db, "out")
    assert state and state.cursor == head and not state.paused
    assert daemon.metrics.sink_delivered.labels("out")._value.get() > 0
    check_messages(messages, "out", head, ordered=target.ordered)


def test_kill_9_after_the_send_sends_the_same_batch_again(tmp_path: Path, aws: Emulator) -> None:
    """``syncd run`` is killed (-9) after SQS accepted its second batch and before the cursor
    is stored; the next run sends that batch again first (the same id and body: a duplicate
    the receiver drops by id), then the rest. Every change arrives."""
    target = sqs_target(aws)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(7):
        (src / f"f{i}.txt").write_text(str(i))
    config = tmp_path / "syncd.toml"
    config.write_text(config_text(src, sink_table("out", **target.fields, batch=2)))
    db = str(tmp_path / "c.db")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "syncd.cli", "-v", "run", "--config", str(config), "--db", db]
    log = tmp_path / "run.log"
    proc = subprocess.Popen(command, env={**env, "SYNCD_FAULT_PAUSE_AT": "webhook-sent:2"},
                            stdout=subprocess.DEVNULL, stderr=log.open("wb"))  # fmt: skip
    try:
        wait_for(lambda: b"paused at webhook-sent" in log.read_bytes() or proc.poll() is not None,
                   "the daemon to reach the pause point")  # fmt: skip
        assert proc.poll() is None, log.read_text()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    first = target.read()
    _, state = head_and_state(db, "out")
    assert state and state.cursor == 2 and state.batch_end == 4 and len(first) == 2
    [(sent_id, sent_body)] = [m for m in first if m[1]["next"] == 4]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                            stderr=(tmp_path / "after.log").open("wb"))  # fmt: skip
    try:
        wait_for(lambda: (h := head_and_state(db, "out"))[1] and h[1].cursor == h[0],
                   "every change to be delivered")  # fmt: skip
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    second = target.read()
    assert (sent_id, sent_body) in second  # sent again, the same
    head, _ = head_and_state(db, "out")
    assert head == 7
    check_messages(first + second, "out", head, ordered=False)


# -- a batch over the message size limit -------------------------------------------------------


async def test_a_batch_over_the_message_size_limit_pauses_the_sink(
    tmp_path: Path,
    fast_retries: None,
    azurite_queue: Emulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """150 files with long names make one batch of 150 changes far over Azure Queue's 64 KiB
    (after base64): nothing is sent, the sink pauses with an error naming batch. With batch
    lowered and `syncd sinks resume`, a new daemon delivers everything."""
    target = azure_target(azurite_queue, monkeypatch)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(150):
        (src / f"{i:03d}-{'long-name-' * 20}.txt").write_text("x")
    config_file = tmp_path / "syncd.toml"
    config_file.write_text(config_text(src, sink_table("out", **target.fields, batch=150)))
    db = str(tmp_path / "c.db")
    daemon = Daemon(load_daemon_config(str(config_file)), db, poll_seconds=1)
    task = asyncio.create_task(daemon.run())
    try:
        state = await until(lambda: (s := head_and_state(db, "out")[1]) and s.paused and s,
                            "the sink to pause")  # fmt: skip
    finally:
        daemon.stop.set()
        await asyncio.wait_for(task, 60)
    assert state.cursor == 0 and "over Azure Queue's limit of 65,536" in (state.last_error or "")
    assert "lower batch in [sinks.out] (now 150)" in (state.last_error or "")
    assert daemon.metrics.sink_failures.labels("out")._value.get() == 1
    assert await asyncio.to_thread(target.read) == []

    # under the limit: each change's record is about 1.6 KB once base64-encoded
    config_file.write_text(config_text(src, sink_table("out", **target.fields, batch=20)))
    listed = cli("sinks", "ls", "--json", "--db", db, "--config", str(config_file))
    row = json.loads(listed.stdout)
    assert (row["state"], row["type"], row["target"]) == (
        "paused",
        "azure-queue",
        target.fields["queue"],
    )
    assert "lower batch" in row["last_error"]
    table = cli("sinks", "ls", "--db", db, "--config", str(config_file)).stdout.splitlines()
    assert table[0].split("\t") == [
        "NAME", "TYPE", "TARGET", "CURSOR", "LAG", "STATE", "LAST ERROR"
    ]  # fmt: skip
    cells = table[1].split("\t")
    assert cells[:6] == ["out", "azure-queue", target.fields["queue"], "0", f"{row['lag']:,}",
                         "paused"]  # fmt: skip
    assert "lower batch" in cells[6] and len(table) == 2
    resumed = cli("sinks", "resume", "out", "--db", db)
    assert resumed.returncode == 0, resumed.stderr
    daemon = Daemon(load_daemon_config(str(config_file)), db, poll_seconds=1)
    task = asyncio.create_task(daemon.run())
    try:
        await until(lambda: (h := head_and_state(db, "out"))[1] and h[1].cursor == h[0] == 150,
                    "the sink to deliver everything")  # fmt: skip
    finally:
        daemon.stop.set()
        await asyncio.wait_for(task, 60)
    messages = await asyncio.to_thread(target.read)
    assert all(len(body["changes"]) <= 40 for _, body in messages)
    check_messages(messages, "out", 150, ordered=False)


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "syncd.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
    )


# -- secrets ---------------------------------------------------------------------------------


def test_the_api_lists_each_sinks_state_as_sinks_ls_does(tmp_path: Path, aws: Emulator) -> None:
    """``GET /api/v1/sinks`` of a daemon with a sink that delivers and one on a queue that
    does not exist (refused: paused, its error logged): name, type, target, cursor, lag and
    state, the same rows as ``sinks ls --json``, never the integration's credentials (the
    planted-secrets test searches every other surface for them); metrics count both."""
    good = sqs_target(aws)
    missing = good.fields["url"].rsplit("/", 1)[0] + "/no-such-queue"
    key_id, secret = "AKIASINKKEYID7731", "sink-secret-access-key-5518"
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    port = free_port()
    text = (
        '[integrations.aws-sink]\ntype = "s3"\naccess_key_id = "env:SINK_KEY_ID"\n'
        'secret_access_key = "env:SINK_SECRET"\n'
        + sink_table("good", **good.fields, integration="aws-sink")
        + sink_table("missing", type="sqs", url=missing, integration="aws-sink")
    )
    config = tmp_path / "syncd.toml"
    config.write_text(config_text(src, text, server_port=port))
    db = str(tmp_path / "c.db")
    log = tmp_path / "run.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "syncd.cli", "-v", "run", "--config", str(config), "--db", db],
        env={**os.environ, "PYTHONPATH": str(ROOT), "SINK_KEY_ID": key_id,
             "SINK_SECRET": secret, "SYNCD_API_TOKEN": TOKEN},
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )  # fmt: skip
    try:
        wait_for(lambda: (h := head_and_state(db, "good"))[1] and h[1].cursor == h[0] > 0,
                   "the good sink to deliver")  # fmt: skip
        state = wait_for(lambda: (s := head_and_state(db, "missing")[1]) and s.paused and s,
                           "the missing queue to pause its sink")  # fmt: skip
        assert "NonExistentQueue" in (state.last_error or "") or "QueueDoesNotExist" in (
            state.last_error or ""
        ), state.last_error
        metrics = wait_for(lambda: scrape(port), "the metrics")
        assert 'syncd_sink_delivered_total{sink="good"} 1.0' in metrics
        assert 'syncd_sink_failures_total{sink="missing"} 1.0' in metrics
        listed = scrape(port, "/api/v1/sinks")
        assert listed is not None
        ls = cli("sinks", "ls", "--json", "--db", db, "--config", str(config))
        assert ls.returncode == 0, ls.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert "sink 'missing' paused" in log.read_text()
    [(_, body)] = good.read()
    assert [c["key"] for c in body["changes"]] == ["a.txt"]
    rows = json.loads(listed)["sinks"]
    assert rows == [json.loads(line) for line in ls.stdout.splitlines()]
    shown = [(r["name"], r["type"], r["target"], r["cursor"], r["lag"], r["state"]) for r in rows]
    assert shown == [("good", "sqs", good.fields["url"], 1, 0, "ok"),
                     ("missing", "sqs", missing, 0, 1, "paused")]  # fmt: skip
    assert rows[1]["last_error"] == state.last_error and rows[0]["last_error"] is None
    assert key_id not in listed and secret not in listed and "aws-sink" not in listed


def scrape(port: int, path: str = "/metrics") -> str | None:
    """The daemon's answer to an authorized GET of ``path``; None while it does not listen."""
    import urllib.request

    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.read().decode()
    except OSError:
        return None


# -- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "needle"),
    [
        ({"type": "kafka"}, "sinks.s.type: must be one of"),
        ({"type": "sqs"}, "sinks.s.url: required key is missing"),
        ({"type": "sqs", "url": "sqs://q"}, "sinks.s.url: must be the queue's URL"),
        ({"type": "sns", "topic_arn": "my-topic"}, "sinks.s.topic_arn: must be the topic's ARN"),
        ({"type": "pubsub", "topic": "t"}, "sinks.s.topic: must be projects/PROJECT/topics/TOPIC"),
        ({"type": "azure-queue", "queue": ""}, "sinks.s.queue: must not be empty"),
        ({"type": "sqs", "url": "https://q/x", "topic": "projects/p/topics/t"},
         "sinks.s.topic: unknown key"),
        ({"type": "sqs", "url": "https://q/x", "batch": 0}, "sinks.s.batch: must be at least 1"),
        ({"type": "sqs", "url": "https://q/x", "kinds": ["moved"]}, "sinks.s.kinds[0]: must be"),
        ({"type": "sqs", "url": "https://q/x", "datasets": ["other"]},
         "sinks.s.datasets[0]: unknown dataset 'other'"),
        ({"type": "sqs", "url": "https://q/x", "integration": "az"},
         "sinks.s.integration: integration 'az' is of type azure, not s3"),
        ({"type": "pubsub", "topic": "projects/p/topics/t", "integration": "nope"},
         "sinks.s.integration: unknown integration 'nope'"),
    ],
)  # fmt: skip
def test_a_bad_sink_table_is_one_line(tmp_path: Path, table: dict[str, Any], needle: str) -> None:
    text = config_text(
        tmp_path,
        '[integrations.az]\ntype = "azure"\nconnection_string = "env:C"\n'
        + sink_table("s", **table),
    )
    (tmp_path / "syncd.toml").write_text(text)
    proc = cli("run", "--config", str(tmp_path / "syncd.toml"), "--db", str(tmp_path / "c.db"))
    assert proc.returncode == 2 and needle in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_sink_and_a_webhook_cannot_share_a_name(tmp_path: Path) -> None:
    text = config_text(
        tmp_path,
        '[webhooks.out]\nurl = "http://127.0.0.1:1/x"\nsecret = "env:S"\n'
        + sink_table("out", type="sqs", url="https://q/x"),
    )
    (tmp_path / "syncd.toml").write_text(text)
    proc = cli("run", "--config", str(tmp_path / "syncd.toml"), "--db", str(tmp_path / "c.db"))
    assert proc.returncode == 2 and "sinks.out: a webhook has this name too" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_default_batch_by_type(tmp_path: Path) -> None:
    text = config_text(
        tmp_path,
        sink_table("a", type="azure-queue", queue="q")
        + sink_table("b", type="sqs", url="https://q/x")
        + sink_table("c", type="sns", topic_arn="arn:aws:sns:eu-west-1:123456789012:t", batch=7),
    )
    (tmp_path / "syncd.toml").write_text(text)
    found = load_daemon_config(str(tmp_path / "syncd.toml")).sinks
    assert {n: s.batch for n, s in found.items()} == {"a": 20, "b": 100, "c": 7}


# -- Pub/Sub, through the seam -----------------------------------------------------------------


def a_batch(count: int, key_length: int = 10) -> Batch:
    found = [
        Change(cursor=i, kind="created", source="sync", at="2026-12-07T00:00:00Z",
               dataset="files", key=f"{i:06d}" + "k" * key_length, item={"size": i})
        for i in range(1, count + 1)
    ]  # fmt: skip
    return Batch("ps", 0, count, found)


@pytest.fixture
def nowhere(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A Pub/Sub "emulator" address where nothing listens: the real client, no service."""
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", f"127.0.0.1:{free_port()}")
    yield "projects/p/topics/changes"


async def test_pubsub_messages_and_outcomes(tmp_path: Path, nowhere: str) -> None:
    """The message a batch becomes is a real PubsubMessage: the webhook body with ``sink``,
    the batch id as its attribute; one over 10 MB is refused naming batch without a call;
    with no service, sending fails and is retried (not a pause)."""
    from google.api_core import exceptions

    (tmp_path / "syncd.toml").write_text(
        config_text(tmp_path, sink_table("ps", type="pubsub", topic=nowhere, timeout=0.5))
    )
    config = load_daemon_config(str(tmp_path / "syncd.toml")).sinks["ps"]
    sender = sinks.open_sender(config)
    try:
        batch = a_batch(3)
        message, size = sender._message(batch)
        assert dict(message.attributes) == {"batch-id": batch.id} and size < 1000
        body = json.loads(message.data)
        assert body == {"sink": "ps", "changes": [c.public() for c in batch.changes], "next": 3}

        big = a_batch(1000, key_length=10_500)
        refused = await sender(big)
        assert (refused.ok, refused.retry) == (False, False)
        assert "over Pub/Sub's limit of 10,000,000" in refused.error
        assert "lower batch in [sinks.ps]" in refused.error

        failed = await sender(batch)
        assert (failed.ok, failed.retry) == (False, True) and failed.error
    finally:
        sender.close()
    # the SDK's refusals pause, its transient errors retry
    for exc, retry in ((exceptions.NotFound("no topic"), False),
                       (exceptions.PermissionDenied("no"), False),
                       (exceptions.ServiceUnavailable("busy"), True),
                       (exceptions.TooManyRequests("slow down"), True)):  # fmt: skip
        assert sinks.outcome_of(exc, "pubsub x").retry is retry, exc


def test_azure_body_carries_the_batch_id() -> None:
    batch = a_batch(2)
    body = json.loads(sinks.body("q", batch, with_id=True))
    assert body["id"] == batch.id and body["next"] == 2 and len(body["changes"]) == 2
    assert base64.b64encode(json.dumps(body).encode())  # what is sent: base64 of this JSON


async def test_retention_keeps_what_a_sink_has_not_delivered(
    tmp_path: Path, fast_retries: None, aws: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With retention 0 the daemon prunes whatever every consumer has: a sink whose queue does
    not exist (paused at cursor 0) keeps the whole log through several prunes."""
    from syncd import api

    rounds: list[tuple[int, int]] = []
    prune = api.prune_changes

    def counted(*args: Any, **kwargs: Any) -> tuple[int, int]:
        rounds.append(result := prune(*args, **kwargs))
        return result

    monkeypatch.setattr(api, "prune_changes", counted)
    missing = sqs_target(aws).fields["url"].rsplit("/", 1)[0] + "/no-such-queue"
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    (tmp_path / "syncd.toml").write_text(
        config_text(src, sink_table("stuck", type="sqs", url=missing))
    )
    config = dataclasses.replace(load_daemon_config(str(tmp_path / "syncd.toml")), retention=0)
    db = str(tmp_path / "c.db")
    daemon = Daemon(config, db, poll_seconds=1)
    task = asyncio.create_task(daemon.run())
    try:
        await until(lambda: (s := head_and_state(db, "stuck")[1]) and s.paused, "the pause")
        seen = len(rounds)
        await until(lambda: len(rounds) >= seen + 2, "two prunes after the pause")
    finally:
        daemon.stop.set()
        await asyncio.wait_for(task, 60)
    head, state = head_and_state(db, "stuck")
    catalog = Catalog.open_reader(db)
    try:
        assert head >= 1 and changes.pruned(catalog.db) == 0 and state and state.cursor == 0
    finally:
        catalog.close()


def test_a_batch_in_flight_cut_smaller_skips_nothing(catalogs: Any, tmp_path: Path) -> None:
    """The delivery core on sqlite and PostgreSQL: a batch of 5 in flight (refused, say for
    size), then the consumer's batch lowered to 2: the batch is cut again as (0, 2] with a new
    id, and acknowledging it moves the cursor to 2, not 5 (before, it went to 5: changes 3..5
    were never sent)."""
    from syncd import api

    catalog = catalogs()
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    for i in range(5):
        (src / f"f{i}.txt").write_text(str(i))
    asyncio.run(api.sync(catalog, "files", source=str(src)))
    db = catalog.db
    everything = delivery.Filters()
    delivery.ensure(db, "s", "sink")
    big, _ = delivery.next_batch(db, "s", everything, 5)
    assert big and (big.after, big.end) == (0, 5)
    assert delivery.pause(db, big, "too large")
    delivery.resume(db, "s")
    small, _ = delivery.next_batch(db, "s", everything, 2)
    assert small and (small.after, small.end) == (0, 2) and small.id != big.id
    assert [c.cursor for c in small.changes] == [1, 2]
    assert delivery.next_batch(db, "s", everything, 2)[0] == small  # stable from now on
    assert not delivery.acknowledge(db, big)  # the old range is no longer in flight
    assert delivery.acknowledge(db, small) and delivery.get(db, "s").cursor == 2
    rest = []
    while (batch := delivery.next_batch(db, "s", everything, 2)[0]) is not None:
        rest += [c.cursor for c in batch.changes]
        assert delivery.acknowledge(db, batch)
    assert rest == [3, 4, 5]


async def test_a_stop_as_the_log_changes_ends_the_deliverer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deliverer waiting for changes is cancelled (the daemon stops) just as a change is
    signalled, at each point of the wake-up: it ends every time. Before, `asyncio.wait_for`
    (Python 3.11) swallowed a cancellation that came once the signal had fired: the
    deliverer went on and the daemon's stop waited for it forever."""
    from syncd.daemon.catalog_thread import CatalogThread
    from syncd.feed.delivery import Deliverer, Filters, Outcome
    from syncd.store.changes import ChangeSignal

    monkeypatch.setattr(delivery, "POLL_SECONDS", 30.0)  # only the signal wakes it

    async def send(batch: Batch) -> Outcome:
        raise AssertionError("the log is empty: nothing to send")

    catalog = CatalogThread(str(tmp_path / "c.db"), create=True)
    await catalog.start()
    try:
        for yields in range(8):
            signal = ChangeSignal()
            deliverer = Deliverer("s", "sink", catalog, send, filters=Filters(), batch=10,
                                  fail_after=60, signal=signal, owner="me")  # fmt: skip
            task = asyncio.create_task(deliverer.run())
            await until(lambda s=signal: s.waiters == 1, "the deliverer to wait for changes")
            signal.pulse()
            for _ in range(yields):
                await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, 10)
    finally:
        await catalog.close()


async def test_a_stop_as_the_folder_changes_ends_the_watch(tmp_path: Path) -> None:
    """The same for the folder watch: stopped just as it is woken, at each point of the
    wake-up, it ends every time (before, a swallowed cancellation kept it running and
    ``stop()`` - the daemon's shutdown - waited forever)."""
    from syncd.daemon.watch import FolderWatch

    async def sink(events: list[Any]) -> None:
        pass

    for yields in range(8):
        watch = FolderWatch(str(tmp_path), sink, settle=30)
        await watch.start()
        # waiting for a wake-up (nothing due for 30s): its one waiter is the settle loop
        await until(lambda w=watch: len(w._wake._waiters) == 1, "the watch to wait")
        watch._wake.set()
        for _ in range(yields):
            await asyncio.sleep(0)
        await asyncio.wait_for(watch.stop(), 10)


def test_sinks_replay_resume_and_ls_from_the_cli(tmp_path: Path) -> None:
    """`sinks replay` of a configured sink starts it at the cursor given; `ls` shows it with
    its lag; an unknown sink or a webhook's name is one line, exit 2."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"f{i}.txt").write_text(str(i))
    config = tmp_path / "syncd.toml"
    config.write_text(
        config_text(
            src, sink_table("out", type="sqs", url="https://sqs.eu-west-1.amazonaws.com/1/q")
        )
    )
    db = str(tmp_path / "c.db")
    assert cli("sync", "--config", str(config), "--db", db).returncode == 0
    replayed = cli("sinks", "replay", "out", "--from", "1", "--db", db, "--config", str(config))
    assert replayed.stdout.strip() == "sink 'out' delivers again from cursor 1", replayed.stderr
    row = json.loads(cli("sinks", "ls", "--json", "--db", db, "--config", str(config)).stdout)
    assert (row["name"], row["type"], row["cursor"], row["lag"], row["state"]) == (
        "out", "sqs", 1, 2, "ok",
    )  # fmt: skip
    assert row["target"] == "https://sqs.eu-west-1.amazonaws.com/1/q"
    catalog = Catalog.open(db, create=False)
    try:
        delivery.ensure(catalog.db, "hook", "webhook")
    finally:
        catalog.close()
    for args, needle in (
        (("replay", "nope", "--from", "0"), "unknown sink 'nope': declare [sinks.nope]"),
        (("resume", "nope"), "unknown sink 'nope'"),
        (("resume", "hook"), "'hook' is a webhook, not a sink: use `syncd webhooks`"),
        (("replay", "out", "--from", "99"), "cursor 99 is not in the change log"),
    ):
        failed = cli("sinks", *args, "--db", db, "--config", str(config))
        assert failed.returncode == 2 and needle in failed.stderr, failed.stderr
        assert len(failed.stderr.strip().splitlines()) == 1
