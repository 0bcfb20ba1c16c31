"""The daemon under faults of its surroundings (issue 21): a PostgreSQL catalog that restarts,
a sqlite catalog deleted or replaced under it, a shutdown during a long poll, a catalog the
CLI built served by ``syncd serve``, a busy port, a dataset that keeps failing.

``syncd run`` and ``syncd serve`` run as subprocesses on loopback against moto and a throwaway
PostgreSQL server of this test's own (it is stopped and started again). Every wait is on a
condition with a generous deadline.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from syncd.store.stamps import parse, stamp
from tests import pg
from tests.conftest import unique_bucket
from tests.emulators import Emulator, free_port, moto_env, notify_queue
from tests.test_daemon_e2e import TOKEN, Daemon
from tests.waiting import wait_for

CLI = (sys.executable, "-m", "syncd.cli")


def start(args: list[str], env: dict[str, str], port: int) -> Daemon:
    """Start ``syncd ARGS`` and return once it says it is up (its stderr kept in ``log``)."""
    proc = subprocess.Popen(
        [*CLI, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    assert proc.stderr is not None
    seen: list[str] = []
    for line in proc.stderr:
        seen.append(line)
        if "running on catalog" in line:
            break
    else:
        raise AssertionError(f"syncd {args[0]} did not start:\n" + "".join(seen))
    daemon = Daemon(proc, port, seen)

    def drain() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            daemon.log.append(line)

    threading.Thread(target=drain, daemon=True).start()
    return daemon


def post(daemon: Daemon, path: str, body: bytes) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{daemon.port}{path}", method="POST", data=body
    )
    request.add_header("Authorization", f"Bearer {TOKEN}")
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def s3_event(bucket: str, key: str, size: int, etag: str, seq: int) -> bytes:
    """An S3 notification for one created object, as a webhook would POST it."""
    record = {
        "eventSource": "aws:s3",
        "eventTime": "2026-12-07T00:00:00.000Z",
        "eventName": "ObjectCreated:Put",
        "s3": {
            "bucket": {"name": bucket},
            "object": {"key": key, "size": size, "eTag": etag, "sequencer": f"{seq:016X}"},
        },
    }
    return json.dumps({"Records": [record]}).encode()


@dataclass
class S3World:
    s3: Any
    sqs: Any
    bucket: str
    queue_url: str
    env: dict[str, str]
    config: Path
    port: int

    def bucket_state(self) -> dict[str, tuple[int, str]]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        return {
            o["Key"]: (o["Size"], o["ETag"].strip('"'))
            for p in pages
            for o in p.get("Contents", [])
        }

    def queued(self) -> int:
        attrs = self.sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["All"])
        a = attrs["Attributes"]
        return int(a["ApproximateNumberOfMessages"]) + int(
            a["ApproximateNumberOfMessagesNotVisible"]
        )


@pytest.fixture
def s3_world(moto: Emulator, tmp_path: Path) -> S3World:
    """A bucket whose notifications go to an SQS queue (visibility timeout 2 s), one object in
    it, and a daemon config: one dataset (interval one hour: only events bring changes in
    after the first reconcile), the queue, the API."""
    s3 = boto3.client("s3", endpoint_url=moto.url)
    sqs = boto3.client("sqs", endpoint_url=moto.url)
    bucket = unique_bucket()
    s3.create_bucket(Bucket=bucket)
    queue_url = sqs.create_queue(
        QueueName=f"events-{bucket}", Attributes={"VisibilityTimeout": "2"}
    )["QueueUrl"]
    notify_queue(s3, sqs, bucket, queue_url)
    s3.put_object(Bucket=bucket, Key="before.jpg", Body=b"before")
    port = free_port()
    config = tmp_path / "syncd.toml"
    config.write_text(
        f'[daemon]\ninterval = 3600\n[drivers.photos]\ntype = "s3"\nbucket = "{bucket}"\n'
        f'endpoint = "{moto.url}"\n[datasets.photos]\ndriver = "photos"\n'
        f'[queues.s3-events]\ntype = "sqs"\nurl = "{queue_url}"\n'
        f'[server]\nhost = "127.0.0.1"\nport = {port}\n'
    )
    env = {
        **os.environ,
        **moto_env(moto),
        "SYNCD_API_TOKEN": TOKEN,
    }
    return S3World(s3, sqs, bucket, queue_url, env, config, port)


def healthz(daemon: Daemon) -> tuple[int, Any]:
    return daemon.api("/healthz", token=None)


def stop(daemon: Daemon) -> None:
    if daemon.proc.poll() is None:
        daemon.proc.send_signal(signal.SIGTERM)
        daemon.proc.wait(timeout=120)


# -- 1. a PostgreSQL catalog that restarts ----------------------------------------------------


@pytest.fixture
def own_postgres() -> Iterator[pg.PostgresServer]:
    """A server of this test's own: it is stopped and started again."""
    server = pg.start_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.slow
def test_the_daemon_rides_out_a_postgresql_restart(
    s3_world: S3World, own_postgres: pg.PostgresServer
) -> None:
    w = s3_world
    url = own_postgres.create_database("catalog")
    daemon = start(["run", "--config", str(w.config), "--db", url], w.env, w.port)
    try:
        wait_for(
            lambda: daemon.items("photos") == w.bucket_state(),
            "the first reconcile",
            log=daemon.log,
        )
        own_postgres.halt()
        # the catalog is away: the daemon says so, answers 503 JSON (never 500), stays up
        status, body = wait_for(
            lambda: (r := healthz(daemon))[0] == 503 and r, "healthz 503", log=daemon.log
        )
        assert body["status"] == "unavailable" and "cannot reach" in body["error"], body
        status, body = daemon.api("/api/v1/datasets")
        assert status == 503 and "error" in body, (status, body)
        status, body = post(daemon, "/api/v1/events", s3_event(w.bucket, "hook.jpg", 4, "e1", 1))
        assert status == 503 and "error" in body, (status, body)
        # changes meanwhile: their notifications wait on the queue, none acknowledged
        for i in range(5):
            w.s3.put_object(Bucket=w.bucket, Key=f"during/{i}.jpg", Body=b"x" * (i + 1))
        w.s3.delete_object(Bucket=w.bucket, Key="before.jpg")
        wait_for(lambda: w.queued() == 6, "six notifications queued", log=daemon.log)
        assert daemon.proc.poll() is None
        own_postgres.resume()
        # back by itself: healthy again, every queued event lands, the webhook's too
        wait_for(lambda: healthz(daemon) == (200, {"status": "ok"}), "healthz ok", log=daemon.log)
        w.s3.put_object(Bucket=w.bucket, Key="hook.jpg", Body=b"hook")
        etag = w.bucket_state()["hook.jpg"][1]
        assert post(daemon, "/api/v1/events", s3_event(w.bucket, "hook.jpg", 4, etag, 2))[0] == 200
        wait_for(lambda: daemon.items("photos") == w.bucket_state(), "every event", log=daemon.log)
        wait_for(lambda: w.queued() == 0, "every message acknowledged", log=daemon.log)
        text = "".join(daemon.log)
        assert text.count("catalog unreachable") == 1, text
        assert "catalog reachable again" in text and "Traceback" not in text, text
    finally:
        stop(daemon)
    assert daemon.proc.returncode == 0, "".join(daemon.log)


# -- 2. a sqlite catalog deleted, replaced, truncated under the daemon ------------------------


@pytest.mark.parametrize("fault", ["deleted", "replaced"])
def test_a_deleted_or_replaced_sqlite_catalog_stops_the_daemon_taking_events(
    s3_world: S3World, tmp_path: Path, fault: str
) -> None:
    w = s3_world
    # reconciles every second: each would open (and so create) the catalog anew
    w.config.write_text(w.config.read_text().replace("interval = 3600", "interval = 1"))
    db = tmp_path / "catalog.db"
    daemon = start(["run", "--config", str(w.config), "--db", str(db)], w.env, w.port)
    try:
        wait_for(
            lambda: daemon.items("photos") == w.bucket_state(),
            "the first reconcile",
            log=daemon.log,
        )
        if fault == "deleted":
            db.unlink()
        else:
            shutil.copyfile(db, tmp_path / "copy.db")
            os.replace(tmp_path / "copy.db", db)
        replaced_ino = db.stat().st_ino if fault == "replaced" else None
        status, body = wait_for(
            lambda: (r := healthz(daemon))[0] == 503 and r, "healthz 503", log=daemon.log
        )
        assert body["status"] == "unavailable" and f"was {fault}" in body["error"], body
        status, body = post(daemon, "/api/v1/events", s3_event(w.bucket, "hook.jpg", 4, "e", 1))
        assert status == 503 and f"was {fault}" in body["error"], (status, body)
        for i in range(3):
            w.s3.put_object(Bucket=w.bucket, Key=f"after/{i}.jpg", Body=b"x")
        wait_for(lambda: w.queued() == 3, "three notifications queued", log=daemon.log)
        # the scheduler's reconciles wait instead of creating a second catalog
        wait_for(
            lambda: any("reconciles wait for the catalog" in line for line in daemon.log),
            "the scheduler to wait",
            log=daemon.log,
        )
        assert daemon.proc.poll() is None
    finally:
        stop(daemon)
    text = "".join(daemon.log)
    assert text.count(f"was {fault}") == 1 and "Traceback" not in text, text
    # nothing acknowledged into a catalog that is not the daemon's, no new catalog made
    assert w.queued() == 3
    if fault == "deleted":
        assert not db.exists()
    else:
        assert db.stat().st_ino == replaced_ino


def test_a_truncated_catalog_is_unhealthy(s3_world: S3World, tmp_path: Path) -> None:
    w = s3_world
    db = tmp_path / "catalog.db"
    daemon = start(["run", "--config", str(w.config), "--db", str(db)], w.env, w.port)
    try:
        wait_for(
            lambda: daemon.items("photos") == w.bucket_state(),
            "the first reconcile",
            log=daemon.log,
        )
        assert healthz(daemon) == (200, {"status": "ok"})
        os.truncate(db, 0)  # the same file (its identity unchanged), emptied
        _status, body = wait_for(
            lambda: (r := healthz(daemon))[0] == 503 and r, "healthz 503", log=daemon.log
        )
        assert body["status"] == "unavailable" and body["error"], body
    finally:
        stop(daemon)


# -- 3. SIGTERM during a long poll --------------------------------------------------------------


def test_sigterm_cancels_the_long_poll_and_says_so(s3_world: S3World, tmp_path: Path) -> None:
    w = s3_world
    db = tmp_path / "catalog.db"
    # -vv: the SDK's debug lines show when a long poll (10 s) is in flight
    daemon = start(["-vv", "run", "--config", str(w.config), "--db", str(db)], w.env, w.port)
    try:
        wait_for(
            lambda: any("name=ReceiveMessage" in line for line in daemon.log),
            "a long poll in flight",
            log=daemon.log,
        )
        sent = time.monotonic()
        daemon.proc.send_signal(signal.SIGTERM)
        code = daemon.proc.wait(timeout=120)
        took = time.monotonic() - sent
    finally:
        stop(daemon)
    text = "".join(daemon.log)
    assert code == 0, text
    assert "the receive in flight was cancelled" in text, text
    assert text.count("syncd.daemon: stopping...") == 1 and text.count("syncd.daemon: stopped") == 1
    assert took < 10, f"exit took {took:.1f}s: it waited for the poll"


# -- 4. syncd serve over a catalog the CLI built --------------------------------------------------


def test_serve_counts_and_syncs_the_catalogs_datasets(s3_world: S3World, tmp_path: Path) -> None:
    w = s3_world
    db = tmp_path / "catalog.db"
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    for source, name in ((f"s3://{w.bucket}", "photos"), (str(folder), "disk")):
        done = subprocess.run(
            [*CLI, "sync", source, "--dataset", name, "--db", str(db)],
            env=w.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
    daemon = start(["serve", "--db", str(db), "--port", str(w.port)], w.env, w.port)
    try:
        assert "2 dataset(s)" in daemon.log[-1], daemon.log
        w.s3.put_object(Bucket=w.bucket, Key="new.jpg", Body=b"new")
        (folder / "b.txt").write_text("b")
        for name in ("photos", "disk"):
            status, body = post(daemon, f"/api/v1/datasets/{name}/sync", b"")
            assert status == 202 and body == {"dataset": name, "triggered": True}, (status, body)
        wait_for(lambda: daemon.items("photos") == w.bucket_state(), "photos", log=daemon.log)
        wait_for(lambda: set(daemon.items("disk")) == {"a.txt", "b.txt"}, "disk", log=daemon.log)
        status, body = post(daemon, "/api/v1/datasets/nope/sync", b"")
        assert status == 404, body
    finally:
        stop(daemon)
    assert daemon.proc.returncode == 0, "".join(daemon.log)


# -- 5. a busy port, a failing dataset, the schedule's times, the change counter -----------------


def test_a_busy_port_stops_the_daemon_before_any_reconcile(
    s3_world: S3World, tmp_path: Path
) -> None:
    w = s3_world
    db = tmp_path / "catalog.db"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", w.port))
        taken.listen()
        done = subprocess.run(
            [*CLI, "run", "--config", str(w.config), "--db", str(db)],
            env=w.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 2, done.stderr
    assert "address already in use" in done.stderr, done.stderr
    assert "reconciled" not in done.stderr, done.stderr
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM runs").fetchone() == (0,)
    assert w.queued() >= 1  # no event was taken off the queue either


def test_healthz_reports_failing_datasets_and_the_schedule_speaks_iso(
    s3_world: S3World, tmp_path: Path
) -> None:
    w = s3_world
    missing = tmp_path / "not-yet"
    config = w.config.read_text() + (
        f'[drivers.later]\ntype = "local"\nbucket = "{missing}"\n'
        '[datasets.later]\ndriver = "later"\nwatch = false\n'
    )
    w.config.write_text(config)
    db = tmp_path / "catalog.db"
    daemon = start(["run", "--config", str(w.config), "--db", str(db)], w.env, w.port)
    try:
        status, body = wait_for(
            lambda: (r := healthz(daemon))[1].get("status") == "degraded" and r,
            "healthz degraded",
            log=daemon.log,
        )
        assert status == 200 and set(body["failing"]) == {"later"}, body
        assert body["failing"]["later"]["failures"] >= 1, body
        assert "does not exist" in body["failing"]["later"]["last_error"], body
        missing.mkdir()
        assert post(daemon, "/api/v1/datasets/later/sync", b"")[0] == 202
        wait_for(lambda: healthz(daemon) == (200, {"status": "ok"}), "healthz ok", log=daemon.log)
        # an event from the queue counts as a change, with the queue as its path
        w.s3.put_object(Bucket=w.bucket, Key="evented.jpg", Body=b"e")
        wait_for(lambda: "evented.jpg" in daemon.items("photos"), "the event", log=daemon.log)
        metrics = daemon.api("/metrics")[1]
        assert (
            'syncd_items_changed_total{action="created",dataset="photos",via="s3-events"}'
            in metrics
        ), metrics
        status, body = wait_for(
            lambda: (
                (r := daemon.api("/api/v1/datasets/photos"))[1]["schedule"]["next_run_at"] and r
            ),
            "a next run time",
            log=daemon.log,
        )
        when = body["schedule"]["next_run_at"]
        assert isinstance(when, str) and when == stamp(parse(when)), when
    finally:
        stop(daemon)
