"""The daemon's HTTP API, against a real daemon on loopback (issue 9).

The daemon runs in the test's event loop over a local folder (watching off, interval one
hour), with its real scheduler, catalog thread and server; requests go over HTTP with aiohttp's
client. Waiting is always on a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp import ClientSession, web

from syncd.config import load_daemon_config
from syncd.daemon.service import Daemon
from tests.emulators import free_port

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
KEYS = [f"dir{i % 3}/file {i:03d}.txt" for i in range(250)] + ["ünï/çødé.txt", "x/url"]


async def until(condition: Callable[[], Awaitable[Any]], what: str, timeout: float = 30) -> Any:
    """Poll an async condition until it is truthy; fail after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        value = await condition()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Api:
    def __init__(self, session: ClientSession, base: str, daemon: Daemon) -> None:
        self.session, self.base, self.daemon = session, base, daemon

    async def get(self, path: str, *, auth: bool = True, **kw: Any) -> tuple[int, Any]:
        headers = AUTH if auth else {}
        async with self.session.get(self.base + path, headers=headers, **kw) as resp:
            text = await resp.text()
            body = json.loads(text) if resp.content_type == "application/json" else text
            return resp.status, body

    async def post(self, path: str, data: bytes | str, *, auth: bool = True) -> tuple[int, Any]:
        headers = AUTH if auth else {}
        async with self.session.post(self.base + path, data=data, headers=headers) as resp:
            return resp.status, await resp.json(content_type=None)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    src = tmp_path / "src"
    for key in KEYS:
        (src / key).parent.mkdir(parents=True, exist_ok=True)
        (src / key).write_text(key)
    port = free_port()
    (tmp_path / "syncd.toml").write_text(
        f'[drivers.disk]\ntype = "local"\nbucket = "{src}"\n'
        '[datasets.files]\ndriver = "disk"\nwatch = false\n'
        f'[server]\nhost = "127.0.0.1"\nport = {port}\n'
    )
    config = load_daemon_config(str(tmp_path / "syncd.toml"))
    daemon = Daemon(config, str(tmp_path / "c.db"), api_token=TOKEN, poll_seconds=1)
    task = asyncio.create_task(daemon.run())
    await until(lambda: _ready(daemon, task), "the daemon to start")
    async with ClientSession() as session:
        client = Api(session, f"http://127.0.0.1:{daemon.port}", daemon)
        await until(lambda: _synced(client), "the first reconcile")
        yield client
    daemon.stop.set()
    await asyncio.wait_for(task, 60)


async def _ready(daemon: Daemon, task: asyncio.Task) -> bool:
    if task.done():
        task.result()  # raise what stopped it
    return daemon.ready.is_set()


async def _synced(api: Api) -> bool:
    """The first reconcile is over: its items are in, its run is closed, and the scheduler no
    longer counts it as running (items land before the run closes: waiting on them alone
    raced the run's end)."""
    status, body = await api.get("/api/v1/datasets")
    if status != 200 or not body["datasets"]:
        return False
    (ds,) = body["datasets"]
    return (
        ds["items"] == len(KEYS)
        and ds["last_run"] is not None
        and ds["last_run"]["status"] == "completed"
        and ds["schedule"]["running"] is False
    )


async def test_everything_but_healthz_needs_the_token(api: Api) -> None:
    assert (await api.get("/healthz", auth=False))[0] == 200
    for path in ("/api/v1/datasets", "/api/v1/datasets/files/items", "/metrics"):
        status, body = await api.get(path, auth=False)
        assert status == 401 and body == {"error": "missing or wrong bearer token"}, path
    async with api.session.get(
        api.base + "/api/v1/datasets", headers={"Authorization": "Bearer " + "x" * len(TOKEN)}
    ) as resp:
        assert resp.status == 401
    assert (await api.post("/api/v1/events", "{}", auth=False))[0] == 401


async def test_datasets_and_unknown_names(api: Api) -> None:
    status, body = await api.get("/api/v1/datasets")
    assert status == 200
    (ds,) = body["datasets"]
    assert ds["name"] == "files" and ds["items"] == len(KEYS)
    assert ds["last_run"]["status"] == "completed"
    assert ds["schedule"]["interval"] == 3600 and ds["schedule"]["running"] is False
    for path in ("/api/v1/datasets/nope", "/api/v1/datasets/nope/items", "/no/such/path"):
        status, body = await api.get(path)
        assert status == 404 and "error" in body, path


async def test_items_paginate_by_key_without_gaps_or_repeats(api: Api) -> None:
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        query = "?limit=100" + (f"&cursor={cursor}" if cursor else "")
        status, body = await api.get("/api/v1/datasets/files/items" + query)
        assert status == 200
        seen += [item["key"] for item in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 3 and seen == sorted(KEYS)
    status, body = await api.get("/api/v1/datasets/files/items?prefix=dir1/&limit=1000")
    assert [i["key"] for i in body["items"]] == sorted(k for k in KEYS if k.startswith("dir1/"))
    for bad in ("?limit=0", "?limit=abc", "?limit=5000", "?cursor=%%%"):
        status, body = await api.get("/api/v1/datasets/files/items" + bad)
        assert status == 400 and "error" in body, bad


async def test_one_item_and_its_url(api: Api) -> None:
    key = "ünï/çødé.txt"
    status, body = await api.get(f"/api/v1/datasets/files/items/{quote(key)}")
    assert status == 200 and body["key"] == key and body["size"] == len(key.encode())
    status, body = await api.get("/api/v1/datasets/files/items/dir0/missing.txt")
    assert status == 404
    async with api.session.get(
        api.base + f"/api/v1/datasets/files/items/{quote('dir0/file 000.txt')}/url",
        headers=AUTH,
        allow_redirects=False,
    ) as resp:
        assert resp.status == 302
        assert resp.headers["Location"].startswith("file://")
        assert resp.headers["Location"].endswith("dir0/file%20000.txt")
    # a key that itself ends in /url is still reachable
    status, body = await api.get("/api/v1/datasets/files/items/x/url")
    assert status == 200 and body["key"] == "x/url"


async def test_events_endpoint(api: Api, tmp_path: Path) -> None:
    validation = [
        {
            "id": "1",
            "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
            "subject": "",
            "eventTime": "2026-11-24T00:00:00Z",
            "data": {"validationCode": "ABC-123"},
            "dataVersion": "1",
        }
    ]
    assert await api.post("/api/v1/events", json.dumps(validation)) == (
        200,
        {"validationResponse": "ABC-123"},
    )
    status, body = await api.post("/api/v1/events", "[" * 100_000)
    assert status == 400 and "error" in body
    status, body = await api.post("/api/v1/events", b"x" * (10 * 1024 * 1024 + 1))
    assert status == 413 and "error" in body
    async with api.session.get(api.base + "/api/v1/events", headers=AUTH) as resp:
        assert resp.status == 405 and "error" in await resp.json()
    s3 = {
        "Records": [
            {
                "eventSource": "aws:s3",
                "eventName": "ObjectCreated:Put",
                "eventTime": "2026-11-24T00:00:00.000Z",
                "s3": {
                    "bucket": {"name": "not-configured"},
                    "object": {"key": "a.jpg", "size": 1, "eTag": "e", "sequencer": "01"},
                },
            }
        ]
    }
    status, body = await api.post("/api/v1/events", json.dumps(s3))
    assert status == 200 and body["applied"]["unrouted"] == 1


async def test_sns_subscription_confirmation(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    confirmed: list[str] = []

    async def confirm(request: web.Request) -> web.Response:
        confirmed.append(request.query.get("Token", ""))
        return web.Response(text="<ConfirmSubscriptionResponse/>")

    app = web.Application()
    app.router.add_get("/", confirm)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        body = {
            "Type": "SubscriptionConfirmation",
            "TopicArn": "arn:aws:sns:us-east-1:123456789012:t",
            "Token": "tok",
            "SubscribeURL": f"http://127.0.0.1:{port}/?Action=ConfirmSubscription&Token=tok",
        }
        # not an SNS endpoint: never fetched
        status, _ = await api.post("/api/v1/events", json.dumps(body))
        assert status == 400 and confirmed == []
        # the configured AWS endpoint (an emulator) is trusted
        monkeypatch.setenv("AWS_ENDPOINT_URL_SNS", f"http://127.0.0.1:{port}")
        assert await api.post("/api/v1/events", json.dumps(body)) == (200, {"confirmed": True})
        assert confirmed == ["tok"]
    finally:
        await runner.cleanup()


async def test_trigger_a_reconcile_and_read_runs_and_metrics(api: Api, tmp_path: Path) -> None:
    (tmp_path / "src" / "new.txt").write_text("new")
    status, body = await api.post("/api/v1/datasets/files/sync", "")
    assert (status, body) == (202, {"dataset": "files", "triggered": True})

    async def two_runs() -> list[dict] | None:
        _, body = await api.get("/api/v1/datasets/files/runs")
        runs = body["runs"]
        return runs if len(runs) == 2 and runs[0]["status"] == "completed" else None

    runs = await until(two_runs, "the triggered reconcile")
    assert runs[0]["created"] == 1 and runs[0]["attempt_history"][0]["status"] == "completed"

    # the run row is closed before the run's counters are exported: wait for the second one
    async def metrics_of_two_runs() -> str | None:
        status, text = await api.get("/metrics")
        assert status == 200
        done = 'syncd_sync_runs_total{dataset="files",outcome="completed"} 2.0' in text
        return text if done else None

    text = await until(metrics_of_two_runs, "the second run's metrics")
    assert f'syncd_objects_listed_total{{dataset="files"}} {2 * len(KEYS) + 1}.0' in text
    assert 'syncd_items_changed_total{action="created",dataset="files",via="reconcile"}' in text
    assert "syncd_last_successful_reconcile_timestamp_seconds" in text
    assert (await api.post("/api/v1/datasets/nope/sync", ""))[0] == 404


def test_no_env_leak() -> None:
    # the SNS test sets AWS_ENDPOINT_URL_SNS only through monkeypatch
    assert "AWS_ENDPOINT_URL_SNS" not in os.environ


def test_openapi_document_is_valid_and_matches_the_routes() -> None:
    import yaml
    from openapi_spec_validator import validate

    from syncd.server import routes

    spec = yaml.safe_load(
        (Path(routes.__file__).parent / "openapi.yaml").read_text(encoding="utf-8")
    )
    validate(spec)

    async def healthz(request: web.Request) -> web.Response:
        return web.Response()

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    routes.add_routes(app)
    served = set()
    for route in app.router.routes():
        path = route.resource.canonical.replace("{key:.+}", "{key}")
        served.add((route.method.lower(), path))
    documented = {
        (method, path)
        for path, ops in spec["paths"].items()
        for method in ops
        if method != "parameters"
    }
    assert served - {("head", p) for _, p in served} == documented


async def test_event_grid_cloudevents_handshake(api: Api) -> None:
    async with api.session.options(
        api.base + "/api/v1/events", headers={"WebHook-Request-Origin": "eventgrid.azure.net"}
    ) as resp:
        assert resp.status == 200
        assert resp.headers["WebHook-Allowed-Origin"] == "eventgrid.azure.net"
    # the handshake is the only unauthenticated way in besides /healthz
    async with api.session.options(api.base + "/api/v1/datasets") as resp:
        assert resp.status == 401
