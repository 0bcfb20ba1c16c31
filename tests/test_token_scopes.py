"""API tokens with scopes (issue 24, item 4): ``[tokens.NAME]`` in the config, by reference;
``SYNCD_API_TOKEN`` is ``admin``.

Table-driven: every route the app registers times every scope, over HTTP against a real daemon
(a local folder dataset the config declares). Each route must have a scope in
:data:`syncd.server.scopes.RULES` (a route added without one fails here); a token whose
scope allows it gets past authorization (any answer but 401/403), one whose scope does not
gets ``403`` with a JSON body naming the scope needed. Requests that would change something
aim at a dataset that does not exist or carry an empty body, so every one is harmless.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession

from syncd.config import load_daemon_config
from syncd.daemon.service import Daemon
from syncd.errors import UsageError
from syncd.server import scopes
from syncd.server.app import make_app
from syncd.server.routes import Context
from tests.emulators import free_port
from tests.test_daemon_api import until

ADMIN = "admin-token-0123456789abcdef"
TOKENS = {
    "read": "reader-token-0123456789abcdef",
    "write": "writer-token-0123456789abcdef",
    "admin": ADMIN,  # SYNCD_API_TOKEN
}
#: what a path parameter is filled with: a dataset and an item that do not exist
PARAMS = {"name": "nope", "key": "k", "tag": "v1"}


def _routes() -> list[tuple[str, str]]:
    """Every (method, path pattern) the API app registers, HEAD (aiohttp's twin of each GET)
    left out."""
    app = make_app(Context(None, None, None), ADMIN)  # type: ignore[arg-type]
    return sorted(
        {
            (r.method, r.resource.canonical)
            for r in app.router.routes()
            if r.resource is not None and r.method != "HEAD"
        }
    )


ROUTES = _routes()


class Served:
    def __init__(self, session: ClientSession, base: str, daemon: Daemon) -> None:
        self.session, self.base, self.daemon = session, base, daemon

    async def call(self, method: str, path: str, token: str | None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = b"{}" if method in ("POST", "PATCH") else None
        async with self.session.request(
            method, self.base + path, headers=headers, data=data, allow_redirects=False
        ) as resp:
            text = await resp.text()
            body = json.loads(text) if resp.content_type == "application/json" else text
            return resp.status, body


@pytest.fixture
async def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Served]:
    monkeypatch.setenv("SYNCD_TEST_READ_TOKEN", TOKENS["read"])
    (tmp_path / "writer").write_text(TOKENS["write"] + "\n")
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    port = free_port()
    (tmp_path / "syncd.toml").write_text(
        f'[drivers.disk]\ntype = "local"\nbucket = "{src}"\n'
        '[datasets.files]\ndriver = "disk"\nwatch = false\n'
        f'[server]\nhost = "127.0.0.1"\nport = {port}\n'
        '[tokens.dashboard]\ntoken = "env:SYNCD_TEST_READ_TOKEN"\nscope = "read"\n'
        f'[tokens.indexer]\ntoken = "file:{tmp_path / "writer"}"\nscope = "write"\n'
    )
    config = load_daemon_config(str(tmp_path / "syncd.toml"))
    daemon = Daemon(config, str(tmp_path / "c.db"), api_token=ADMIN, poll_seconds=1)
    task = asyncio.create_task(daemon.run())

    async def ready() -> bool:
        if task.done():
            task.result()
        return daemon.ready.is_set()

    await until(ready, "the daemon to start")
    async with ClientSession() as session:
        yield Served(session, f"http://127.0.0.1:{daemon.port}", daemon)
    daemon.stop.set()
    await asyncio.wait_for(task, 60)


def test_every_route_has_a_scope() -> None:
    unclassified = [(m, p) for m, p in ROUTES if scopes.scope_of(m, p) is None]
    assert not unclassified, (
        f"routes without a scope: {unclassified}; add a rule to syncd.server.scopes.RULES"
    )


def test_the_rules_say_what_the_issue_asks() -> None:
    """The classes of the issue: read datasets, items, changes; write sync and item
    metadata; admin datasets and integrations."""
    need = dict(((m, p), scopes.scope_of(m, p)) for m, p in ROUTES)
    assert need[("GET", "/api/v1/datasets")] == "read"
    assert need[("GET", "/api/v1/datasets/{name}/items/{key}")] == "read"
    assert need[("GET", "/api/v1/changes")] == "read"
    assert need[("POST", "/api/v1/datasets/{name}/sync")] == "write"
    assert need[("PATCH", "/api/v1/datasets/{name}/items/{key}")] == "write"
    assert need[("POST", "/api/v1/datasets/{name}/items:update")] == "write"
    for route in [
        ("POST", "/api/v1/datasets"),
        ("PATCH", "/api/v1/datasets/{name}"),
        ("DELETE", "/api/v1/datasets/{name}"),
        ("POST", "/api/v1/integrations"),
        ("GET", "/api/v1/integrations"),
    ]:
        assert need[route] == "admin", route
    assert need[("GET", "/healthz")] == scopes.PUBLIC


async def test_every_route_times_every_scope(served: Served) -> None:
    for method, pattern in ROUTES:
        path = pattern.format(**PARAMS)
        need = scopes.scope_of(method, pattern)
        for scope, token in TOKENS.items():
            status, body = await served.call(method, path, token)
            where = (method, pattern, scope, status, body)
            if scopes.allows(scope, need or scopes.ADMIN):
                assert status not in (401, 403), where
            else:
                assert status == 403, where
                assert isinstance(body, dict) and list(body) == ["error"], where
                assert f"has scope {scope}" in body["error"] and need in body["error"], where
                assert token not in body["error"]


async def test_a_read_token_cannot_create_sync_or_change_metadata(served: Served) -> None:
    read = TOKENS["read"]
    for method, path in [
        ("POST", "/api/v1/datasets"),
        ("POST", "/api/v1/integrations"),
        ("POST", "/api/v1/datasets/files/sync"),
        ("PATCH", "/api/v1/datasets/files/items/a.txt"),
        ("POST", "/api/v1/datasets/files/items:update"),
        ("DELETE", "/api/v1/datasets/files"),
    ]:
        status, body = await served.call(method, path, read)
        assert status == 403, (method, path, body)
    # ... but reads, and a write token syncs
    status, body = await served.call("GET", "/api/v1/datasets/files", read)
    assert status == 200, body
    status, body = await served.call("POST", "/api/v1/datasets/files/sync", TOKENS["write"])
    assert status in (202, 409), body  # 409: the start's reconcile still holds it


async def test_wrong_tokens_still_lock_out_and_refusals_do_not(served: Served) -> None:
    for _ in range(20):  # a scope refusal is a known token: never counted as a guess
        status, _ = await served.call("POST", "/api/v1/datasets", TOKENS["read"])
        assert status == 403
    status, _ = await served.call("GET", "/api/v1/datasets", TOKENS["read"])
    assert status == 200
    for _ in range(10):
        status, _ = await served.call("GET", "/api/v1/datasets", "wrong-token-0123456789abcdef")
        assert status == 401
    status, body = await served.call("GET", "/api/v1/datasets", TOKENS["read"])
    assert status == 429, body


@pytest.mark.parametrize(
    ("table", "says"),
    [
        ('token = "plain-literal-token-0123456789"\nscope = "read"', "literal secret"),
        ('token = "env:SYNCD_TEST_T"\nscope = "owner"', "scope: must be 'read', 'write' or"),
        ('token = "env:SYNCD_TEST_T"', "scope: required key is missing"),
    ],
)
def test_token_tables_are_checked_like_the_rest(tmp_path: Path, table: str, says: str) -> None:
    path = tmp_path / "syncd.toml"
    path.write_text(f"[server]\nport = 1\n[tokens.dash]\n{table}\n")
    with pytest.raises(UsageError) as caught:
        load_daemon_config(str(path))
    assert says in str(caught.value)
    assert "plain-literal-token" not in str(caught.value)


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (None, "tokens.dash.token refers to environment variable SYNCD_TEST_T, which is not set"),
        ("short", "tokens.dash.token: must be a secret of at least 16 characters"),
        (ADMIN, "tokens.dash.token: the same token as SYNCD_API_TOKEN"),
    ],
)
async def test_a_token_that_cannot_work_stops_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str | None, says: str
) -> None:
    if value is None:
        monkeypatch.delenv("SYNCD_TEST_T", raising=False)
    else:
        monkeypatch.setenv("SYNCD_TEST_T", value)
    (tmp_path / "syncd.toml").write_text(
        f'[server]\nport = {free_port()}\n[tokens.dash]\ntoken = "env:SYNCD_TEST_T"\n'
        'scope = "read"\n'
    )
    config = load_daemon_config(str(tmp_path / "syncd.toml"))
    daemon = Daemon(config, str(tmp_path / "c.db"), api_token=ADMIN)
    with pytest.raises(UsageError) as caught:
        await asyncio.wait_for(daemon.run(), 60)
    assert says in str(caught.value)
    assert value is None or value not in str(caught.value)
