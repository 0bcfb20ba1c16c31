"""The dashboard's sign-in, session cookie and CSRF rules over HTTP (no browser): a daemon in
this process with a read and a write token beside ``SYNCD_API_TOKEN`` (see
:mod:`syncd.web.auth` for the contract)."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, CookieJar
from yarl import URL

from syncd.config import load_daemon_config
from syncd.daemon.service import Daemon
from syncd.server.lockout import AuthLockout
from tests.emulators import free_port
from tests.test_daemon_api import until

ADMIN = "admin-token-0123456789abcdef"
READ = "reader-token-0123456789abcdef"
WRITE = "writer-token-0123456789abcdef"


class Site:
    def __init__(self, base: str, daemon: Daemon) -> None:
        self.base, self.daemon = base, daemon

    def browser(self) -> ClientSession:
        """A client that keeps cookies (for 127.0.0.1 too) and follows no redirect."""
        return ClientSession(cookie_jar=CookieJar(unsafe=True))

    async def sign_in(self, session: ClientSession, token: str) -> tuple[int, str, Any]:
        async with session.post(
            self.base + "/login", data={"token": token, "next": "/"}, allow_redirects=False
        ) as resp:
            return resp.status, await resp.text(), resp

    async def csrf(self, session: ClientSession) -> str:
        async with session.get(self.base + "/datasets/files") as resp:
            assert resp.status == 200
            found = re.search(r'name="csrf" value="([^"]+)"', await resp.text())
            assert found, "no CSRF field on the dataset page"
            return found.group(1)


@pytest.fixture
async def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Site]:
    monkeypatch.setenv("SYNCD_TEST_READ_TOKEN", READ)
    monkeypatch.setenv("SYNCD_TEST_WRITE_TOKEN", WRITE)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    port = free_port()
    (tmp_path / "syncd.toml").write_text(
        f'[drivers.disk]\ntype = "local"\nbucket = "{src}"\n'
        '[datasets.files]\ndriver = "disk"\nwatch = false\n'
        f'[server]\nhost = "127.0.0.1"\nport = {port}\n'
        '[tokens.viewer]\ntoken = "env:SYNCD_TEST_READ_TOKEN"\nscope = "read"\n'
        '[tokens.operator]\ntoken = "env:SYNCD_TEST_WRITE_TOKEN"\nscope = "write"\n'
    )
    config = load_daemon_config(str(tmp_path / "syncd.toml"))
    daemon = Daemon(
        config,
        str(tmp_path / "c.db"),
        api_token=ADMIN,
        poll_seconds=1,
        api_lockout=AuthLockout(limit=3, window=600),
    )
    task = asyncio.create_task(daemon.run())

    async def ready() -> bool:
        if task.done():
            task.result()
        return daemon.ready.is_set()

    await until(ready, "the daemon to start")
    yield Site(f"http://127.0.0.1:{daemon.port}", daemon)
    daemon.stop.set()
    await asyncio.wait_for(task, 60)


async def test_a_page_without_a_session_goes_to_sign_in_and_the_api_stays_401(
    site: Site,
) -> None:
    async with site.browser() as s:
        async with s.get(site.base + "/datasets/files?x=1", allow_redirects=False) as resp:
            assert resp.status == 303
            assert resp.headers["Location"] == "/login?next=/datasets/files%3Fx%3D1"
        async with s.get(site.base + "/api/v1/datasets") as resp:
            assert resp.status == 401
        # an htmx refresh of an open page whose session ended: the whole page goes
        async with s.get(site.base + "/", headers={"HX-Request": "true"}) as resp:
            assert resp.status == 204 and resp.headers["HX-Redirect"] == "/login"
        async with s.get(site.base + "/login") as resp:
            assert resp.status == 200 and 'name="token"' in await resp.text()


async def test_sign_in_sets_a_strict_httponly_cookie_that_never_carries_the_token(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with site.browser() as s:
        status, _, resp = await site.sign_in(s, ADMIN)
        assert status == 303 and resp.headers["Location"] == "/"
        cookie = resp.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        assert ADMIN not in cookie
        # the cookie opens pages and the API's reads
        async with s.get(site.base + "/") as page:
            text = await page.text()
            assert page.status == 200 and "files" in text and ADMIN not in text
            assert "Content-Security-Policy" in page.headers
        async with s.get(site.base + "/api/v1/datasets/files") as api:
            assert api.status == 200
    assert ADMIN not in caplog.text


async def test_wrong_tokens_at_sign_in_count_toward_the_lockout(site: Site) -> None:
    async with site.browser() as s:
        for _ in range(3):
            status, text, _ = await site.sign_in(s, "wrong-token-0123456789abcdef")
            assert status == 401 and "not one of this server" in text
        # locked out: even the right token is refused, on the page, with Retry-After
        status, text, resp = await site.sign_in(s, ADMIN)
        assert status == 429 and "Too many wrong tokens" in text
        assert int(resp.headers["Retry-After"]) > 0
        # and the API's bearer check shares the count
        async with s.get(
            site.base + "/api/v1/datasets", headers={"Authorization": f"Bearer {ADMIN}"}
        ) as api:
            assert api.status == 429


async def test_a_post_with_the_cookie_needs_the_csrf_token_and_the_same_origin(
    site: Site,
) -> None:
    async with site.browser() as s:
        await site.sign_in(s, WRITE)
        csrf = await site.csrf(s)
        url = site.base + "/datasets/nope/sync"  # an unknown dataset: nothing is started
        refusals = [
            ({}, {}),  # no token at all
            ({"csrf": "forged"}, {}),
            ({"csrf": csrf}, {"Origin": "http://evil.example"}),
            ({"csrf": csrf}, {"Sec-Fetch-Site": "cross-site"}),
            ({"csrf": csrf}, {"Sec-Fetch-Site": "same-site"}),  # another port of the host
        ]
        for form, headers in refusals:
            async with s.post(url, data=form, headers=headers, allow_redirects=False) as resp:
                assert resp.status == 403, (form, headers)
                assert "cross-site request forgery" in (await resp.json())["error"]
        # the right token from this origin passes the check (and the handler answers)
        async with s.post(
            url, data={"csrf": csrf}, headers={"Origin": site.base}, allow_redirects=False
        ) as resp:
            assert resp.status == 404
        # the header form (htmx, fetch), on the API too
        async with s.post(
            site.base + "/api/v1/datasets/nope/sync", headers={"X-CSRF-Token": csrf}
        ) as resp:
            assert resp.status == 404
        async with s.post(site.base + "/api/v1/datasets/nope/sync") as resp:
            assert resp.status == 403
        # a bearer header is no ambient credential: no CSRF token needed
        async with (
            ClientSession() as bare,
            bare.post(
                site.base + "/api/v1/datasets/nope/sync",
                headers={"Authorization": f"Bearer {WRITE}"},
            ) as resp,
        ):
            assert resp.status == 404


async def test_a_read_token_signs_in_but_cannot_sync(site: Site) -> None:
    async with site.browser() as s:
        await site.sign_in(s, READ)
        async with s.get(site.base + "/datasets/files") as page:
            text = await page.text()
            assert page.status == 200 and "Sync now" not in text  # no button it cannot use
            csrf = re.search(r'name="csrf" value="([^"]+)"', text)
        assert csrf is not None  # the sign-out form's
        async with s.post(
            site.base + "/datasets/files/sync",
            data={"csrf": csrf.group(1)},
            allow_redirects=False,
        ) as resp:
            assert resp.status == 403
            assert "has scope read" in (await resp.json())["error"]


async def test_sign_out_ends_the_session(site: Site) -> None:
    async with site.browser() as s:
        await site.sign_in(s, ADMIN)
        csrf = await site.csrf(s)
        cookie = s.cookie_jar.filter_cookies(URL(site.base))["syncd_session"].value
        async with s.post(
            site.base + "/logout", data={"csrf": csrf}, allow_redirects=False
        ) as resp:
            assert resp.status == 303 and resp.headers["Location"] == "/login"
    # the old cookie, replayed, opens nothing
    async with (
        ClientSession(cookies={"syncd_session": cookie}) as replay,
        replay.get(site.base + "/api/v1/datasets") as resp,
    ):
        assert resp.status == 401


async def test_sign_in_goes_only_to_a_local_next_page(site: Site) -> None:
    async with site.browser() as s:
        for given, expected in [
            ("/datasets/files", "/datasets/files"),
            ("//evil.example/x", "/"),
            ("https://evil.example/", "/"),
            ("/\\\\evil.example", "/"),
        ]:
            async with s.post(
                site.base + "/login",
                data={"token": ADMIN, "next": given},
                allow_redirects=False,
            ) as resp:
                assert resp.headers["Location"] == expected, given


async def test_an_open_live_stream_ends_when_the_daemon_stops(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A page left open holds a server-sent-events stream: stopping the daemon ends it at
    once (before: the shutdown waited out aiohttp's 60 s timeout, then killed it, 500)."""
    caplog.set_level(logging.INFO, logger="syncd.server")
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    (tmp_path / "syncd.toml").write_text(
        f'[drivers.disk]\ntype = "local"\nbucket = "{src}"\n'
        '[datasets.files]\ndriver = "disk"\nwatch = false\n'
        f'[server]\nhost = "127.0.0.1"\nport = {free_port()}\n'
    )
    daemon = Daemon(
        load_daemon_config(str(tmp_path / "syncd.toml")),
        str(tmp_path / "c.db"),
        api_token=ADMIN,
        poll_seconds=1,
    )
    task = asyncio.create_task(daemon.run())

    async def ready() -> bool:
        if task.done():
            task.result()
        return daemon.ready.is_set()

    await until(ready, "the daemon to start")
    base = f"http://127.0.0.1:{daemon.port}"
    async with ClientSession(headers={"Authorization": f"Bearer {ADMIN}"}) as s:
        async with s.get(base + "/datasets/files/live?after=0") as stream:
            assert stream.status == 200
            assert stream.headers["Content-Type"].startswith("text/event-stream")
            # the first change (the start's sync of a.txt) arrives: the stream is live
            while b"a.txt" not in await stream.content.readline():
                pass
            daemon.stop.set()
            # the server ends the stream: the body reaches its end, the daemon stops
            await asyncio.wait_for(stream.content.read(), 30)
        await asyncio.wait_for(task, 30)
    assert "GET /datasets/files/live 200" in caplog.text
