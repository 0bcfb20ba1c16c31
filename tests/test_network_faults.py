"""Network faults at a rate, between the SDKs and the real emulators (``tests.proxy``).

Every request through the proxy fails with probability :data:`RATE` with one of: S3's 503
SlowDown, a 500, a connection reset, a slow answer, or a body cut short (its Content-Length
promises more than is sent). At that rate ``syncd sync``, ``pull``, ``push`` and the queue
consumers finish and the result equals the source; with every request failing they stop with
one clear line, and what was there before is intact (nothing deleted, no partial file).

Draws are per request line and reproducible from :data:`SEED` (bucket names are masked;
``SYNCD_TEST_FAULT_SEED`` sets it).
Runs with every request failing set ``SYNCD_RETRY_ATTEMPTS=2``: what is tested there is how a
command gives up, not how long it tries.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from providers import open_driver
from syncd.daemon.queues import open_consumer
from tests.conftest import Backend, dataset_state, unique_bucket
from tests.emulators import Emulator
from tests.proxy import FAILING, FaultProxy
from tests.test_pull_push import finals, proxied_env, put_all, syncd, temp_files, tree
from tests.test_queue_consumers import (
    Sink,
    event_grid,
    queue_length,
    s3_notification,
    until,
    visible_and_hidden,
)
from tests.test_sync_cli import summary

RATE = 0.2
#: SYNCD_TEST_FAULT_SEED replays (or varies) the draws; the proxy's docstring says how
SEED = int(os.environ.get("SYNCD_TEST_FAULT_SEED", "12"))
PREFIX = "data/"
#: tens of objects: enough requests for every kind of fault, few enough for a quick suite
N = 30
GIVE_UP_FAST = {"SYNCD_RETRY_ATTEMPTS": "2"}

CLOUDS = pytest.mark.parametrize("backend", ["s3", "gcs", "azure"], indirect=True)


def objects(n: int = N, tag: str = "v1") -> dict[str, bytes]:
    """``n`` small files of distinct sizes, some in folders, keyed relative to PREFIX."""
    return {
        (f"d{i % 3}/" if i % 2 else "") + f"f{i:02d}.bin": f"{tag}:{i}:".encode() * (i + 1)
        for i in range(n)
    }


@pytest.fixture
def proxy(backend: Backend) -> Iterator[FaultProxy]:
    p = FaultProxy(backend.emulator.url)
    yield p
    p.close()


def config(tmp: Path, backend: Backend, bucket: str) -> Path:
    """A config with a small listing page, so a sync makes enough requests to meet faults;
    the endpoint comes from the (proxied) environment."""
    cfg = tmp / "syncd.toml"
    cfg.write_text(
        f'[drivers.d]\ntype = "{backend.name}"\nbucket = "{bucket}"\npath = "{PREFIX}"\n'
        'page_size = 2\n\n[datasets.ds]\ndriver = "d"\n'
    )
    return cfg


async def bucket_state(driver: Any) -> dict[str, tuple[int, str]]:
    return {o.key: (o.size, o.etag) async for page in driver.list(PREFIX) for o in page}


async def bucket_bytes(driver: Any) -> dict[str, bytes]:
    return {k[len(PREFIX) :]: await driver.read(k) for k in await bucket_state(driver)}


async def contents(backend: Backend, bucket: str) -> dict[str, str]:
    """Each object's content MD5 (hex), by path under PREFIX, read past the fault proxy. On GCS
    from the listing's ``md5Hash``: fake-gcs-server's media links point at the host an upload
    came by (the proxy), so a read of the bytes would go through it."""
    async with open_driver(backend.config(bucket)) as driver:
        if backend.name == "gcs":
            return {
                o.key[len(PREFIX) :]: o.md5 or ""
                async for page in driver.list(PREFIX)
                for o in page
            }
        return {k: md5_of(v) for k, v in (await bucket_bytes(driver)).items()}


def md5_of(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def digests(files: dict[str, bytes]) -> dict[str, str]:
    return {rel: md5_of(data) for rel, data in files.items()}


def first_sync(backend: Backend, bucket: str, db: Path) -> dict[str, Any]:
    """Create dataset ``ds`` on ``bucket``'s ``PREFIX`` with a sync straight to the emulator
    (no proxy); its summary."""
    return summary(
        syncd("sync", backend.source(bucket, PREFIX), "--dataset", "ds", "--db", str(db),
              env=backend.env)
    )  # fmt: skip


def failed_cleanly(proc: Any) -> str:
    """A command that failed as the rules say: non-zero, one error line (after the retries'
    one-line warnings), no traceback."""
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("syncd: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], (proc.stderr, proc.stdout)
    assert all(line.startswith("syncd: WARNING: ") for line in lines[:-1]), proc.stderr
    assert "Traceback" not in proc.stderr and "syncd: internal error" not in proc.stderr
    return errors[0]


def met_faults(proxy: FaultProxy, kinds: tuple[str, ...] = FAILING) -> None:
    """The run really met faults that fail a request (else it proved nothing); the counts are
    printed for the README's table (``pytest -s``)."""
    proxy.wait_idle()
    with proxy.lock:
        print(f"\nfaults: {proxy.requests} requests, injected {dict(proxy.injected)}")
        assert set(proxy.injected) & set(kinds), (proxy.injected, proxy.requests)


@CLOUDS
async def test_sync_at_a_fault_rate_equals_the_bucket_and_fails_cleanly_at_every_request(
    backend: Backend, proxy: FaultProxy, tmp_path: Path
) -> None:
    bucket = backend.new_bucket()
    db = tmp_path / "c.db"
    args = ("sync", "--config", str(config(tmp_path, backend, bucket)), "--dataset", "ds")
    args += ("--db", str(db))
    env = proxied_env(backend, proxy)
    async with open_driver(backend.config(bucket)) as driver:
        files = objects()
        await put_all(driver, files)
        proxy.inject(RATE, seed=SEED, mask=bucket)
        summary(syncd(*args, env=env))
        assert dataset_state(str(db)) == await bucket_state(driver)

        # overwrites, deletes and new objects, synced at the same rate
        changed = {rel: b"changed " + data for rel, data in list(files.items())[:6]}
        await put_all(driver, changed | objects(6, "new"))
        for rel in list(files)[-6:]:
            await driver.delete(PREFIX + rel)
        summary(syncd(*args, env=env))
        assert dataset_state(str(db)) == await bucket_state(driver)
        met_faults(proxy)

        # every request fails: one line, and the dataset as it was (the deletes not applied)
        before = dataset_state(str(db))
        for rel in list(files)[:10]:
            await driver.delete(PREFIX + rel)
        proxy.inject(1.0, FAILING, seed=SEED, mask=bucket)
        line = failed_cleanly(syncd(*args, env={**env, **GIVE_UP_FAST}))
        assert backend.name in line and bucket in line
        assert dataset_state(str(db)) == before
        met_faults(proxy, FAILING)

        proxy.inject(0.0)  # the network is back: the next sync converges
        summary(syncd(*args, env=env))
        assert dataset_state(str(db)) == await bucket_state(driver)


@CLOUDS
async def test_pull_at_a_fault_rate_is_byte_for_byte_and_leaves_no_partial_file(
    backend: Backend, proxy: FaultProxy, tmp_path: Path
) -> None:
    bucket = backend.new_bucket()
    db, out = tmp_path / "c.db", tmp_path / "out"
    files = objects()
    async with open_driver(backend.config(bucket)) as driver:
        await put_all(driver, files)
        first_sync(backend, bucket, db)
        pull = ("pull", "--dataset", "ds", str(out), "--db", str(db))
        env = proxied_env(backend, proxy)
        proxy.inject(RATE, seed=SEED, mask=bucket)
        result = summary(syncd(*pull, env=env))
        assert result["transferred"] == len(files) and result["failed"] == 0
        assert tree(out) == files
        met_faults(proxy)

        # new bytes for every file, pulled while every request fails: each file keeps its old
        # bytes (no partial file under a final name, no temp file left behind)
        changed = {rel: b"second version " + data for rel, data in files.items()}
        await put_all(driver, changed)
        summary(syncd("sync", "--dataset", "ds", "--db", str(db), env=backend.env))
        proxy.inject(1.0, FAILING, seed=SEED, mask=bucket)
        failed_cleanly(syncd(*pull, env={**env, **GIVE_UP_FAST}))
        assert finals(out) == files and temp_files(out) == []

        proxy.inject(RATE, seed=SEED + 1, mask=bucket)
        summary(syncd(*pull, env=env))
        assert tree(out) == changed


@CLOUDS
async def test_push_at_a_fault_rate_uploads_every_file_and_deletes_nothing_when_all_fail(
    backend: Backend, proxy: FaultProxy, tmp_path: Path
) -> None:
    bucket = backend.new_bucket()
    db, src = tmp_path / "c.db", tmp_path / "src"
    files = objects()
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    first_sync(backend, bucket, db)
    push = ("push", str(src), "--dataset", "ds", "--db", str(db))
    env = proxied_env(backend, proxy)
    async with open_driver(backend.config(bucket)) as driver:
        proxy.inject(RATE, seed=SEED, mask=bucket)
        result = summary(syncd(*push, env=env))
        assert result["transferred"] == len(files) and result["failed"] == 0
        met_faults(proxy)
        assert await contents(backend, bucket) == digests(files)
        # the items written from the uploads' answers are what a listing sees
        assert dataset_state(str(db)) == await bucket_state(driver)

        # every request fails: nothing is deleted, no object is half-written, the items stay
        items = dataset_state(str(db))
        changed = {rel: b"second version " + data for rel, data in files.items()}
        for rel, data in changed.items():
            (src / rel).write_bytes(data)
        proxy.inject(1.0, FAILING, seed=SEED, mask=bucket)
        failed_cleanly(syncd(*push, env={**env, **GIVE_UP_FAST}))
        # a cut-short answer comes after the service stored the upload: such an object holds
        # the new bytes, whole, and every other one the old; an item changes only to what its
        # object now is (S3 takes the headers of a PUT's empty answer cut short as an answer)
        now = await contents(backend, bucket)
        assert set(now) == set(files)
        assert all(now[rel] in (md5_of(files[rel]), md5_of(changed[rel])) for rel in files)
        after, listed = dataset_state(str(db)), await bucket_state(driver)
        assert set(after) == set(items)
        assert all(after[key] in (items[key], listed[key]) for key in items)

        proxy.inject(RATE, seed=SEED + 1, mask=bucket)
        summary(syncd(*push, env=env))
        assert await contents(backend, bucket) == digests(changed)
        assert dataset_state(str(db)) == await bucket_state(driver)


# -- the daemon's queue consumers -------------------------------------------------------------


def one_line_errors(caplog: pytest.LogCaptureFixture, name: str) -> list[str]:
    """The consumer's error lines: each one line naming the queue, none with a traceback."""
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert lines, "the consumer logged no error"
    for line in lines:
        assert "\n" not in line and line.startswith(f"{name}: "), line
    assert all(r.exc_info is None for r in caplog.records)
    print("\n".join(["", *sorted(set(lines))]))
    return lines


async def consume(consumer: Any, sink: Sink, condition: Any, what: str) -> None:
    """Run ``consumer`` into ``sink`` until ``condition()`` holds, then stop it."""
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(sink, stop))
    try:
        await until(condition, what, timeout=90)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=60)


@pytest.fixture
def sqs_proxy(moto: Emulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, str, Any]]:
    """A fresh queue; its direct client; the proxy the consumer's requests go through."""
    client = boto3.client("sqs", endpoint_url=moto.url)
    name = unique_bucket("q")
    url = client.create_queue(QueueName=name, Attributes={"VisibilityTimeout": "1"})["QueueUrl"]
    p = FaultProxy(moto.url)
    monkeypatch.setenv("AWS_ENDPOINT_URL", p.url)
    yield client, url, p
    p.close()


async def test_sqs_consumer_at_a_fault_rate_delivers_every_event_and_drains_the_queue(
    sqs_proxy: tuple[Any, str, FaultProxy], caplog: pytest.LogCaptureFixture
) -> None:
    client, url, proxy = sqs_proxy
    sent = {f"raw/{i:02d}" for i in range(N)}
    for i, key in enumerate(sorted(sent)):
        client.send_message(QueueUrl=url, MessageBody=s3_notification(key, f"{i + 1:02x}"))
    proxy.inject(RATE, seed=SEED)
    consumer = open_consumer("s3-events", "sqs", url=url, wait_seconds=1)
    sink = Sink()
    # at least once: a delete whose answer was lost brings a message back, never loses one
    await consume(
        consumer,
        sink,
        lambda: {e.key for e in sink.events} == sent and visible_and_hidden(client, url) == 0,
        "every event delivered and the queue drained",
    )
    met_faults(proxy)

    # every request fails: nothing delivered, nothing acknowledged, every message kept
    caplog.clear()
    for i in range(5):
        client.send_message(QueueUrl=url, MessageBody=s3_notification(f"late/{i}", "ff"))
    proxy.inject(1.0, FAILING, seed=SEED)
    caplog.set_level(logging.ERROR, logger="syncd.daemon.queues")
    failing = open_consumer("s3-events", "sqs", url=url, wait_seconds=1)
    late = Sink()
    await consume(failing, late, lambda: failing.stats.errors >= 3, "three failed receives")
    assert late.events == [] and failing.stats.acknowledged == 0
    one_line_errors(caplog, "s3-events")
    await until(lambda: visible_and_hidden(client, url) == 5, "the five messages kept")


@pytest.fixture
def azure_queue_proxy(azurite_queue: Emulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from azure.storage.queue import QueueClient

    conn = azurite_queue.extra["connection_string"]
    client = QueueClient.from_connection_string(conn, unique_bucket("blob-events"))
    client.create_queue()
    p = FaultProxy(azurite_queue.url)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", conn.replace(azurite_queue.url, p.url))
    yield client, p
    p.close()


async def test_azure_queue_consumer_at_a_fault_rate_delivers_every_event_and_drains(
    azure_queue_proxy: tuple[Any, FaultProxy], caplog: pytest.LogCaptureFixture
) -> None:
    client, proxy = azure_queue_proxy
    sent = {f"f{i:02d}.txt" for i in range(N)}
    for i, name in enumerate(sorted(sent)):
        client.send_message(json.dumps(event_grid(name, i + 1)))
    proxy.inject(RATE, seed=SEED, mask=client.queue_name)
    consumer = open_consumer("blob-events", "azure-queue", queue=client.queue_name)
    consumer.visibility = 1  # a message whose delete failed comes back soon
    sink = Sink()
    await consume(
        consumer,
        sink,
        lambda: {e.key for e in sink.events} == sent and queue_length(client) == 0,
        "every event delivered and the queue drained",
    )
    met_faults(proxy)
    assert consumer.stats.poisoned == 0  # a failed delivery is not the message's fault

    caplog.clear()
    for i in range(5):
        client.send_message(json.dumps(event_grid(f"late{i}.txt", 100 + i)))
    proxy.inject(1.0, FAILING, seed=SEED, mask=client.queue_name)
    caplog.set_level(logging.ERROR, logger="syncd.daemon.queues")
    failing = open_consumer("blob-events", "azure-queue", queue=client.queue_name)
    failing.visibility = 1
    late = Sink()
    await consume(failing, late, lambda: failing.stats.errors >= 3, "three failed receives")
    assert late.events == [] and failing.stats.acknowledged == 0
    one_line_errors(caplog, "blob-events")
    await until(lambda: queue_length(client) == 5, "the five messages kept")
