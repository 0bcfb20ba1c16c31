"""Datasets and integrations created, changed and removed over the HTTP API while daemons run
(issue 24, items 1 and 2).

Real daemons (scheduler, catalog thread, queue consumer, server) run in the test's event loop
on moto S3 with bucket notifications to a moto SQS queue, from a config that declares no
dataset; requests go over HTTP. With ``interval = 3600`` nothing but an event or a trigger can
bring a change in after the first reconcile. Two workers share a PostgreSQL catalog in the
last test. Every wait is on a condition with a generous deadline.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from aiohttp import ClientSession

from syncd.config import load_daemon_config
from syncd.daemon.service import Daemon
from syncd.store.catalog import Catalog
from tests.conftest import unique_bucket
from tests.emulators import Emulator, free_port, moto_env, notify_queue

TOKEN = "runtime-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
KEYS = {"a.jpg": b"a", "b.txt": b"bb", "sub/c.jpg": b"ccc"}


async def until(condition: Callable[[], Awaitable[Any]], what: str, timeout: float = 90) -> Any:
    """Poll an async condition until it is truthy; fail after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    last: Any = None
    while asyncio.get_running_loop().time() < deadline:
        last = await condition()
        if last:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


@dataclass
class Running:
    daemon: Daemon
    task: asyncio.Task[None]
    session: ClientSession

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.daemon.port}"

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body))
        async with self.session.request(method, self.base + path, data=data, headers=AUTH) as resp:
            return resp.status, await resp.json(content_type=None)

    async def keys(self, name: str) -> set[str] | None:
        status, body = await self.call("GET", f"/api/v1/datasets/{name}/items?limit=1000")
        return {i["key"] for i in body["items"]} if status == 200 else None


@pytest.fixture
def aws(moto: Emulator, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any, str, str]:
    """A moto bucket holding :data:`KEYS` whose notifications go to a fresh SQS queue:
    ``(s3, sqs, bucket, queue_url)``."""
    for name, value in moto_env(moto).items():
        monkeypatch.setenv(name, value)
    s3 = boto3.client("s3", endpoint_url=moto.url)
    sqs = boto3.client("sqs", endpoint_url=moto.url)
    bucket = unique_bucket("rt")
    s3.create_bucket(Bucket=bucket)
    for key, data in KEYS.items():
        s3.put_object(Bucket=bucket, Key=key, Body=data)
    url = sqs.create_queue(QueueName=unique_bucket("rtq"))["QueueUrl"]
    notify_queue(s3, sqs, bucket, url)
    return s3, sqs, bucket, url


def _config(tmp: Path, queue_url: str | None, extra: str = "") -> Path:
    path = tmp / f"syncd-{free_port()}.toml"
    text = f'[server]\nhost = "127.0.0.1"\nport = {free_port()}\n[daemon]\ninterval = 3600\n'
    if queue_url:
        text += f'[queues.events]\ntype = "sqs"\nurl = "{queue_url}"\n'
    path.write_text(text + extra)
    return path


async def _start(config: Path, db: str, session: ClientSession) -> Running:
    daemon = Daemon(load_daemon_config(str(config)), db, api_token=TOKEN, poll_seconds=1)
    task = asyncio.create_task(daemon.run())

    async def ready() -> bool:
        if task.done():
            task.result()  # raise what stopped it
        return daemon.ready.is_set()

    await until(ready, "the daemon to start")
    return Running(daemon, task, session)


async def _stop(*running: Running) -> None:
    for r in running:
        r.daemon.stop.set()
    for r in running:
        await asyncio.wait_for(r.task, 60)


async def _delete(r: Running, name: str) -> dict[str, Any]:
    """DELETE the dataset, asking again while a reconcile holds it (409, as the CLI's rm)."""

    async def removed() -> dict[str, Any] | None:
        status, body = await r.call("DELETE", f"/api/v1/datasets/{name}")
        if status == 409 and "being synced" in body["error"]:
            return None
        assert status == 200, body
        return body

    return await until(removed, f"{name} to be removed")


async def test_created_dataset_is_reconciled_follows_events_patched_and_removed(
    aws: tuple[Any, Any, str, str], tmp_path: Path
) -> None:
    s3, _, bucket, queue_url = aws
    db = str(tmp_path / "c.db")
    async with ClientSession() as session:
        r = await _start(_config(tmp_path, queue_url), db, session)
        try:
            assert r.daemon.scheduler.states == {}  # an empty config: nothing scheduled
            status, body = await r.call(
                "POST",
                "/api/v1/datasets",
                {"name": "pics", "source": f"s3://{bucket}/", "max_delete": "50%"},
            )
            assert status == 201, body
            assert body["settings"] == {
                "interval": None,
                "max_delete": "50%",
                "watch": True,
                "metadata": "listing",
                "tags": False,
            }
            # reconciled without a restart
            await until(lambda: _equals(r.keys("pics"), set(KEYS)), "the first reconcile of pics")
            assert r.daemon.scheduler.states["pics"].interval == 3600

            # follows the bucket's SQS events (interval 3600: only an event brings it in)
            s3.put_object(Bucket=bucket, Key="d.jpg", Body=b"dddd")
            await until(lambda: _equals(r.keys("pics"), {*KEYS, "d.jpg"}), "the SQS event")

            # patched filters and metadata mode apply on the next run
            status, body = await r.call(
                "PATCH",
                "/api/v1/datasets/pics",
                {"include": ["*.jpg"], "interval": 600, "metadata": "head", "tags": True},
            )
            assert status == 200, body
            assert body["filters"]["include"] == ["*.jpg"]
            assert (body["settings"]["metadata"], body["settings"]["tags"]) == ("head", True)
            await until(
                lambda: _true(r.daemon.scheduler.states["pics"].interval == 600),
                "the new interval to be scheduled",
            )
            status, _ = await r.call("POST", "/api/v1/datasets/pics/sync")
            assert status == 202
            await until(
                lambda: _equals(r.keys("pics"), {"a.jpg", "sub/c.jpg", "d.jpg"}),
                "the next run to apply the patched filters",
            )
            # head mode: a new object's custom metadata and tags are read (by its event's
            # HEAD or the next listing's, whichever comes first)
            s3.put_object(
                Bucket=bucket, Key="e.jpg", Body=b"e", Metadata={"site": "berlin"}, Tagging="t=1"
            )

            async def e_metadata() -> dict[str, Any] | None:
                status, item = await r.call("GET", "/api/v1/datasets/pics/items/e.jpg")
                return item["metadata"] if status == 200 else None

            got = await until(e_metadata, "e.jpg with its metadata")
            assert got["provider"] == {"site": "berlin"} and got["object_tags"] == {"t": "1"}

            # deleted, it stops and its items go
            status, body = await r.call("GET", "/api/v1/datasets/pics")
            dataset_id = _dataset_id(db, "pics")
            removed = await _delete(r, "pics")
            assert removed == {"dataset": "pics", "removed": True, "items": 4}
            await until(
                lambda: _true("pics" not in r.daemon.scheduler.states), "pics to be unscheduled"
            )
            status, _ = await r.call("GET", "/api/v1/datasets/pics")
            assert status == 404
            assert _rows(db, "items", dataset_id) == 0
            assert _rows(db, "dataset_settings", dataset_id) == 0
        finally:
            await _stop(r)


async def _equals(found: Awaitable[Any], wanted: Any) -> bool:
    return (await found) == wanted


async def _true(value: bool) -> bool:
    return value


def _dataset_id(db: str, name: str) -> int:
    catalog = Catalog.open(db, create=False)
    try:
        return catalog.get_dataset(name).id
    finally:
        catalog.close()


def _rows(db: str, table: str, dataset_id: int) -> int:
    catalog = Catalog.open(db, create=False)
    try:
        sql = f"SELECT count(*) FROM {table} WHERE dataset_id = ?"
        return int(catalog.db.execute(sql, [dataset_id]).fetchone()[0])
    finally:
        catalog.close()


#: bodies that must be refused whole: (method, path, body, status, what the error says)
BAD = [
    ("POST", "/api/v1/datasets", {"name": "x", "source": "ftp://bkt-x/"}, 400,
     "unsupported SOURCE scheme 'ftp'"),
    ("POST", "/api/v1/datasets", {"name": "x", "source": "s3://bkt-x/", "include": "*.jpg"}, 400,
     "include: must be an array"),
    ("POST", "/api/v1/datasets", {"name": "x", "source": "s3://bkt-x/", "max_size": "10XB"}, 400,
     "max_size"),
    ("POST", "/api/v1/datasets", {"name": "x", "source": "s3://bkt-x/", "max_delete": "200%"}, 400,
     "max_delete"),
    ("POST", "/api/v1/datasets", {"name": "x", "source": "s3://bkt-x/", "interval": 0}, 400,
     "interval: must be greater than 0"),
    ("POST", "/api/v1/datasets", {"name": "x", "source": "s3://bkt-x/", "bogus": 1}, 400,
     "bogus: unknown key"),
    ("POST", "/api/v1/datasets", {"name": "x"}, 400, "exactly one of source"),
    ("POST", "/api/v1/datasets", {"name": "a/b", "source": "s3://bkt-x/"}, 400, "must not contain"),
    ("POST", "/api/v1/datasets", {"name": "x", "source": "/tmp"}, 400, "not a bucket URI"),
    ("POST", "/api/v1/datasets", {"name": "x", "source": "file:///tmp"}, 400,
     "cannot be added over the API"),
    ("POST", "/api/v1/datasets", {"name": "x", "source": "s3://bkt-x/", "integration": "nope"}, 400,
     "unknown integration 'nope'"),
    ("POST", "/api/v1/datasets", {"name": "x", "source": "s3://bkt-x/", "integration": "gcp"}, 400,
     "is of type gcs, not s3"),
    ("POST", "/api/v1/datasets", b"{not json", 400, "not valid JSON"),
    ("POST", "/api/v1/datasets", [1], 400, "must be a JSON object"),
    ("POST", "/api/v1/datasets", {"name": "taken", "source": "s3://other/"}, 409,
     "dataset 'taken' already exists"),
    ("POST", "/api/v1/datasets", {"name": "declared", "source": "s3://bkt-x/"}, 409,
     "declared in the daemon's config file"),
    ("PATCH", "/api/v1/datasets/taken", {"source": "s3://elsewhere/"}, 400, "is bound to"),
    ("PATCH", "/api/v1/datasets/taken", {"include": ["*.jpg"], "interval": -5}, 400,
     "interval"),
    ("PATCH", "/api/v1/datasets/declared", {"include": ["*.jpg"]}, 409, "declared"),
    ("PATCH", "/api/v1/datasets/nope", {"include": ["*.jpg"]}, 404, "unknown dataset 'nope'"),
    ("DELETE", "/api/v1/datasets/declared", None, 409, "declared"),
    ("DELETE", "/api/v1/datasets/nope", None, 404, "unknown dataset 'nope'"),
    ("POST", "/api/v1/integrations",
     {"name": "leak", "type": "s3", "access_key_id": "AKIAIOSFODNN7EXAMPLE",
      "secret_access_key": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}, 400, "literal secret"),
    ("POST", "/api/v1/integrations", {"name": "leak", "type": "ftp"}, 400, "type"),
    ("POST", "/api/v1/integrations", {"name": "gcp", "type": "gcs"}, 409, "already exists"),
]  # fmt: skip


async def test_bad_bodies_are_refused_whole_with_one_clear_message(
    aws: tuple[Any, Any, str, str], tmp_path: Path
) -> None:
    _, _, bucket, _ = aws
    folder = tmp_path / "declared"
    folder.mkdir()
    config = _config(
        tmp_path,
        None,
        f'[drivers.disk]\ntype = "local"\nbucket = "{folder}"\n'
        '[datasets.declared]\ndriver = "disk"\nwatch = false\n',
    )
    db = str(tmp_path / "c.db")
    async with ClientSession() as session:
        r = await _start(config, db, session)
        try:
            status, body = await r.call(
                "POST", "/api/v1/integrations", {"name": "gcp", "type": "gcs"}
            )
            assert status == 201, body
            status, body = await r.call(
                "POST", "/api/v1/datasets", {"name": "taken", "source": f"s3://{bucket}/"}
            )
            assert status == 201, body
            before = _snapshot(db)
            for method, path, request, wanted, says in BAD:
                status, answer = await r.call(method, path, request)
                assert (status, list(answer)) == (wanted, ["error"]), (method, path, answer)
                message = answer["error"]
                assert says in message, (request, message)
                assert "\n" not in message and "Traceback" not in message
                assert "wJalrXUtnFEMI" not in message  # a refused secret is never echoed
            # nothing half-made: not a row more or less, anywhere
            assert _snapshot(db) == before
        finally:
            await _stop(r)


def _snapshot(db: str) -> dict[str, Any]:
    catalog = Catalog.open(db, create=False)
    try:
        out = {}
        for table in ("datasets", "drivers", "integrations", "dataset_settings"):
            rows = catalog.db.execute(f"SELECT * FROM {table}").fetchall()
            out[table] = sorted(map(repr, rows))
        return out
    finally:
        catalog.close()


async def test_two_workers_on_postgresql_both_see_each_change(
    aws: tuple[Any, Any, str, str], tmp_path: Path, postgres_url: str
) -> None:
    _, _, bucket, _ = aws
    async with ClientSession() as session:
        a = await _start(_config(tmp_path, None), postgres_url, session)
        b = await _start(_config(tmp_path, None), postgres_url, session)
        workers = (a, b)
        try:
            status, body = await a.call(
                "POST", "/api/v1/datasets", {"name": "shared", "source": f"s3://{bucket}/"}
            )
            assert status == 201, body
            for w in workers:
                await until(
                    lambda w=w: _true("shared" in w.daemon.scheduler.states),
                    "both workers to schedule the created dataset",
                )
            # reconciled once, by whichever worker: both serve the same items
            for w in workers:
                await until(lambda w=w: _equals(w.keys("shared"), set(KEYS)), "the reconcile")

            status, body = await b.call(
                "PATCH", "/api/v1/datasets/shared", {"interval": 900, "max_delete": 1}
            )
            assert status == 200, body
            for w in workers:
                await until(
                    lambda w=w: _true(
                        w.daemon.scheduler.states["shared"].interval == 900
                        and str(w.daemon.scheduler.runtime["shared"].max_delete) == "1"
                    ),
                    "both workers to take the patch",
                )

            await _delete(a, "shared")
            for w in workers:
                await until(
                    lambda w=w: _true(
                        "shared" not in w.daemon.scheduler.states and not w.daemon.scheduler._tasks
                    ),
                    "both workers to stop scheduling the removed dataset",
                )
                status, _ = await w.call("GET", "/api/v1/datasets/shared")
                assert status == 404
        finally:
            await _stop(*workers)


async def test_created_datasets_are_scheduled_at_start_and_a_declaration_wins(
    aws: tuple[Any, Any, str, str], tmp_path: Path
) -> None:
    """The settings live in the catalog: a restarted daemon schedules a created dataset from
    its first round, with its interval. A config that declares the same name takes it over:
    the daemon runs it as declared, and the API refuses to change or remove it."""
    _, _, bucket, _ = aws
    db = str(tmp_path / "c.db")
    async with ClientSession() as session:
        r = await _start(_config(tmp_path, None), db, session)
        try:
            status, body = await r.call(
                "POST",
                "/api/v1/datasets",
                {"name": "kept", "source": f"s3://{bucket}/", "interval": 1234},
            )
            assert status == 201, body
        finally:
            await _stop(r)
        r = await _start(_config(tmp_path, None), db, session)
        try:
            # no poll needed: scheduled before the daemon said it was ready
            assert r.daemon.scheduler.states["kept"].interval == 1234
            await until(lambda: _equals(r.keys("kept"), set(KEYS)), "the reconcile at start")
        finally:
            await _stop(r)
        declared = _config(
            tmp_path,
            None,
            f'[drivers.b]\ntype = "s3"\nbucket = "{bucket}"\n'
            '[datasets.kept]\ndriver = "b"\ninterval = 777\ninclude = ["*.jpg"]\n',
        )
        r = await _start(declared, db, session)
        try:
            assert "kept" not in r.daemon.scheduler.runtime
            assert r.daemon.scheduler.states["kept"].interval == 777
            status, body = await r.call("DELETE", "/api/v1/datasets/kept")
            assert status == 409 and "config file" in body["error"], body
        finally:
            await _stop(r)
