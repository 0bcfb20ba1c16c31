"""The HTTP API against hostile clients (issue 21): slow headers (slowloris) at a low
descriptor limit, an ``Authorization`` header that is not UTF-8, tokens that can never match,
query parameters ``int()`` would bend, and requests aiohttp cannot parse.

Servers are real: ``syncd run`` as a subprocess under a lowered ``RLIMIT_NOFILE``, with an S3
dataset and its SQS queue on moto, and the in-process daemon of ``tests.test_daemon_api``.
Everything waits on a condition with a generous deadline; nothing sleeps for a set time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import resource
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import boto3
import pytest
from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

from syncd.errors import UsageError
from syncd.server.app import check_token
from syncd.server.connections import (
    AcceptErrorLog,
    ConnectionGuard,
    connection_cap,
    serve,
    track_requests,
)
from syncd.server.lockout import LIMIT
from tests.conftest import unique_bucket
from tests.emulators import Emulator, _wait_http, free_port, moto_env, notify_queue
from tests.test_cli_errors import one_line_error
from tests.test_daemon_api import AUTH, TOKEN, Api, api, until  # noqa: F401 (the fixture)
from tests.test_events_parse import SAMPLES
from tests.test_sync_cli import syncd

#: the daemon's descriptor limit, soft and hard (so it cannot raise it)
FD_LIMIT = 256
#: slow connections opened against it: more than it has descriptors
SLOW = FD_LIMIT + 100
PARTIAL = b"GET /api/v1/datasets HTTP/1.1\r\nHost: x\r\nX-Slow: "


def _lower_fd_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


@pytest.fixture
def low_fd_daemon(moto: Emulator, tmp_path: Path) -> Iterator[tuple[str, Path, str, object]]:
    """``syncd run`` at FD_LIMIT descriptors: an S3 dataset whose bucket notifies an SQS
    queue the daemon consumes, and the API; yields (base URL, log path, bucket, s3 client)
    once its first reconcile is over (from then on only the queue brings new objects in)."""
    s3 = boto3.client("s3", endpoint_url=moto.url)
    sqs = boto3.client("sqs", endpoint_url=moto.url)
    bucket = unique_bucket()
    s3.create_bucket(Bucket=bucket)
    queue_url = sqs.create_queue(QueueName=f"slow-{bucket}")["QueueUrl"]
    notify_queue(s3, sqs, bucket, queue_url)
    s3.put_object(Bucket=bucket, Key="raw/before.jpg", Body=b"before")
    port = free_port()
    config = tmp_path / "syncd.toml"
    config.write_text(
        "[daemon]\ninterval = 3600\n"
        f'[drivers.images]\ntype = "s3"\nbucket = "{bucket}"\npath = "raw/"\n'
        f'endpoint = "{moto.url}"\n'
        '[datasets.images]\ndriver = "images"\n'
        f'[queues.events]\ntype = "sqs"\nurl = "{queue_url}"\n'
        f'[server]\nhost = "127.0.0.1"\nport = {port}\n'
    )
    env = {
        **os.environ,
        **moto_env(moto),
        "SYNCD_API_TOKEN": TOKEN,
    }
    log = tmp_path / "daemon.log"
    argv = [sys.executable, "-m", "syncd.cli", "run", "--config", str(config)]
    argv += ["--db", str(tmp_path / "c.db")]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, env=env,
            preexec_fn=_lower_fd_limit,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_http("syncd-run", base + "/healthz", proc, log, 60)
        yield base, log, bucket, s3
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _first_run_done(session: ClientSession, base: str) -> bool:
    async with session.get(base + "/api/v1/datasets", headers=AUTH) as resp:
        body = await resp.json()
    (ds,) = body["datasets"]
    return ds["last_run"] is not None and ds["last_run"]["status"] == "completed"


Slow = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _open_slow(port: int) -> list[Slow]:
    """SLOW connections, each with a request whose headers never end; those the kernel could
    not queue within the deadline are left out."""

    async def one() -> Slow | None:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 30)
        except (TimeoutError, OSError):
            return None
        writer.write(PARTIAL)
        return reader, writer

    opened = await asyncio.gather(*(one() for _ in range(SLOW)))
    return [pair for pair in opened if pair is not None]


async def test_slow_headers_past_the_descriptor_limit_keep_out_no_one(
    low_fd_daemon: tuple[str, Path, str, object],
) -> None:
    """Issue 21: more slowloris connections than the process has descriptors. Requests with
    the token and events still get through, the SQS consumer keeps receiving, and the log
    does not fill with a traceback per refused accept."""
    base, log, bucket, s3 = low_fd_daemon
    port = int(base.rsplit(":", 1)[1])
    async with ClientSession() as before:
        await until(lambda: _first_run_done(before, base), "the first reconcile", 120)
    # a new connection for every request: one kept alive from before the flood proves nothing
    async with ClientSession(
        timeout=ClientTimeout(total=60), connector=TCPConnector(force_close=True)
    ) as session:
        slow = await _open_slow(port)
        try:
            assert len(slow) > FD_LIMIT // 2
            async with session.get(base + "/api/v1/datasets", headers=AUTH) as resp:
                assert resp.status == 200
                assert (await resp.json())["datasets"][0]["name"] == "images"
            payload = (SAMPLES / "s3-put.json").read_bytes()
            async with session.post(base + "/api/v1/events", data=payload, headers=AUTH) as resp:
                assert resp.status == 200, await resp.text()
                assert "applied" in await resp.json()
            # the queue consumer still reaches moto: an object put now arrives through it
            s3.put_object(Bucket=bucket, Key="raw/during-the-flood.jpg", Body=b"x")  # type: ignore[attr-defined]

            keys: list[str] = []

            async def arrived() -> bool:
                url = base + "/api/v1/datasets/images/items"
                async with session.get(url, headers=AUTH) as resp:
                    keys[:] = [i["key"] for i in (await resp.json())["items"]]
                return "raw/during-the-flood.jpg" in keys

            try:
                await until(arrived, "the queued event to be applied", 120)
            except AssertionError:
                raise AssertionError((keys, log.read_text(errors="replace")[-3000:])) from None
            # the server closed slow connections rather than run out of descriptors
            closed = sum(1 for r, _ in slow if r.at_eof() or r.exception() is not None)
            assert closed >= len(slow) - FD_LIMIT, closed
        finally:
            for _, writer in slow:
                writer.close()
    text = log.read_text(errors="replace")
    assert "Traceback" not in text and "out of system resource" not in text, text[-3000:]
    # beside one line per request (the polling above makes many), a few lines at most
    other = [line for line in text.splitlines() if not re.search(r"server: [A-Z]+ /", line)]
    assert len(other) < 50, other


# -- the guard in-process: eviction, header timeout ----------------------------------------


async def _hold(request: web.Request) -> web.Response:
    await request.app[GATE].wait()
    return web.json_response({"ok": True})


async def _ok(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


GATE = web.AppKey("gate", asyncio.Event)


@pytest.fixture
async def guarded() -> AsyncIterator[tuple[int, ConnectionGuard, asyncio.Event]]:
    """A small app served the way the API is, with a cap of 4 and a 1 s header timeout."""
    app = web.Application(middlewares=[track_requests])
    app[GATE] = asyncio.Event()
    app.router.add_get("/hold", _hold)
    app.router.add_get("/ok", _ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    guard = ConnectionGuard(4, header_timeout=1.0)
    server = await serve(runner, "127.0.0.1", 0, guard)
    yield server.sockets[0].getsockname()[1], guard, app[GATE]
    app[GATE].set()
    server.close()
    await runner.cleanup()
    guard.close_all()


async def _request(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data = await asyncio.wait_for(reader.read(), 60)
    writer.close()
    status = int(data.split(b" ", 2)[1]) if data else 0
    return status, data


async def test_past_the_cap_the_longest_waiting_connection_makes_room(
    guarded: tuple[int, ConnectionGuard, asyncio.Event],
) -> None:
    port, guard, gate = guarded
    # one request in progress: never evicted
    held = asyncio.create_task(_request(port, "/hold"))
    await until(_async(lambda: len(guard._busy) == 1), "the held request")
    slow, writers = [], []  # the writers kept: one collected closes its connection
    for _ in range(6):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(PARTIAL)
        slow.append(reader)
        writers.append(writer)
    # each connection past the cap closed the slow one waiting longest
    await until(_async(lambda: all(r.at_eof() for r in slow[:3])), "the oldest to be closed")
    assert [r.at_eof() for r in slow] == [True] * 3 + [False] * 3
    assert guard.evicted == 3
    assert (await _request(port, "/ok"))[0] == 200
    assert not held.done()  # the request in progress was not cut
    gate.set()
    assert (await held)[0] == 200
    for writer in writers:
        writer.close()


async def test_headers_not_sent_in_time_close_the_connection(
    guarded: tuple[int, ConnectionGuard, asyncio.Event],
) -> None:
    port, guard, gate = guarded
    held = asyncio.create_task(_request(port, "/hold"))
    await until(_async(lambda: len(guard._busy) == 1), "the held request")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(PARTIAL)
    assert await asyncio.wait_for(reader.read(), 60) == b""  # closed, nothing answered
    assert guard.timed_out == 1
    writer.close()
    # the request in progress since before that connection came outlived the timeout
    assert not held.done()
    gate.set()
    assert (await held)[0] == 200


def _async(check):  # type: ignore[no-untyped-def]
    async def condition() -> bool:
        return bool(check())

    return condition


def test_the_cap_leaves_descriptors_for_the_daemon() -> None:
    assert connection_cap(1024) == 768
    assert connection_cap(FD_LIMIT) == 64
    assert connection_cap(65536) == 4096
    assert connection_cap(100) == 8


async def test_failed_accepts_are_logged_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    seen: list[dict] = []
    handler = AcceptErrorLog(lambda loop, ctx: seen.append(ctx), 60, clock=lambda: now[0])
    loop = asyncio.get_running_loop()
    context = {
        "message": "socket.accept() out of system resource",
        "exception": OSError(24, "Too many open files"),
    }
    with caplog.at_level(logging.INFO, logger="syncd.server"):
        for _ in range(1000):
            handler(loop, context)
        now[0] += 61
        handler(loop, context)
    lines = [r for r in caplog.records if "cannot accept" in r.getMessage()]
    assert len(lines) == 2 and all(r.exc_info is None for r in lines)
    assert "(1 failed accepts)" in lines[0].getMessage()
    assert "(1000 failed accepts)" in lines[1].getMessage()
    handler(loop, {"message": "something else"})
    assert seen == [{"message": "something else"}]  # the rest goes to the previous handler


# -- authorization -------------------------------------------------------------------------


async def _raw(api: Api, request: bytes) -> tuple[int, str, bytes]:  # noqa: F811
    """Send raw bytes; return (status, content type, body) of the answer."""
    port = int(api.base.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    data = await asyncio.wait_for(reader.read(), 60)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    ctype = {k.lower(): v for k, v in headers.items()}.get("content-type", "")
    return int(lines[0].split()[1]), ctype, body


def _get(path: str, *headers: bytes) -> bytes:
    extra = b"".join(h + b"\r\n" for h in headers)
    return f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".encode() + extra + b"\r\n"


async def test_a_non_utf8_authorization_header_is_a_401_that_counts(api: Api) -> None:  # noqa: F811
    bad = _get("/api/v1/datasets", b"Authorization: Bearer x\xff")
    for attempt in range(LIMIT):
        status, ctype, body = await _raw(api, bad)
        assert (status, ctype) == (401, "application/json; charset=utf-8"), (attempt, body)
        assert "bearer token" in json.loads(body)["error"]
    assert (await api.get("/api/v1/datasets"))[0] == 429  # they counted toward the lockout


def test_tokens_that_could_never_match_are_refused() -> None:
    for token in ("x" * 15, " " * 20, "\t" * 20, "token with spaces in it", "é" * 16,
                  "a" * 16 + "\udcff", " " + "a" * 20, "a" * 20 + "\n"):  # fmt: skip
        with pytest.raises(UsageError):
            check_token(token)
    check_token("test-token-0123456789abcdef")
    check_token("!#$%&'()*+,-./0123456789:;<=>?@~")


@pytest.mark.parametrize("token", [" " * 20, "abcdefghijklmnop\udcff", "abcdefghijklmnop "])
def test_serve_refuses_a_token_that_could_never_match(tmp_path: Path, token: str) -> None:
    db = str(tmp_path / "c.db")
    (tmp_path / "src").mkdir()
    assert syncd("sync", str(tmp_path / "src"), "--dataset", "d", "--db", db).returncode == 0
    proc = syncd("serve", "--db", db, "--port", str(free_port()), env={"SYNCD_API_TOKEN": token})
    one_line_error(proc, 2, "SYNCD_API_TOKEN", "printable ASCII")


# -- query parameters and unparsable requests ----------------------------------------------


@pytest.mark.parametrize(
    "query",
    ["limit=%EF%BC%91%EF%BC%90", "limit=%D9%A3", "limit=+5", "limit=%205", "limit=1_0"],
)
async def test_limits_are_ascii_digits_only(api: Api, query: str) -> None:  # noqa: F811
    for path in ("/api/v1/datasets/files/items", "/api/v1/datasets/files/runs"):
        status, body = await api.get(f"{path}?{query}")
        assert status == 400 and "limit" in body["error"], (path, query, body)
    assert (await api.get("/api/v1/datasets/files/items?limit=10"))[0] == 200
    status, body = await api.get("/api/v1/datasets/files/items?limit=" + "9" * 5000)
    assert status == 400 and "between" in body["error"]


@pytest.mark.parametrize("param", ["limit=1&limit=2", "prefix=a&prefix=b", "cursor=a&cursor=a"])
async def test_a_repeated_query_parameter_is_a_400_naming_it(api: Api, param: str) -> None:  # noqa: F811
    status, body = await api.get(f"/api/v1/datasets/files/items?{param}")
    name = param.split("=")[0]
    assert status == 400 and repr(name) in body["error"] and "more than once" in body["error"]
    status, body = await api.get("/api/v1/datasets/files/runs?limit=1&limit=1")
    assert status == 400 and "'limit'" in body["error"]


MARKER = "zq-echo-marker"


@pytest.mark.parametrize(
    "request_bytes",
    [
        f"GET /{MARKER}\x01 HTTP/1.1\r\nHost: x\r\n\r\n".encode(),  # control byte in the target
        f"G<T /{MARKER} HTTP/1.1\r\nHost: x\r\n\r\n".encode(),  # a method that is no token
        f"GET /{MARKER} HTTP/9.x\r\nHost: x\r\n\r\n".encode(),  # a malformed version
        f"GET /{MARKER} HTTP/1.1\r\nHost: x\r\nBad Header{MARKER}: v\r\n\r\n".encode(),
        f"GET /{MARKER} HTTP/1.1\r\nHost: x\r\nX: {'v' * 9000}{MARKER}\r\n\r\n".encode(),
        f"GET /{'a' * 9000}{MARKER} HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
        f"POST /{MARKER} HTTP/1.1\r\nHost: x\r\nContent-Length: x{MARKER}\r\n\r\n".encode(),
        f"POST /{MARKER} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".encode(),
        f"\x16\x03\x01{MARKER}\r\n\r\n".encode(),  # TLS to the plain port
    ],
)
async def test_unparsable_requests_get_a_json_400_that_echoes_nothing(
    api: Api,  # noqa: F811
    request_bytes: bytes,
) -> None:
    status, ctype, body = await _raw(api, request_bytes)
    assert status == 400, body
    assert ctype.startswith("application/json"), (ctype, body)
    assert set(json.loads(body)) == {"error"}
    assert MARKER.encode() not in body and b"HTTP/" not in body
    assert (await api.get("/healthz", auth=False))[0] == 200


def test_the_unit_raises_the_open_file_limit() -> None:
    import configparser

    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(Path(__file__).parent.parent / "deploy" / "syncd.service")
    assert int(unit["Service"]["LimitNOFILE"]) >= 16384


async def test_a_nul_byte_in_a_path_or_parameter_is_no_500_on_postgresql(postgres_url: str) -> None:
    """PostgreSQL text cannot hold NUL: a name, key or parameter with one must be a 404 or
    400 answer, never the server's 500 (tests/test_api_fuzz.py covers sqlite)."""
    from aiohttp import ClientSession

    from syncd.config import DaemonConfig, ServerConfig
    from syncd.daemon.service import Daemon
    from syncd.store import pg as pg_store
    from tests.emulators import free_port

    port = free_port()
    config = DaemonConfig(datasets={}, server=ServerConfig(port=port))
    daemon = Daemon(config, postgres_url, api_token="t" * 32, register=False)
    task = asyncio.create_task(daemon.run())
    try:
        while not daemon.ready.is_set():
            assert not task.done(), task.result()
            await asyncio.sleep(0.05)
        base = f"http://127.0.0.1:{port}/api/v1"
        async with ClientSession(headers={"Authorization": "Bearer " + "t" * 32}) as http:
            for path in (
                "/datasets/a%00b",
                "/datasets/a%00b/items",
                "/datasets/a%00b/items/k%00",
                "/datasets/a%00b/runs",
                "/changes?dataset=a%00b",
                "/datasets/a%00b/changes",
            ):
                async with http.get(base + path) as resp:
                    assert resp.status in (400, 404), (path, resp.status)
                    assert "error" in await resp.json()
    finally:
        daemon.stop.set()
        await asyncio.wait_for(task, 60)
        pg_store.close_pools()
