"""Webhooks for the change feed (issue 22): every change reaches each webhook, in cursor order,
at least once, signed per Standard Webhooks, through a receiver that fails, hangs and goes
away; a ``kill -9`` between the endpoint's acknowledgement and the stored cursor resends the
same batch with the same ``webhook-id``, at 20 seeded moments; a 4xx pauses a webhook until
``resume``/``replay``. (That no secret, header value or URL token reaches a log, ``webhooks
ls``, the API, ``/metrics`` or the catalog is in tests/test_planted_secrets.py.)

The receiver is a real HTTP server on loopback (:class:`Receiver`); its faults are chosen by
a seeded RNG, so a failing seed replays."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks import Webhook

from syncd.config import load_daemon_config
from syncd.daemon import service
from syncd.daemon.service import Daemon
from syncd.errors import UsageError
from syncd.feed import delivery
from syncd.store import changes
from syncd.store.catalog import Catalog
from tests.emulators import free_port
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent
SECRET = "whsec_" + base64.b64encode(b"a test secret of 32 bytes, fixed").decode()
TOKEN = "test-token-0123456789abcdef"


@dataclasses.dataclass
class Request:
    """One request the receiver got, and what it answered (``200``, ``500``, ``hang``...)."""

    answer: str
    headers: dict[str, str]
    body: bytes

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def cursors(self) -> list[int]:
        return [c["cursor"] for c in self.json["changes"]]


class Receiver:
    """A webhook endpoint on 127.0.0.1. ``answer(path)`` chooses each answer: an HTTP status,
    ``"hang"`` (read the request, answer nothing for longer than the sender waits: the
    request did arrive, the sender never learns it) or ``"hold"`` (read it, and answer nothing
    until :meth:`let_go`: the test kills the sender meanwhile). :meth:`down` stops listening
    (connection refused) until :meth:`up`."""

    def __init__(self, answer: Callable[[str], int | str] = lambda path: 200) -> None:
        self.answer = answer
        self.port = free_port()
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        self._release = threading.Event()
        self._held = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self.up()

    def up(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                answer = receiver.answer(self.path)
                headers = {k.lower(): v for k, v in self.headers.items()}
                held = receiver._held  # before the request shows: a let_go after it ends this
                with receiver.lock:
                    receiver.requests.append(Request(str(answer), headers, body))
                if answer == "hang":
                    # the receiver is slow: the sender gives up first (its timeout is 0.5s)
                    receiver._release.wait(5)
                    return
                if answer == "hold":
                    held.wait(120)
                    return
                self.send_response(int(answer))
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def down(self) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()
        self._server = None

    def let_go(self) -> None:
        """End the requests held now, unanswered; a later ``"hold"`` holds again."""
        held, self._held = self._held, threading.Event()
        held.set()

    def close(self) -> None:
        self._release.set()
        self._held.set()
        if self._server is not None:
            self.down()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def of(self, path: str) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.headers.get("x-path", "/hook") == path]

    def received(self, path: str = "/hook") -> list[Request]:
        """The requests whose batch reached the receiver's application (answered 2xx, or
        hung after it was read), the first of each webhook-id only, in arrival order."""
        seen: set[str] = set()
        out = []
        with self.lock:
            found = list(self.requests)
        for r in found:
            if r.headers.get("x-path") != path or r.answer not in ("200", "hang", "hold"):
                continue
            if r.id not in seen:
                seen.add(r.id)
                out.append(r)
        return out


def check_signed_and_stable(requests: list[Request]) -> None:
    """Every request verifies with the secret; one webhook-id always carries the same body
    (a batch sent again is the same batch), and different ids carry different ranges."""
    verifier = Webhook(SECRET)
    bodies: dict[str, bytes] = {}
    ranges: dict[tuple[int, int], str] = {}
    for r in requests:
        assert verifier.verify(r.body, r.headers)["next"] == r.json["next"]
        assert bodies.setdefault(r.id, r.body) == r.body, f"{r.id} sent with another body"
        first = r.cursors[0] if r.cursors else r.json["next"]
        assert ranges.setdefault((first, r.json["next"]), r.id) == r.id


def head_and_state(db: str, name: str) -> tuple[int, delivery.State | None]:
    try:
        catalog = Catalog.open_reader(db)
    except UsageError:  # the daemon has not created it yet
        return 0, None
    try:
        return changes.head(catalog.db), delivery.get(catalog.db, name)
    finally:
        catalog.close()


def config_text(src: Path, hooks: str, *, watch: bool, server_port: int | None = None) -> str:
    text = (
        f'[drivers.disk]\ntype = "local"\nbucket = "{src}"\n'
        f'[datasets.files]\ndriver = "disk"\nwatch = {str(watch).lower()}\ninterval = 3600\n'
        + hooks
    )
    if server_port:
        text += f'[server]\nhost = "127.0.0.1"\nport = {server_port}\n'
    return text


def hook(name: str, receiver: Receiver, path: str, **extra: Any) -> str:
    lines = [
        f"[webhooks.{name}]",
        f'url = "{receiver.url(path)}"',
        'secret = "env:TEST_WEBHOOK_SECRET"',
        f'headers = {{ X-Path = "{path}" }}',
        *(f"{k} = {json.dumps(v)}" for k, v in extra.items()),
    ]
    return "\n".join(lines) + "\n"


async def until(condition: Callable[[], Any], what: str, timeout: float = 90) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        value = condition()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Backoffs of milliseconds, looks every 0.1s, a prune every 0.2s (in-process daemons)."""
    monkeypatch.setattr(delivery, "BACKOFF_BASE", 0.01)
    monkeypatch.setattr(delivery, "BACKOFF_CAP", 0.05)
    monkeypatch.setattr(delivery, "POLL_SECONDS", 0.1)
    monkeypatch.setattr(service, "RETENTION_SECONDS", 0.2)
    monkeypatch.setenv("TEST_WEBHOOK_SECRET", SECRET)


def folder_state(src: Path) -> dict[str, bytes]:
    return {str(p.relative_to(src)): p.read_bytes() for p in src.rglob("*") if p.is_file()}


def items(db: str) -> dict[str, int]:
    catalog = Catalog.open_reader(db)
    try:
        ds = catalog.find_dataset("files")
        return {i.key: i.size for i in catalog.iter_items(ds.id)} if ds else {}
    finally:
        catalog.close()


# -- a receiver that fails, hangs and goes away ------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2])
async def test_every_change_arrives_in_order_through_a_flaky_receiver(
    tmp_path: Path, fast_retries: None, seed: int
) -> None:
    """A daemon watches a folder whose files are created, overwritten and deleted, while its
    webhook's receiver answers 500 to ~30% of requests, hangs on ~5% and is down for a
    stretch. Every change arrives, once per webhook-id, in cursor order (1..head), every
    request verifies, and a resent batch has its first id and body. A second webhook, filtered
    to created changes in batches of 3, gets exactly those. Retention prunes all the time
    (retention 0) and never past what a webhook has not delivered (else it would pause)."""
    rng = random.Random(seed)
    # each webhook's answers, in order: ~30% 500, ~5% hangs, and at least one of each early
    plans: dict[str, list[int | str]] = {}
    for path in ("/hook", "/created"):
        plan: list[int | str] = [
            500 if roll < 0.3 else "hang" if roll < 0.35 else 200
            for roll in (rng.random() for _ in range(10_000))
        ]
        hang, fail = rng.sample(range(1, 5), 2)
        plan[hang], plan[fail] = "hang", 500
        plans[path] = plan

    def answer(path: str) -> int | str:
        return plans[path].pop(0)

    receiver = Receiver(answer)
    src = tmp_path / "src"
    src.mkdir()
    (src / "seed.txt").write_text("seed")
    hooks = hook("all", receiver, "/hook", timeout=0.5, batch=4, fail_after=1) + hook(
        "created", receiver, "/created", timeout=0.5, batch=3, kinds=["created"]
    )
    (tmp_path / "syncd.toml").write_text(config_text(src, hooks, watch=True))
    config = load_daemon_config(str(tmp_path / "syncd.toml"))
    config = dataclasses.replace(config, retention=0)  # prune whatever is delivered
    db = str(tmp_path / "c.db")
    daemon = Daemon(config, db, poll_seconds=1)
    task = asyncio.create_task(daemon.run())

    def delivered_all() -> bool:
        if task.done():
            task.result()
        head, state = head_and_state(db, "all")
        _, created = head_and_state(db, "created")
        return bool(state and created and head and state.cursor == head and created.cursor == head)

    try:
        await until(lambda: daemon.ready.is_set() or task.done(), "the daemon to start")
        names = [f"f{i}.txt" for i in range(8)]
        down_round = rng.randrange(1, 5)
        for round_ in range(6):
            for _ in range(rng.randint(2, 5)):
                path = src / rng.choice(names)
                if path.exists() and rng.random() < 0.4:
                    path.unlink()
                else:
                    path.write_text(f"{round_}-{rng.random()}")
            if round_ == down_round:
                receiver.down()

                def failing() -> bool:
                    _, state = head_and_state(db, "all")
                    return bool(
                        state
                        and state.failing_since
                        and "cannot connect" in (state.last_error or "")
                    )

                # down for longer than fail_after (1s): marked failing, and it keeps trying
                await until(failing, "the webhook to be marked failing")
                receiver.up()
            await until(lambda: items(db) == {k: len(v) for k, v in folder_state(src).items()},
                        "the watch to apply the round")  # fmt: skip
        await until(delivered_all, "every change to be delivered to both webhooks")
        catalog = Catalog.open_reader(db)
        try:
            head = changes.head(catalog.db)
            assert changes.pruned(catalog.db) > 0, "retention never pruned"
            state = delivery.get(catalog.db, "all")
        finally:
            catalog.close()
        # back by itself: no longer failing, nothing paused
        assert state and (state.failing_since, state.last_error, state.paused) == (
            None,
            None,
            False,
        )
        # the counter moves after the cursor is stored (the catalog's thread commits it first):
        # wait for it, not for a moment
        delivered = daemon.metrics.webhook_delivered.labels("all")._value.get
        await until(lambda: delivered() >= head, "the delivered counter to reach the head")
        assert delivered() == head
        assert daemon.metrics.webhook_failures.labels("all")._value.get() > 0
    finally:
        daemon.stop.set()
        await asyncio.wait_for(task, 60)
        receiver.close()

    everything = receiver.of("/hook")
    check_signed_and_stable(everything)
    check_signed_and_stable(receiver.of("/created"))
    answers = [r.answer for r in everything]
    assert "500" in answers and "hang" in answers, answers  # the faults happened
    got = receiver.received("/hook")
    cursors = [c for r in got for c in r.cursors]
    assert cursors == list(range(1, head + 1))  # each change once, in order, none skipped
    kinds = {c["kind"] for r in got for c in r.json["changes"]}
    assert {"created", "updated", "deleted"} <= kinds
    # duplicates: a batch whose answer got lost (a hang) came again, with the same id, until
    # a 200
    for i, r in enumerate(everything):
        if r.answer == "hang":
            assert any(d.id == r.id and d.answer == "200" for d in everything[i + 1 :])
    created = [c for r in receiver.received("/created") for c in r.json["changes"]]
    wanted = [c["cursor"] for r in got for c in r.json["changes"] if c["kind"] == "created"]
    assert [c["cursor"] for c in created] == wanted
    assert all(len(r.cursors) <= 3 for r in receiver.received("/created"))


async def test_workers_sharing_a_catalog_deliver_a_webhook_one_at_a_time(
    tmp_path: Path, fast_retries: None
) -> None:
    """Two daemons on one catalog, both configured with the webhook, while files change: one
    holds its lease and delivers; when it stops the other takes over. Every change arrives
    exactly once (no fault, so no batch is sent twice), in order."""
    receiver = Receiver()
    src = tmp_path / "src"
    src.mkdir()
    (tmp_path / "syncd.toml").write_text(
        config_text(src, hook("w", receiver, "/hook", batch=2), watch=True)
    )
    config = load_daemon_config(str(tmp_path / "syncd.toml"))
    db = str(tmp_path / "c.db")
    first, second = Daemon(config, db, poll_seconds=1), Daemon(config, db, poll_seconds=1)
    tasks = [asyncio.create_task(first.run())]

    def delivered(count: int) -> bool:
        head, state = head_and_state(db, "w")
        return bool(state and head >= count and state.cursor == head)

    try:
        await until(lambda: first.ready.is_set() or tasks[0].done(), "the first daemon")
        tasks.append(asyncio.create_task(second.run()))
        await until(lambda: second.ready.is_set() or tasks[1].done(), "the second daemon")
        for i in range(9):  # both watch the folder, both would deliver but for the lease
            (src / f"f{i}.txt").write_text(str(i))
            await until(lambda i=i: delivered(i + 1), f"change {i + 1} to be delivered")
        first.stop.set()
        await asyncio.wait_for(tasks[0], 60)
        for i in range(9, 14):
            (src / f"f{i}.txt").write_text(str(i))
        await until(lambda: delivered(14), "the second daemon to deliver the new files")
    finally:
        for daemon in (first, second):
            daemon.stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
        receiver.close()
    head, _ = head_and_state(db, "w")
    check_signed_and_stable(receiver.of("/hook"))
    assert [c for r in receiver.of("/hook") for c in r.cursors] == list(range(1, head + 1))


# -- kill -9 between the acknowledgement and the stored cursor --------------------------------


def run_daemon(config: Path, db: str, log: Path, **env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "syncd.cli", "-vv", "run", "--config", str(config), "--db", db],
        env={**os.environ, "PYTHONPATH": str(ROOT), "TEST_WEBHOOK_SECRET": SECRET, **env},
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )


#: where a ``kill -9`` lands (see the test below)
KILL_MOMENTS = ("acknowledged", "held", "received", "started")


def test_kill_9_at_20_seeded_moments_mid_delivery_loses_nothing(tmp_path: Path) -> None:
    """``syncd run`` is killed (-9) 20 times, 5 at each of the moments below, in an order and
    at a POST a seeded RNG picks, and started again on the same catalog and receiver; the
    folder changes before each run (6 changes or more, so the run's first reconcile has 3
    batches or more to deliver). The moments, at the run's Nth POST (N from 1 to 3):

    * ``acknowledged``: the endpoint answered 200, the cursor is not stored yet (the
      ``webhook-sent`` pause point): the next run sends that batch first, same id and body;
    * ``held``: the receiver read the batch and holds its answer: the same;
    * ``received``: the receiver answered 200 (the cursor may be stored or not): the next run
      starts with that batch again (same id) or with the one after it;
    * ``started``: the daemon said it runs (its reconcile and delivery under way).

    In the end every change arrived, in cursor order, nothing skipped; every request verifies
    (``standardwebhooks``); a webhook-id always carries the same body; and the changes, applied
    in order to an empty map, give the dataset's items."""
    rng = random.Random(22)
    moments = [moment for moment in KILL_MOMENTS for _ in range(5)]  # 5 kills at each
    rng.shuffle(moments)
    run = {"posts": 0, "hold_at": 0}

    def answer(path: str) -> int | str:
        run["posts"] += 1  # one POST at a time: a webhook sends its batches one by one
        return "hold" if run["posts"] == run["hold_at"] else 200

    receiver = Receiver(answer)
    src = tmp_path / "src"
    src.mkdir()
    config = tmp_path / "syncd.toml"
    # the sender waits for its answer longer than any kill takes to land
    config.write_text(
        config_text(src, hook("all", receiver, "/hook", batch=2, timeout=120), watch=False)
    )
    db = str(tmp_path / "c.db")
    #: each kill's moment and how many requests the receiver had got by then
    cuts: list[tuple[str, int]] = []

    def delivered() -> bool:
        head, state = head_and_state(db, "all")
        return bool(state and head and state.cursor == head)

    try:
        for kill in range(20):
            # 6 changes or more (3 batches of 2, the most N below waits for), 12 after the
            # first run: 6 files new, 2 of the last run's deleted, 4 overwritten
            for i in range(6):
                (src / f"n{kill}-{i}.txt").write_text("new")
            for old in sorted(src.glob(f"n{kill - 1}-*"))[:2]:
                old.unlink()
            for old in sorted(src.glob(f"n{kill - 1}-*"))[2:]:
                old.write_text("overwritten")
            moment, nth = moments[kill], rng.randint(1, 3)
            before = len(receiver.of("/hook"))
            run.update(posts=0, hold_at=nth if moment == "held" else 0)
            env = (
                {"SYNCD_FAULT_PAUSE_AT": f"webhook-sent:{nth}"} if moment == "acknowledged" else {}
            )
            log = tmp_path / f"run{kill}.log"
            proc = run_daemon(config, db, log, **env)

            def there(
                log: Path = log,
                proc: subprocess.Popen[bytes] = proc,
                moment: str = moment,
                nth: int = nth,
                before: int = before,
            ) -> bool:
                if proc.poll() is not None:
                    return True  # it ended by itself: the assert below says so
                if moment == "acknowledged":
                    return b"paused at webhook-sent" in log.read_bytes()
                if moment == "started":
                    return b"syncd: running on catalog" in log.read_bytes()
                return len(receiver.of("/hook")) >= before + nth  # held, or answered 200

            try:
                wait_for(there, f"the kill point {moment}:{nth} of run {kill}")
                assert proc.poll() is None, log.read_text()
            finally:
                proc.send_signal(signal.SIGKILL)
                proc.wait(30)
                receiver.let_go()
            sent = receiver.of("/hook")[before:]
            _, state = head_and_state(db, "all")
            assert state is not None
            if moment in ("acknowledged", "held"):
                # the batch the endpoint got and the cursor never saw: it is still in flight
                last = sent[-1]
                assert len(sent) == nth and (last.answer == "hold") == (moment == "held")
                assert state.batch_end == last.json["next"] and state.cursor < state.batch_end
            cuts.append((moment, len(receiver.of("/hook"))))
        # the last run delivers everything, then stops cleanly (once it runs: a SIGTERM before
        # it handles signals would end it like any process)
        last_log = tmp_path / "last.log"
        proc = run_daemon(config, db, last_log)
        try:
            wait_for(
                lambda: b"syncd: running on catalog" in last_log.read_bytes() and delivered(),
                "every change to be delivered",
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
        head, _ = head_and_state(db, "all")
    finally:
        receiver.close()
    everything = receiver.of("/hook")
    check_signed_and_stable(everything)
    got = receiver.received("/hook")
    assert [c for r in got for c in r.cursors] == list(range(1, head + 1))
    # each run after a kill starts with the batch the kill cut off, or the one after it
    for moment, boundary in cuts:
        if boundary == 0:  # killed before its first POST: nothing was cut off
            continue
        first, last = everything[boundary], everything[boundary - 1]
        if moment in ("acknowledged", "held"):
            assert (first.id, first.body) == (last.id, last.body), moment
        else:
            assert first.id == last.id or first.cursors[0] == last.json["next"] + 1, moment
    follower: dict[str, int] = {}
    for change in (c for r in got for c in r.json["changes"]):
        if change["kind"] == "deleted":
            del follower[change["key"]]
        else:
            follower[change["key"]] = change["item"]["size"]
    assert follower == items(db) == {k: len(v) for k, v in folder_state(src).items()}


# -- a refusal pauses; resume and replay -----------------------------------------------------


async def test_a_4xx_pauses_the_webhook_until_resume_and_replay_resends(
    tmp_path: Path, fast_retries: None, caplog: pytest.LogCaptureFixture
) -> None:
    status = {"code": 410}
    receiver = Receiver(lambda path: status["code"])
    src = tmp_path / "src"
    src.mkdir()
    for i in range(5):
        (src / f"f{i}.txt").write_text(str(i))
    (tmp_path / "syncd.toml").write_text(
        config_text(src, hook("w", receiver, "/hook", batch=2), watch=False)
    )
    config = load_daemon_config(str(tmp_path / "syncd.toml"))
    db = str(tmp_path / "c.db")
    daemon = Daemon(config, db, poll_seconds=1)
    task = asyncio.create_task(daemon.run())
    cli = [sys.executable, "-m", "syncd.cli"]

    def webhooks_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*cli, "webhooks", *args, "--db", db, "--config", str(tmp_path / "syncd.toml")],
            capture_output=True, text=True, timeout=60,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip

    def state() -> delivery.State | None:
        return head_and_state(db, "w")[1]

    def lag() -> float:
        return daemon.metrics.webhook_lag.labels("w")._value.get()

    try:
        await until(lambda: daemon.ready.is_set() or task.done(), "the daemon to start")
        paused = await until(lambda: (s := state()) and s.paused and s, "the 410 to pause it")
        assert "HTTP 410" in (paused.last_error or "")
        (refused,) = receiver.of("/hook")
        listed = json.loads(webhooks_cli("ls", "--json").stdout)
        assert (listed["state"], listed["cursor"], listed["lag"]) == ("paused", 0, 5)
        table = webhooks_cli("ls").stdout.splitlines()
        assert table[0].split("\t") == ["NAME", "URL", "CURSOR", "LAG", "STATE", "LAST ERROR"]
        cells = table[1].split("\t")
        assert cells[:5] == ["w", receiver.url(), "0", "5", "paused"], table
        assert "HTTP 410" in cells[5] and len(table) == 2
        # paused, it sends nothing more, however the log grows (the lag shows it)
        (src / "late.txt").write_text("late")
        daemon.scheduler.trigger("files")
        await until(lambda: lag() == 6, "the lag to count the new change")
        assert len(receiver.of("/hook")) == 1
        assert [r.message for r in caplog.records].count(
            f"webhook 'w' paused: {receiver.url()} answered HTTP 410; fix it, then "
            "`syncd webhooks resume w`"
        ) == 1
        # resume: the refused batch first, with its id, then the rest
        status["code"] = 200
        proc = webhooks_cli("resume", "w")
        assert proc.returncode == 0 and "resumed at cursor 0" in proc.stdout, proc.stderr
        await until(lambda: (s := state()) and s.cursor == 6, "delivery to catch up")
        assert receiver.of("/hook")[1].id == refused.id
        assert [c for r in receiver.received("/hook") for c in r.cursors] == [1, 2, 3, 4, 5, 6]
        # replay from 3: 4, 5, 6 again, as new batches
        count = len(receiver.of("/hook"))
        proc = webhooks_cli("replay", "w", "--from", "3")
        assert proc.returncode == 0, proc.stderr
        await until(lambda: len(receiver.of("/hook")) > count and state().cursor == 6, "replay")
        assert [c for r in receiver.of("/hook")[count:] for c in r.cursors] == [4, 5, 6]
        # a cursor outside the log, an unknown webhook: one line, exit 2
        for args, needle in (
            (("replay", "w", "--from", "99"), "not in the change log"),
            (("replay", "nope", "--from", "0"), "unknown webhook 'nope'"),
            (("resume", "nope"), "no delivery named 'nope'"),
        ):
            proc = webhooks_cli(*args)
            assert proc.returncode == 2 and needle in proc.stderr, proc.stderr
            assert len(proc.stderr.strip().splitlines()) == 1
    finally:
        daemon.stop.set()
        await asyncio.wait_for(task, 60)
        receiver.close()
    check_signed_and_stable(receiver.of("/hook"))


# -- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ('secret = "whsec_literal"', "webhooks.w.secret: holds a literal secret"),
        ('url = "ftp://host/x"', "webhooks.w.url: must be an http:// or https:// URL"),
        ('url = "https://user:pw@host/x"', "webhooks.w.url: must not hold a password"),
        ("batch = 1001", "webhooks.w.batch: must be at most 1000"),
        ('kinds = ["moved"]', "webhooks.w.kinds[0]: must be"),
        ('datasets = ["other"]', "webhooks.w.datasets[0]: unknown dataset 'other'"),
        ('headers = { webhook-id = "x" }', "is set by syncd itself"),
    ],
)
def test_a_bad_webhook_table_is_one_line(tmp_path: Path, extra: str, needle: str) -> None:
    key = extra.split(" ")[0]
    lines = {"url": 'url = "http://127.0.0.1:1/x"', "secret": 'secret = "env:S"'}
    lines[key] = extra
    text = config_text(tmp_path, "[webhooks.w]\n" + "\n".join(lines.values()) + "\n", watch=False)
    (tmp_path / "syncd.toml").write_text(text)
    proc = subprocess.run(
        [sys.executable, "-m", "syncd.cli", "run", "--config", str(tmp_path / "syncd.toml"),
         "--db", str(tmp_path / "c.db")],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert proc.returncode == 2 and needle in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "whsec_literal" not in proc.stderr


def test_retention_keeps_what_a_webhook_has_not_delivered(tmp_path: Path) -> None:
    from syncd import api

    src = tmp_path / "src"
    src.mkdir()
    catalog = Catalog.open(str(tmp_path / "c.db"))
    try:
        for first, count in ((0, 2), (2, 3)):  # two syncs: changes 1-2, then 3-5
            for i in range(first, first + count):
                (src / f"f{i}.txt").write_text(str(i))
            asyncio.run(api.sync(catalog, "files", source=str(src)))
        delivery.replay(catalog.db, "w", 2, "webhook")
        keep = delivery.keep_after(catalog.db, ["w", "new"])  # a new one starts at 0
        assert keep == 0
        assert api.prune_changes(catalog, older_than=0, keep_after=keep)[0] == 0
        keep = delivery.keep_after(catalog.db, ["w"])
        assert api.prune_changes(catalog, older_than=0, keep_after=keep)[0] == 2
        assert changes.pruned(catalog.db) == 2
        assert [c.cursor for c in changes.read(catalog.db, after=2)] == [3, 4, 5]
    finally:
        catalog.close()


def test_delivery_state_on_both_stores(catalogs: Any, tmp_path: Path) -> None:
    """The delivery core on sqlite and PostgreSQL: a batch's end is stored before it is
    sent and cut again the same after a "crash"; filters pass unwanted changes over; a late
    acknowledgement after a replay changes nothing; pause, resume, keep_after, listing."""
    from syncd import api

    catalog = catalogs()
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    for i in range(5):
        (src / f"f{i}.txt").write_text(str(i))
    asyncio.run(api.sync(catalog, "files", source=str(src)))
    db = catalog.db
    assert delivery.ensure(db, "w", "webhook").cursor == 0
    everything = delivery.Filters()
    batch, lag = delivery.next_batch(db, "w", everything, 2)
    assert batch and lag == 5 and (batch.after, batch.end) == (0, 2)
    again, _ = delivery.next_batch(db, "w", everything, 2)  # as after a crash
    assert again == batch and again.id == batch.id
    assert delivery.acknowledge(db, batch)
    assert not delivery.acknowledge(db, batch)  # once
    delivery.ensure(db, "other", "webhook")
    theirs = delivery.Filters(datasets=("files",))
    assert [c.cursor for c in delivery.next_batch(db, "other", theirs, 4)[0].changes] == [
        1,
        2,
        3,
        4,
    ]
    delivery.replay(db, "other", 0, "webhook")
    elsewhere = delivery.Filters(datasets=("elsewhere",))
    assert delivery.next_batch(db, "other", elsewhere, 2) == (None, 0)
    nothing = delivery.Filters(kinds=("deleted",))
    assert delivery.next_batch(db, "w", nothing, 2) == (None, 0)  # passed over to the head
    assert delivery.get(db, "w").cursor == 5
    delivery.replay(db, "w", 1, "webhook")
    batch, _ = delivery.next_batch(db, "w", everything, 3)
    assert [c.cursor for c in batch.changes] == [2, 3, 4]
    delivery.replay(db, "w", 0, "webhook")
    assert not delivery.acknowledge(db, batch)  # a late answer to the batch before the replay
    assert not delivery.record_failure(db, batch, "late", None)
    batch, _ = delivery.next_batch(db, "w", everything, 3)
    assert delivery.pause(db, batch, "http://x answered HTTP 400")
    assert delivery.next_batch(db, "w", everything, 3) == (None, 5)
    other, row = delivery.listing(db, {"w": "http://x"}, "webhook")  # by name
    assert (other["name"], other["url"], other["configured"]) == ("other", None, False)
    assert (row["state"], row["lag"], row["in_flight"]) == ("paused", 5, 3)
    assert delivery.resume(db, "w").paused is False
    assert delivery.next_batch(db, "w", everything, 3)[0] == batch  # the refused batch again
    assert delivery.keep_after(db, ["w"]) == 0 and delivery.keep_after(db, []) is None


def test_retry_after_and_backoff_stay_within_reason() -> None:
    from email.utils import format_datetime

    from syncd.feed.webhooks import display_url, retry_after

    assert retry_after("7") == 7.0 and retry_after(None) is None and retry_after("soon") is None
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    assert 100 < (retry_after(later) or 0) <= 120
    assert delivery.backoff(1, retry_after=86400) == delivery.RETRY_AFTER_MAX
    delays = [delivery.backoff(n) for n in range(1, 40)]
    assert delays[0] <= delivery.BACKOFF_BASE and max(delays) <= delivery.BACKOFF_CAP
    assert (
        display_url("https://u:p@h.example:8443/a/b?token=t#f") == "https://h.example:8443/a/b?..."
    )
