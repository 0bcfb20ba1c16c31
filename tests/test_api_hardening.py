"""The HTTP API's defences, against a real server on loopback (issue 12): wrong-token
lockout (429), the body limit (413, JSON), and binding to 127.0.0.1 unless told otherwise.

The lockout's expiry and its table cap are shown on :class:`AuthLockout` with a clock the test
moves, so nothing waits for a window to pass.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from aiohttp import ClientSession, TCPConnector

from syncd.server.app import MAX_BODY
from syncd.server.lockout import LIMIT, WINDOW, AuthLockout
from tests.emulators import free_port, start_process
from tests.test_daemon_api import AUTH, TOKEN, Api, api  # noqa: F401 (the fixture)
from tests.test_sync_cli import syncd

WRONG = {"Authorization": "Bearer " + "w" * len(TOKEN)}


async def test_wrong_tokens_from_one_address_are_refused_with_429(api: Api) -> None:  # noqa: F811
    for attempt in range(LIMIT):
        headers = WRONG if attempt % 2 else {}  # a missing token counts as a wrong one
        async with api.session.get(api.base + "/api/v1/datasets", headers=headers) as resp:
            assert resp.status == 401, attempt
    # locked out: even the right token is refused, before it is looked at
    async with api.session.get(api.base + "/api/v1/datasets", headers=AUTH) as resp:
        assert resp.status == 429
        assert resp.content_type == "application/json"
        assert "too many wrong bearer tokens" in (await resp.json())["error"]
        assert 1 <= int(resp.headers["Retry-After"]) <= WINDOW
    async with api.session.post(api.base + "/api/v1/events", data=b"{}", headers=AUTH) as resp:
        assert resp.status == 429
    assert (await api.get("/healthz", auth=False))[0] == 200  # the probe is never locked out
    # another address (all of 127/8 is loopback) is not affected
    async with (
        ClientSession(connector=TCPConnector(local_addr=("127.0.0.2", 0))) as other,
        other.get(api.base + "/api/v1/datasets", headers=AUTH) as resp,
    ):
        assert resp.status == 200
        assert (await resp.json())["datasets"][0]["name"] == "files"


async def test_right_tokens_do_not_count(api: Api) -> None:  # noqa: F811
    for _ in range(3 * LIMIT):
        assert (await api.get("/api/v1/datasets"))[0] == 200


def test_lockout_expires_after_the_window_and_its_table_is_capped() -> None:
    now = [1000.0]
    lockout = AuthLockout(limit=3, window=60, max_addresses=100, clock=lambda: now[0])
    for _ in range(2):
        lockout.failed("10.0.0.1")
    assert lockout.retry_after("10.0.0.1") is None  # below the limit
    lockout.failed("10.0.0.1")
    assert lockout.retry_after("10.0.0.1") == 60
    now[0] += 59.5
    assert lockout.retry_after("10.0.0.1") == 1
    now[0] += 1
    assert lockout.retry_after("10.0.0.1") is None  # the window passed: forgotten
    lockout.failed("10.0.0.1")
    assert lockout.retry_after("10.0.0.1") is None  # counting starts again
    # each failure restarts the window: three failures 50 s apart still lock out
    for _ in range(2):
        now[0] += 50
        lockout.failed("10.0.0.1")
    assert lockout.retry_after("10.0.0.1") == 60
    # a flood from many addresses keeps at most max_addresses entries
    for i in range(10_000):
        lockout.failed(f"10.1.{i // 256}.{i % 256}")
    assert len(lockout) == 100
    with pytest.raises(ValueError):
        AuthLockout(limit=0)


async def test_an_oversized_body_is_a_json_413(api: Api) -> None:  # noqa: F811
    body = b" " * (MAX_BODY + 1)
    async with api.session.post(api.base + "/api/v1/events", data=body, headers=AUTH) as resp:
        assert resp.status == 413
        assert resp.content_type == "application/json"
        error = (await resp.json())["error"]
        assert str(MAX_BODY) in error, error
    # without the token the body is not even read: 401
    async with api.session.post(api.base + "/api/v1/events", data=body) as resp:
        assert resp.status == 401
    # one byte under the limit is read and judged as a payload (not an event: 400)
    small = b" " * (MAX_BODY - 1)
    async with api.session.post(api.base + "/api/v1/events", data=small, headers=AUTH) as resp:
        assert resp.status == 400 and "error" in await resp.json()


def listening_addresses(port: int) -> set[str]:
    """The local addresses of the sockets listening on ``port`` (``/proc/net/tcp{,6}``)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        lines = Path(table).read_text().splitlines()[1:] if Path(table).exists() else []
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                if len(address) == 8:  # IPv4, little-endian
                    found.add(".".join(str(int(address[i - 2 : i], 16)) for i in (8, 6, 4, 2)))
                else:
                    found.add(address)
    return found


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/net/tcp")
def test_serve_and_run_listen_on_loopback_unless_told_otherwise(tmp_path: Path) -> None:
    db = str(tmp_path / "c.db")
    (tmp_path / "src").mkdir()
    assert syncd("sync", str(tmp_path / "src"), "--dataset", "d", "--db", db).returncode == 0
    env = {"SYNCD_API_TOKEN": TOKEN}

    port = free_port()
    argv = [sys.executable, "-m", "syncd.cli", "serve", "--db", db, "--port", str(port)]
    served = start_process("syncd-serve", argv, tmp_path, "/healthz", port, env)
    try:
        assert listening_addresses(port) == {"127.0.0.1"}
    finally:
        served.stop()

    port = free_port()
    config = tmp_path / "syncd.toml"
    config.write_text(
        f'[drivers.disk]\ntype = "local"\nbucket = "{tmp_path / "src"}"\n'
        f'[datasets.d]\ndriver = "disk"\nwatch = false\n[server]\nport = {port}\n'
    )
    argv = [sys.executable, "-m", "syncd.cli", "run", "--config", str(config), "--db", db]
    daemon = start_process("syncd-run", argv, tmp_path, "/healthz", port, env)
    try:
        assert listening_addresses(port) == {"127.0.0.1"}
    finally:
        daemon.stop()
