"""``syncd run`` end to end, as a subprocess on loopback (issue 9's acceptance test).

Sources: moto S3 with bucket notifications to a moto SQS queue; Azurite blob storage whose
Event Grid events the test enqueues on an Azurite queue (Azurite has no Event Grid); a local
folder with a watch. With ``interval = 3600`` nothing but the event paths can bring a change
in after the first reconcile. Then: the daemon is the one registered worker; the API answers; SIGTERM exits 0;
and a change made while the daemon was down, with the queue purged, is repaired by the
schedule after a restart.

Every wait is on a condition (the API's answer) with a generous deadline.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.conftest import unique_bucket
from tests.emulators import (
    AZURITE_ACCOUNT,
    AZURITE_KEY,
    Emulator,
    free_port,
    moto_env,
    notify_queue,
)
from tests.waiting import wait_for

TOKEN = "e2e-token-0123456789abcdef"
RUN = (sys.executable, "-m", "syncd.cli", "run")
LS = (sys.executable, "-m", "syncd.cli", "workers", "ls")


@dataclass
class Daemon:
    proc: subprocess.Popen[str]
    port: int
    log: list[str]  # its stderr, for the failure messages

    def api(self, path: str, *, token: str | None = TOKEN, method: str = "GET") -> tuple[int, Any]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            method=method,
            data=b"" if method == "POST" else None,
        )
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                body = resp.read().decode()
                kind = resp.headers.get_content_type()
                return resp.status, json.loads(body) if kind == "application/json" else body
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def items(self, dataset: str) -> dict[str, tuple[int, str]]:
        out: dict[str, tuple[int, str]] = {}
        cursor = ""
        while True:
            status, body = self.api(
                f"/api/v1/datasets/{dataset}/items?limit=2"
                + (f"&cursor={cursor}" if cursor else "")
            )
            assert status == 200, body
            out |= {i["key"]: (i["size"], i["etag"]) for i in body["items"]}
            if not body["next_cursor"]:
                return out
            cursor = body["next_cursor"]

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=120)


@dataclass
class World:
    tmp: Path
    s3: Any
    sqs: Any
    bucket: str
    queue_url: str
    blob: Any  # azure ContainerClient
    azure_queue: Any  # azure QueueClient
    folder: Path
    env: dict[str, str]
    config: Path
    db: Path
    port: int

    def start(self, config: Path | None = None, env: dict[str, str] | None = None) -> Daemon:
        """Start ``syncd run`` (``env``: extra variables, such as fault injection) and return
        once it says it is up."""
        proc = subprocess.Popen(
            [*RUN, "--config", str(config or self.config), "--db", str(self.db)],
            env={**self.env, **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:  # log lines may come first; the ready line says it is up
            seen.append(line)
            if "running on catalog" in line:
                break
        else:
            raise AssertionError("syncd run did not start:\n" + "".join(seen))
        daemon = Daemon(proc, self.port, seen)

        def drain() -> None:  # keep reading so a chatty daemon never blocks on a full pipe
            assert proc.stderr is not None
            for line in proc.stderr:
                daemon.log.append(line)

        threading.Thread(target=drain, daemon=True).start()
        return daemon

    def s3_state(self) -> dict[str, tuple[int, str]]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        return {
            o["Key"]: (o["Size"], o["ETag"].strip('"'))
            for p in pages
            for o in p.get("Contents", [])
        }

    def blob_state(self) -> dict[str, tuple[int, str]]:
        return {b.name: (b.size, b.etag.strip('"')) for b in self.blob.list_blobs()}

    def folder_state(self) -> dict[str, tuple[int, str]]:
        out = {}
        for path in sorted(self.folder.rglob("*")):
            if path.is_file():
                st = path.stat()
                key = path.relative_to(self.folder).as_posix()
                out[key] = (st.st_size, f"{st.st_size:x}-{st.st_mtime_ns:x}")
        return out

    def blob_event(self, name: str, deleted: bool = False) -> None:
        """What Event Grid would put on the storage queue for a blob change (base64 JSON)."""
        event: dict[str, Any] = {
            "id": hashlib.sha1(f"{name}{time.time_ns()}".encode()).hexdigest(),
            "topic": f"/subscriptions/x/resourceGroups/r/providers/Microsoft.Storage/storageAccounts/{AZURITE_ACCOUNT}",
            "subject": f"/blobServices/default/containers/{self.blob.container_name}/blobs/{name}",
            "eventType": "Microsoft.Storage.BlobDeleted"
            if deleted
            else "Microsoft.Storage.BlobCreated",
            "eventTime": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "dataVersion": "",
            "metadataVersion": "1",
            "data": {
                "api": "DeleteBlob" if deleted else "PutBlob",
                "url": f"{self.blob.url}/{name}",
                "sequencer": f"{time.time_ns():032x}",
                "blobType": "BlockBlob",
            },
        }
        if not deleted:
            props = self.blob.get_blob_client(name).get_blob_properties()
            event["data"] |= {
                "contentLength": props.size,
                "eTag": props.etag,
                "contentType": props.content_settings.content_type,
            }
        body = base64.b64encode(json.dumps([event]).encode()).decode()
        self.azure_queue.send_message(body)


@pytest.fixture
def world(
    moto: Emulator, azurite: Emulator, azurite_queue: Emulator, tmp_path: Path
) -> Iterator[World]:
    yield make_world(moto, azurite, azurite_queue, tmp_path)


def make_world(
    moto: Emulator,
    azurite: Emulator,
    azurite_queue: Emulator,
    tmp_path: Path,
    *,
    page_size: int = 1000,
) -> World:
    """Fresh buckets, queues and a folder, one object in each source, and the daemon's
    config (``page_size`` for the S3 driver's listing pages)."""
    from azure.storage.blob import BlobServiceClient
    from azure.storage.queue import QueueClient

    s3 = boto3.client("s3", endpoint_url=moto.url)
    sqs = boto3.client("sqs", endpoint_url=moto.url)
    bucket = unique_bucket()
    s3.create_bucket(Bucket=bucket)
    queue_url = sqs.create_queue(QueueName=f"s3-events-{bucket}")["QueueUrl"]
    notify_queue(s3, sqs, bucket, queue_url)
    blob_ep = f"{azurite.url}/{AZURITE_ACCOUNT}"
    queue_ep = f"{azurite_queue.url}/{AZURITE_ACCOUNT}"
    conn = (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
        f"BlobEndpoint={blob_ep};QueueEndpoint={queue_ep};"
    )
    container = unique_bucket()
    blob = BlobServiceClient.from_connection_string(conn).create_container(container)
    queue_name = f"blob-events-{container}"[:63]
    azure_queue = QueueClient.from_connection_string(conn, queue_name)
    azure_queue.create_queue()
    folder = tmp_path / "folder"
    folder.mkdir()
    # something in each source before the daemon starts: the first reconcile brings it in
    s3.put_object(Bucket=bucket, Key="raw/before.jpg", Body=b"before")
    blob.upload_blob("docs/before.txt", b"before")
    (folder / "before.txt").write_text("before")

    port = free_port()
    config = tmp_path / "syncd.toml"
    config.write_text(
        daemon_config(
            moto.url, bucket, queue_url, container, queue_name, folder, port, 3600, page_size
        )
    )
    env = {
        **os.environ,
        **moto_env(moto),
        "AZURE_STORAGE_CONNECTION_STRING": conn,
        "SYNCD_API_TOKEN": TOKEN,
    }
    return World(
        tmp_path, s3, sqs, bucket, queue_url, blob, azure_queue, folder, env, config,
        tmp_path / "catalog.db", port,
    )  # fmt: skip


def daemon_config(
    moto_url: str,
    bucket: str,
    queue_url: str,
    container: str,
    queue_name: str,
    folder: Path,
    port: int,
    interval: int,
    page_size: int = 1000,
) -> str:
    return f"""
[daemon]
interval = {interval}

[drivers.images]
type = "s3"
bucket = "{bucket}"
path = "raw/"
endpoint = "{moto_url}"
page_size = {page_size}

[drivers.docs]
type = "azure"
bucket = "{container}"
path = "docs/"

[drivers.disk]
type = "local"
bucket = "{folder}"

[datasets.images]
driver = "images"

[datasets.docs]
driver = "docs"

[datasets.disk]
driver = "disk"
watch = true

[queues.s3-events]
type = "sqs"
url = "{queue_url}"

[queues.blob-events]
type = "azure-queue"
queue = "{queue_name}"

[server]
host = "127.0.0.1"
port = {port}
"""


def under(state: dict[str, tuple[int, str]], prefix: str) -> dict[str, tuple[int, str]]:
    return {k: v for k, v in state.items() if k.startswith(prefix)}


@pytest.mark.slow
def test_the_daemon_follows_every_source_through_events_alone(world: World) -> None:
    daemon = world.start()
    try:
        # the first reconcile
        for name, state in (
            ("images", lambda: under(world.s3_state(), "raw/")),
            ("docs", lambda: under(world.blob_state(), "docs/")),
            ("disk", world.folder_state),
        ):
            wait_for(lambda n=name, s=state: daemon.items(n) == s(), f"first reconcile of {name}")

        # the daemon is the catalog's one registered worker (several may share it: see
        # tests/test_workers.py), its API address recorded by its first heartbeat
        def registry() -> list[dict[str, Any]]:
            listed = subprocess.run(
                [*LS, "--db", str(world.db), "--json"],
                env=world.env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert listed.returncode == 0, listed.stderr
            return json.loads(listed.stdout)["workers"]

        workers = wait_for(
            lambda: (found := registry()) and found[0]["api"] and found, "the registry"
        )
        assert [w["pid"] for w in workers] == [daemon.proc.pid]
        assert workers[0]["api"] == f"http://127.0.0.1:{world.port}"

        # S3 through SQS: put, overwrite, delete
        world.s3.put_object(Bucket=world.bucket, Key="raw/new one.jpg", Body=b"new")
        world.s3.put_object(Bucket=world.bucket, Key="raw/before.jpg", Body=b"overwritten!")
        world.s3.put_object(Bucket=world.bucket, Key="raw/gone.jpg", Body=b"x")
        world.s3.delete_object(Bucket=world.bucket, Key="raw/gone.jpg")
        world.s3.put_object(Bucket=world.bucket, Key="other/not-mine.jpg", Body=b"x")
        wait_for(
            lambda: daemon.items("images") == under(world.s3_state(), "raw/"),
            "S3 changes through SQS",
            log=daemon.log,
        )

        # Azure through the storage queue
        world.blob.upload_blob("docs/new.txt", b"new")
        world.blob_event("docs/new.txt")
        world.blob.upload_blob("docs/before.txt", b"overwritten!", overwrite=True)
        world.blob_event("docs/before.txt")
        world.blob.upload_blob("docs/gone.txt", b"x")
        world.blob_event("docs/gone.txt")
        world.blob.delete_blob("docs/gone.txt")
        world.blob_event("docs/gone.txt", deleted=True)
        wait_for(
            lambda: daemon.items("docs") == under(world.blob_state(), "docs/"),
            "Azure changes through the storage queue",
            log=daemon.log,
        )

        # the local folder through the watch
        (world.folder / "sub").mkdir()
        (world.folder / "sub" / "new.txt").write_text("new")
        (world.folder / "before.txt").write_text("overwritten!")
        (world.folder / "gone.txt").write_text("x")
        (world.folder / "gone.txt").unlink()
        wait_for(
            lambda: daemon.items("disk") == world.folder_state(), "folder changes", log=daemon.log
        )

        # the API
        assert daemon.api("/api/v1/datasets", token=None)[0] == 401
        status, body = daemon.api("/api/v1/datasets")
        assert status == 200 and {d["name"] for d in body["datasets"]} == {"images", "docs", "disk"}
        status, metrics = daemon.api("/metrics")
        assert (
            status == 200 and 'syncd_events_total{outcome="created",source="s3-events"}' in metrics
        )
        runs = daemon.api("/api/v1/datasets/images/runs")[1]["runs"]
        assert len(runs) == 1  # one reconcile: everything after it came through events
    finally:
        code = daemon.stop()
    assert code == 0

    # changed while the daemon was down, and the notifications lost: the schedule repairs it
    world.s3.put_bucket_notification_configuration(
        Bucket=world.bucket, NotificationConfiguration={}
    )  # from here on, no event reaches the daemon
    world.s3.put_object(Bucket=world.bucket, Key="raw/while-down.jpg", Body=b"x")
    world.sqs.purge_queue(QueueUrl=world.queue_url)
    short = world.tmp / "short.toml"
    short.write_text(world.config.read_text().replace("interval = 3600", "interval = 2", 1))
    daemon = world.start(short)
    try:
        wait_for(
            lambda: daemon.items("images") == under(world.s3_state(), "raw/"), "repair at start"
        )
        # and again: with no event at all, only the interval brings it in
        world.s3.put_object(Bucket=world.bucket, Key="raw/no-event.jpg", Body=b"x")
        wait_for(
            lambda: daemon.items("images") == under(world.s3_state(), "raw/"), "repair by interval"
        )
    finally:
        assert daemon.stop() == 0
