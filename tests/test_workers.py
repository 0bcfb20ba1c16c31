"""Several ``syncd run`` workers on one catalog (issue 13, "work sharing").

Three real ``syncd run`` subprocesses share one catalog (the ``catalog_url`` fixture) and one
moto SQS queue that receives the notifications of one moto S3 bucket. The bucket holds 20
small datasets (``dNN/``, 30 objects each) and one larger one (``big/``, 3,000 objects in
100-key pages, so its run commits a batch, and with it a checkpoint, after 500 keys on sqlite
and 2,000 on PostgreSQL: the store's batch size, ``Database.sync_batch``).

A local folder of 100,000 files (4,000 on sqlite), ``huge``, is a split dataset: its run is cut
into four key ranges, each leased and listed on its own by whichever worker is free.

Every worker runs with ``SYNCD_FAULT_LIST_HANG_AFTER=2700`` (for listings under ``big/`` only): the small datasets never reach
it, and whichever worker takes ``big`` stops answering in its listing after 2,700 keys, with a
checkpoint committed and its lease renewed. That worker (found from the catalog: the owner of
``big``'s lease) is killed with SIGKILL. Then, every wait on a condition:

* while the three run, ``syncd workers ls --json`` and ``GET /api/v1/workers`` show the three,
  the victim holding ``big``'s lease; a manual trigger of ``big`` on another worker is refused
  (409) naming the holder, one of a free dataset runs at once on the worker that received it;
* after the kill the registry shows the two survivors live and the victim gone; a survivor
  takes ``big`` over and resumes its run from the checkpoint (a second attempt of the same run,
  resumed after a key);
* every dataset ends equal to its prefix of the bucket (keys, sizes, ETags); changes made while
  the workers ran reached them through SQS; no dataset has two attempts that overlap in time;
  with ``interval = 3600`` every small dataset was reconciled once (twice for the triggered
  one), whichever worker did it: the schedule is shared, not run three times;
* ``huge`` ends as one completed run of four ranges, equal to its folder, no range ever held
  by two workers at once (its range attempts do not overlap);
* a notification delivered twice (an older one, sent again after everything settled) changes
  no item row at all.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import boto3
import pytest

from providers.local import local_etag
from syncd.store.catalog import Catalog
from syncd.store.pg import close_pools
from tests.conftest import STORES, catalog_state, unique_bucket
from tests.emulators import Emulator, free_port, moto_env, notify_queue
from tests.waiting import wait_for

T = TypeVar("T")
TOKEN = "workers-token-0123456789abcdef"
SMALL = 20
SMALL_OBJECTS = 30
BIG_OBJECTS = 3000
#: the listing of big stops here (a batch is committed before: 500 rows on sqlite, 2,000 on
#: PostgreSQL)
HANG_AFTER = 2700
#: seconds a lease (and a worker's registration) lives without renewal
LEASE_TTL = 4
VISIBILITY = 3
NAMES = [f"d{i:02d}" for i in range(SMALL)] + ["big"]
#: a local folder of this many files, its run split into HUGE_RANGES key ranges that the
#: workers share (100,000 on PostgreSQL, the scale-out store; fewer on sqlite, whose one
#: writer makes the workers take turns)
HUGE_FILES = {"postgresql": 100_000, "sqlite": 4_000}
HUGE_RANGES = 4


@pytest.fixture(params=STORES)
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The catalog the workers share: a sqlite file (several processes on one host, WAL), or
    a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield str(tmp_path / "catalog.db")
        return
    yield request.getfixturevalue("postgres_url")
    close_pools()  # this test's own reads, before the database is dropped


@dataclass
class Worker:
    proc: subprocess.Popen[str]
    port: int
    log: list[str] = field(default_factory=list)

    def api(self, path: str, method: str = "GET") -> tuple[int, Any]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            method=method,
            data=b"" if method == "POST" else None,
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")


def config(moto_url: str, bucket: str, queue_url: str, port: int, huge: Path) -> str:
    datasets = "".join(
        f'\n[drivers.{n}]\ntype = "s3"\nbucket = "{bucket}"\npath = "{n}/"\n'
        f'endpoint = "{moto_url}"\npage_size = 100\n\n[datasets.{n}]\ndriver = "{n}"\n'
        for n in NAMES
    )
    datasets += (
        f'\n[drivers.huge]\ntype = "local"\nbucket = "{huge}"\n'
        f'\n[datasets.huge]\ndriver = "huge"\nranges = {HUGE_RANGES}\nwatch = false\n'
    )
    return f"""
[daemon]
interval = 3600
lease_ttl = {LEASE_TTL}
{datasets}
[queues.s3-events]
type = "sqs"
url = "{queue_url}"

[server]
host = "127.0.0.1"
port = {port}
"""


@dataclass
class Fleet:
    """The bucket, the queue and the workers' shared settings."""

    tmp: Path
    s3: Any
    sqs: Any
    bucket: str
    queue_url: str
    db: str
    env: dict[str, str]
    moto_url: str
    huge: Path
    workers: list[Worker] = field(default_factory=list)

    def start(self) -> Worker:
        """Start one worker (its own API port; otherwise the same config) and return once it
        says it is up."""
        port = free_port()
        path = self.tmp / f"worker-{port}.toml"
        path.write_text(config(self.moto_url, self.bucket, self.queue_url, port, self.huge))
        proc = subprocess.Popen(
            [sys.executable, "-m", "syncd.cli", "run", "--config", str(path), "--db", self.db],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        worker = Worker(proc, port)
        self.workers.append(worker)
        assert proc.stderr is not None
        for line in proc.stderr:
            worker.log.append(line)
            if "running on catalog" in line:
                break
        else:
            raise AssertionError("syncd run did not start:\n" + "".join(worker.log))

        def drain() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                worker.log.append(line)

        threading.Thread(target=drain, daemon=True).start()
        return worker

    def logs(self) -> list[str]:
        return [f"[{w.proc.pid}] {line}" for w in self.workers for line in w.log]

    def bucket_state(self, prefix: str) -> dict[str, tuple[int, str]]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return {
            o["Key"]: (o["Size"], o["ETag"].strip('"'))
            for p in pages
            for o in p.get("Contents", [])
        }

    def query(self, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        catalog = Catalog.open_reader(self.db)
        try:
            return [tuple(r) for r in catalog.db.execute(sql, params or []).fetchall()]
        finally:
            catalog.close()

    def items(self, name: str) -> dict[str, tuple[int, str]] | None:
        catalog = Catalog.open_reader(self.db)
        try:
            if catalog.find_dataset(name) is None:
                return None
            return catalog_state(catalog, name)
        finally:
            catalog.close()

    def folder_state(self) -> dict[str, tuple[int, str]]:
        """The huge folder as its dataset must hold it: relative path, size, local ETag."""
        out = {}
        for root, _, files in os.walk(self.huge):
            for name in files:
                path = Path(root, name)
                out[path.relative_to(self.huge).as_posix()] = (
                    path.stat().st_size,
                    local_etag(path.stat()),
                )
        return out

    def registry(self) -> dict[str, Any]:
        done = subprocess.run(
            [sys.executable, "-m", "syncd.cli", "workers", "ls", "--db", self.db, "--json"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def worker_id(self, worker: Worker) -> str:
        """The registered id of a live worker (from the catalog, by its pid)."""
        rows = self.query("SELECT id FROM workers WHERE pid = ?", [worker.proc.pid])
        assert len(rows) == 1, rows
        return rows[0][0]

    def events_seen(self) -> int:
        """Bucket events the live workers have taken from the queue, every outcome."""
        total = 0
        for worker in self.workers:
            if worker.proc.poll() is not None:
                continue
            with urllib.request.urlopen(
                urllib.request.Request(
                    f"http://127.0.0.1:{worker.port}/metrics",
                    headers={"Authorization": f"Bearer {TOKEN}"},
                ),
                timeout=30,
            ) as resp:
                for line in resp.read().decode().splitlines():
                    if line.startswith("syncd_events_total{") and 'source="s3-events"' in line:
                        total += int(float(line.rsplit(" ", 1)[1]))
        return total

    def queue_drained(self) -> bool:
        attrs = self.sqs.get_queue_attributes(
            QueueUrl=self.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return all(v == "0" for v in attrs.values())


@pytest.fixture
def fleet(moto: Emulator, tmp_path: Path, catalog_url: str) -> Iterator[Fleet]:
    s3 = boto3.client("s3", endpoint_url=moto.url)
    sqs = boto3.client("sqs", endpoint_url=moto.url)
    bucket = unique_bucket("workers")
    s3.create_bucket(Bucket=bucket)
    queue_url = sqs.create_queue(
        QueueName=f"events-{bucket}", Attributes={"VisibilityTimeout": str(VISIBILITY)}
    )["QueueUrl"]
    keys = [f"d{i:02d}/{j:03d}.bin" for i in range(SMALL) for j in range(SMALL_OBJECTS)]
    keys += [f"big/{j:05d}.bin" for j in range(BIG_OBJECTS)]
    with ThreadPoolExecutor(8) as pool:  # before the notifications: the reconciles bring it in
        list(pool.map(lambda k: s3.put_object(Bucket=bucket, Key=k, Body=k.encode()), keys))
    notify_queue(s3, sqs, bucket, queue_url)
    huge = tmp_path / "huge"
    store = "postgresql" if catalog_url.startswith("postgresql") else "sqlite"
    for i in range(HUGE_FILES[store]):
        folder = huge / f"{i // 1000:03d}"
        if i % 1000 == 0:
            folder.mkdir(parents=True)
        (folder / f"{i:06d}.txt").write_text(str(i))
    env = {
        **os.environ,
        **moto_env(moto),
        "SYNCD_API_TOKEN": TOKEN,
        "SYNCD_FAULT_LIST_HANG_AFTER": str(HANG_AFTER),
        "SYNCD_FAULT_LIST_PREFIX": "big/",  # the other datasets list normally
    }
    found = Fleet(tmp_path, s3, sqs, bucket, queue_url, catalog_url, env, moto.url, huge)
    yield found
    for worker in found.workers:
        if worker.proc.poll() is None:
            worker.proc.kill()
            worker.proc.wait(timeout=60)


def lease_of(fleet: Fleet, name: str) -> str | None:
    """The owner of dataset ``name``'s lease, if anyone holds it."""
    rows = fleet.query(
        "SELECT l.owner FROM leases l JOIN datasets d ON l.name = 'dataset:' || d.id"
        " WHERE d.name = ?",
        [name],
    )
    return rows[0][0] if rows else None


def attempts(fleet: Fleet, name: str) -> list[tuple[Any, ...]]:
    """Every attempt of every run of ``name``: (run, attempt, owner, started, ended, status,
    resumed_after), in start order."""
    return fleet.query(
        "SELECT a.run_id, a.attempt, a.owner, a.started_at, a.ended_at, a.status,"
        " a.resumed_after FROM run_attempts a JOIN runs r ON r.id = a.run_id"
        " JOIN datasets d ON d.id = r.dataset_id WHERE d.name = ? ORDER BY a.started_at",
        [name],
    )


def matching(fetch: Callable[[], T], ok: Callable[[T], Any]) -> Callable[[], T | None]:
    """A condition for ``wait_for``: ``fetch()``'s value once ``ok`` accepts it, else None."""

    def condition() -> T | None:
        value = fetch()
        return value if ok(value) else None

    return condition


def pids(workers: list[dict[str, Any]]) -> set[int]:
    return {w["pid"] for w in workers}


@pytest.mark.slow
def test_three_workers_share_the_datasets_and_survive_a_kill(fleet: Fleet) -> None:
    # a notification the test takes off the queue itself, to deliver twice at the end (the
    # queue's s3:TestEvent, from setting up the notifications, goes too)
    fleet.s3.put_object(Bucket=fleet.bucket, Key="d00/twice.bin", Body=b"first version")

    def take_message() -> str | None:
        for message in fleet.sqs.receive_message(
            QueueUrl=fleet.queue_url, WaitTimeSeconds=1, MaxNumberOfMessages=10
        ).get("Messages", []):
            fleet.sqs.delete_message(
                QueueUrl=fleet.queue_url, ReceiptHandle=message["ReceiptHandle"]
            )
            if "twice.bin" in message["Body"]:
                return message["Body"]
        return None

    first_message = wait_for(take_message, "the notification of d00/twice.bin")

    with ThreadPoolExecutor(3) as pool:
        workers = list(pool.map(lambda _: fleet.start(), range(3)))
    by_pid = {w.proc.pid: w for w in workers}

    # the worker that took big stops in its listing, a batch committed, its lease renewed
    def big_checkpointed() -> str | None:
        owner = lease_of(fleet, "big")
        rows = fleet.query(
            "SELECT r.resume_key FROM runs r JOIN datasets d ON d.id = r.dataset_id"
            " WHERE d.name = 'big' AND r.status = 'running' AND r.resume_key IS NOT NULL"
        )
        return owner if owner and rows else None

    big_owner = wait_for(big_checkpointed, "big's first batch", log=fleet.logs())
    victim_id = big_owner.rsplit("/", 1)[0]
    victim_pid = int(victim_id.split(":")[1])
    victim = by_pid[victim_pid]
    survivors = [w for w in workers if w is not victim]
    wait_for(
        lambda: any("listing paused" in line for line in victim.log), "the hang", log=victim.log
    )

    # events while the workers run: create, overwrite, delete in a few datasets
    fleet.s3.put_object(Bucket=fleet.bucket, Key="d00/twice.bin", Body=b"second, longer version")
    for i in (1, 2, 3):
        fleet.s3.put_object(Bucket=fleet.bucket, Key=f"d{i:02d}/new.bin", Body=b"new" * i)
        fleet.s3.put_object(Bucket=fleet.bucket, Key=f"d{i:02d}/000.bin", Body=b"overwritten")
        fleet.s3.delete_object(Bucket=fleet.bucket, Key=f"d{i:02d}/001.bin")

    # the registry: three live workers, the victim holding big's lease
    registry = wait_for(
        matching(
            fleet.registry,
            lambda r: pids(r["workers"]) == set(by_pid) and all(w["api"] for w in r["workers"]),
        ),
        "three registered workers",
        log=fleet.logs(),
    )
    held = {w["pid"]: {x["dataset"] for x in w["leases"] if x["live"]} for w in registry["workers"]}
    assert "big" in held[victim_pid]
    assert not any("big" in held[w.proc.pid] for w in survivors)
    assert {w["api"] for w in registry["workers"]} == {
        f"http://127.0.0.1:{w.port}" for w in workers
    }
    status, body = survivors[0].api("/api/v1/workers")
    assert status == 200 and pids(body["workers"]) == set(by_pid), body

    # a manual trigger: refused for big (another worker holds it), run at once for d05
    status, body = survivors[0].api("/api/v1/datasets/big/sync", method="POST")
    assert status == 409 and victim_id in body["error"], body
    wait_for(
        lambda: len(attempts(fleet, "d05")) == 1 and lease_of(fleet, "d05") is None,
        "d05's scheduled reconcile",
        log=fleet.logs(),
    )
    status, body = survivors[0].api("/api/v1/datasets/d05/sync", method="POST")
    assert status == 202, body
    d05 = wait_for(
        matching(lambda: attempts(fleet, "d05"), lambda a: len(a) == 2 and a[1][5] == "completed"),
        "the triggered reconcile of d05",
        log=fleet.logs(),
    )
    assert d05[1][2].startswith(fleet.worker_id(survivors[0]) + "/")

    # kill -9: a survivor takes big over and resumes its run from the checkpoint
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait(timeout=60)
    big = wait_for(
        matching(lambda: attempts(fleet, "big"), lambda a: a and a[-1][5] == "completed"),
        "big taken over and completed",
        timeout=300,
        log=fleet.logs(),
    )
    assert len(big) == 2 and big[0][0] == big[1][0], big  # one run, two attempts
    assert big[0][2].startswith(victim_id + "/") and big[0][5] == "interrupted"
    assert big[1][6] is not None  # resumed after a key, not started over
    assert any(big[1][2].startswith(fleet.worker_id(w) + "/") for w in survivors)

    registry = wait_for(
        matching(fleet.registry, lambda r: pids(r["workers"]) == pids_of(survivors)),
        "the registry without the victim",
        log=fleet.logs(),
    )
    assert pids(registry["gone"]) == {victim_pid}
    status, body = survivors[1].api("/api/v1/workers")
    assert status == 200 and pids(body["workers"]) == pids_of(survivors), body

    # every dataset equals its prefix of the bucket, events included, once the queue is empty
    def converged() -> bool:
        return fleet.queue_drained() and all(
            fleet.items(n) == fleet.bucket_state(f"{n}/") for n in NAMES
        )

    wait_for(converged, "every dataset equal to its bucket prefix", timeout=300, log=fleet.logs())
    assert fleet.items("d00")["d00/twice.bin"][0] == len(b"second, longer version")

    # the split dataset: one run in HUGE_RANGES ranges, shared out, equal to its folder, and no
    # range ever held by two workers at once
    (run_id, ranges), *others = wait_for(
        matching(
            lambda: fleet.query(
                "SELECT r.id, r.ranges FROM runs r JOIN datasets d ON d.id = r.dataset_id"
                " WHERE d.name = 'huge' AND r.status = 'completed'"
            ),
            bool,
        ),
        "the split run of huge completed",
        timeout=600,
        log=fleet.logs(),
    )
    assert not others and ranges == HUGE_RANGES
    assert fleet.items("huge") == fleet.folder_state()
    range_rows = fleet.query(
        "SELECT idx, owner, started_at, ended_at FROM range_attempts WHERE run_id = ?"
        " ORDER BY idx, started_at",
        [run_id],
    )
    assert {r[0] for r in range_rows} == set(range(HUGE_RANGES)), range_rows
    for before, after in itertools.pairwise(range_rows):
        if before[0] == after[0]:
            assert before[3] is not None and before[3] <= after[2], range_rows

    # the shared schedule: one reconcile per dataset (d05: two), never two at once
    for name in NAMES:
        history = attempts(fleet, name)
        runs = {a[0] for a in history}
        assert len(runs) == (2 if name == "d05" else 1), (name, history)
        for before, after in itertools.pairwise(history):
            assert before[4] is not None and before[4] <= after[3], (name, history)

    # the older notification delivered (twice) again changes no item row
    snapshot = fleet.query("SELECT * FROM items ORDER BY dataset_id, key")
    seen = fleet.events_seen()
    for _ in range(2):
        fleet.sqs.send_message(QueueUrl=fleet.queue_url, MessageBody=first_message)
    wait_for(
        lambda: fleet.events_seen() >= seen + 2 and fleet.queue_drained(),
        "the redelivered notification consumed",
        log=fleet.logs(),
    )
    assert fleet.query("SELECT * FROM items ORDER BY dataset_id, key") == snapshot

    for worker in survivors:
        worker.proc.send_signal(signal.SIGTERM)
    assert [w.proc.wait(timeout=120) for w in survivors] == [0, 0]
    assert fleet.registry()["workers"] == []  # a clean stop unregisters


def pids_of(workers: list[Worker]) -> set[int]:
    return {w.proc.pid for w in workers}
