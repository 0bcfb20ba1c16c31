"""``kill -9`` of a running ``syncd run`` (and of ``syncd pull``) at seeded moments (issue 12).

The daemon follows moto S3 (notifications to a moto SQS queue), Azurite blob storage (Event
Grid events the test writes to an Azurite queue) and a watched local folder, as in
``tests/test_daemon_e2e.py``. Each trial kills it at one moment, reached by waiting on a
condition, never by sleeping:

* a named fault-injection point (``providers/faults.py``) where one thread stops for good and
  the log says so: part-way through a listing (``SYNCD_FAULT_LIST_HANG_AFTER``), inside a
  reconcile batch's transaction (``batch-commit``), inside the transaction that applies a
  run's parked deletes and closes it (``run-close``), inside an event batch's transaction
  while its queue messages are received but not deleted (``event-commit``), and after an event
  batch committed but before its messages are deleted (``event-ack``: they are delivered and
  applied a second time);
* a count the test watches (items written, event batches logged), the daemon being killed
  wherever it is when the count is reached.

A generator seeded with ``SYNCD_CRASH_SEED`` (printed) picks each trial's occurrence or count
and the changes made to the sources before it, so a failure can be replayed.

After each kill: the run that was running shows as ``interrupted`` in ``syncd runs ls``; the
daemon restarted without faults makes every dataset equal its source (keys, sizes, ETags);
both queues drain, and the restarted daemon applies at least as many events as there were
messages not deleted before the kill (they come back after the queues' 2 s visibility
timeout: nothing is lost); once drained, the datasets still equal their sources (an event
applied twice changed nothing); the interrupted run is completed by a later attempt.

``syncd pull`` is killed the same way: with a file half-written (``SYNCD_FAULT_DOWNLOAD_HANG_
AFTER``) or after a seeded number of files; no file under its final name is partial, and the
next pull completes the mirror.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from providers.faults import PAUSE_VARIABLE
from syncd.store.catalog import Catalog
from tests.conftest import catalog_state
from tests.emulators import Emulator, notify_queue
from tests.test_daemon_e2e import Daemon, World, make_world, under
from tests.test_sync_cli import syncd
from tests.waiting import wait_for

SEED = int(os.environ.get("SYNCD_CRASH_SEED", "1202"))
#: objects under raw/bulk/: with 50-key pages, a listing of the images dataset has 12+ pages
BULK = 600
#: seconds an unacknowledged message stays hidden on the test queues
VISIBILITY = 2
DATASETS = ("images", "docs", "disk")
#: what the pull trials pull: raw/bulk/00000.bin .. 00099.bin
PULL_PREFIX = "bulk/000"
#: the same objects' keys (pull --prefix is an object key prefix, as for items ls)
PULL_KEYS = "raw/" + PULL_PREFIX
PAUSED = "fault injection: paused"


@pytest.fixture(scope="module")
def crash_world(
    moto: Emulator,
    azurite: Emulator,
    azurite_queue: Emulator,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[World]:
    world = make_world(moto, azurite, azurite_queue, tmp_path_factory.mktemp("crash"), page_size=50)
    world.sqs.set_queue_attributes(
        QueueUrl=world.queue_url, Attributes={"VisibilityTimeout": str(VISIBILITY)}
    )
    text = world.config.read_text().replace(
        'type = "azure-queue"\n', f'type = "azure-queue"\nvisibility_timeout = {VISIBILITY}\n'
    )
    world.config.write_text(text)
    # the bulk goes in without notifications: the first reconcile brings it in
    world.s3.put_bucket_notification_configuration(
        Bucket=world.bucket, NotificationConfiguration={}
    )
    rng = random.Random(SEED)
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda i: world.s3.put_object(
                    Bucket=world.bucket, Key=f"raw/bulk/{i:05d}.bin", Body=os.urandom(i % 97)
                ),
                range(BULK),
            )
        )
    notify_queue(world.s3, world.sqs, world.bucket, world.queue_url)
    for i in range(20):
        world.blob.upload_blob(f"docs/d{i:02d}.txt", os.urandom(rng.randrange(50)))
        (world.folder / f"f{i:02d}.txt").write_bytes(os.urandom(rng.randrange(50)))
    daemon = world.start()
    try:
        converge(world, daemon, {})
    finally:
        assert daemon.stop() == 0
    yield world


# -- what the test observes -------------------------------------------------------------------


def sources(world: World) -> dict[str, dict[str, tuple[int, str]]]:
    return {
        "images": under(world.s3_state(), "raw/"),
        "docs": under(world.blob_state(), "docs/"),
        "disk": world.folder_state(),
    }


def datasets(world: World) -> dict[str, dict[str, tuple[int, str]] | None]:
    """Each dataset's items as the catalog has committed them (None: no such dataset yet)."""
    catalog = Catalog.open_reader(str(world.db))
    try:
        out: dict[str, dict[str, tuple[int, str]] | None] = {}
        for name in DATASETS:
            try:
                out[name] = catalog_state(catalog, name)
            except Exception:  # removed for a trial and not yet re-created
                out[name] = None
        return out
    finally:
        catalog.close()


def query(world: World, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(f"file:{world.db}?mode=ro", uri=True, timeout=30) as conn:
        return conn.execute(sql).fetchall()


def running_runs(world: World) -> list[tuple[str, int]]:
    """(dataset, run id) of every run the catalog records as running."""
    return query(
        world,
        "SELECT d.name, r.id FROM runs r JOIN datasets d ON d.id = r.dataset_id"
        " WHERE r.status = 'running'",
    )


def all_reconciled(world: World) -> bool:
    """Whether every dataset's newest run is completed (no reconcile in flight)."""
    rows = query(
        world,
        "SELECT r.status FROM runs r WHERE r.id IN (SELECT max(id) FROM runs GROUP BY dataset_id)",
    )
    return len(rows) == len(DATASETS) and all(status == "completed" for (status,) in rows)


def attempts(world: World) -> dict[str, int]:
    """How many reconcile attempts each dataset has had (a resumed run adds one)."""
    return dict(
        query(
            world,
            "SELECT d.name, count(a.run_id) FROM datasets d JOIN runs r ON r.dataset_id = d.id"
            " JOIN run_attempts a ON a.run_id = r.id GROUP BY d.name",
        )
    )


def reconciled_since(world: World, before: dict[str, int]) -> bool:
    """Whether every dataset has had a reconcile attempt since ``before`` was taken
    (:func:`attempts`) and none is in flight."""
    now = attempts(world)
    return all(now.get(n, 0) > before.get(n, 0) for n in DATASETS) and all_reconciled(world)


def pending(world: World) -> tuple[int, int]:
    """Messages not yet deleted: (SQS visible + in flight, Azure queue incl. invisible)."""
    attrs = world.sqs.get_queue_attributes(
        QueueUrl=world.queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    sqs = int(attrs["ApproximateNumberOfMessages"]) + int(
        attrs["ApproximateNumberOfMessagesNotVisible"]
    )
    return sqs, world.azure_queue.get_queue_properties().approximate_message_count


def applied(daemon: Daemon, source: str) -> int:
    """Events the daemon logged as applied from ``source``."""
    pattern = re.compile(rf"applied (\d+) event\(s\) from {re.escape(source)} ")
    return sum(int(m.group(1)) for line in list(daemon.log) if (m := pattern.search(line)))


def converge(world: World, daemon: Daemon, before: dict[str, int]) -> None:
    """Wait until every dataset has been reconciled since ``before`` (:func:`attempts`, taken
    before the daemon started), every dataset equals its source and both queues are drained;
    then the datasets must still equal their sources."""

    def settled() -> bool:
        return (
            reconciled_since(world, before)
            and pending(world) == (0, 0)
            and datasets(world) == sources(world)
        )

    wait_for(settled, "every dataset equal to its source, the queues drained", 240, daemon.log)
    # nothing is left to arrive: a redelivered message applied again changed nothing
    assert datasets(world) == sources(world)


def runs_ls(world: World, dataset: str) -> dict[int, dict[str, Any]]:
    proc = syncd("runs", "ls", "--dataset", dataset, "--db", str(world.db), "--json")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    return {row["id"]: row for row in rows}


# -- what the test changes --------------------------------------------------------------------


def change_s3(world: World, rng: random.Random, n: int) -> None:
    """``n`` puts, overwrites and deletes under raw/, some of one key in quick succession (so
    a redelivered older event meets a newer state)."""
    keys = sorted(under(world.s3_state(), "raw/"))
    for _ in range(n):
        roll = rng.random()
        if roll < 0.3 or not keys:
            key = f"raw/new/{rng.randrange(10**6):06d}.bin"
            world.s3.put_object(Bucket=world.bucket, Key=key, Body=os.urandom(rng.randrange(64)))
            keys.append(key)
        elif roll < 0.7:
            key = rng.choice(keys)
            world.s3.put_object(Bucket=world.bucket, Key=key, Body=os.urandom(rng.randrange(64)))
        elif roll < 0.85:
            key = keys.pop(rng.randrange(len(keys)))
            world.s3.delete_object(Bucket=world.bucket, Key=key)
        else:  # churn: created, overwritten, maybe deleted, all at once
            key = f"raw/churn/{rng.randrange(100):03d}.bin"
            for _ in range(rng.randint(1, 3)):
                world.s3.put_object(
                    Bucket=world.bucket, Key=key, Body=os.urandom(rng.randrange(64))
                )
            if rng.random() < 0.5:
                world.s3.delete_object(Bucket=world.bucket, Key=key)
            else:
                keys.append(key)


def change_azure(world: World, rng: random.Random, n: int) -> None:
    """``n`` blob changes under docs/, each with its Event Grid message on the queue."""
    names = sorted(under(world.blob_state(), "docs/"))
    for _ in range(n):
        if rng.random() < 0.25 and names:
            name = names.pop(rng.randrange(len(names)))
            world.blob.delete_blob(name)
            world.blob_event(name, deleted=True)
        else:
            name = (
                rng.choice(names)
                if names and rng.random() < 0.5
                else f"docs/n{rng.randrange(999):03d}.txt"
            )
            world.blob.upload_blob(name, os.urandom(rng.randrange(64)), overwrite=True)
            world.blob_event(name)
            names.append(name)


def change_folder(world: World, rng: random.Random, n: int) -> None:
    files = sorted(p for p in world.folder.rglob("*") if p.is_file())
    for _ in range(n):
        if rng.random() < 0.25 and files:
            files.pop(rng.randrange(len(files))).unlink()
        else:
            path = world.folder / f"n{rng.randrange(999):03d}.txt"
            path.write_bytes(os.urandom(rng.randrange(64)))
            files.append(path)


def change_all(world: World, rng: random.Random) -> None:
    change_s3(world, rng, rng.randint(25, 60))
    change_azure(world, rng, rng.randint(2, 8))
    change_folder(world, rng, rng.randint(2, 8))


# -- the trials -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trial:
    """One kill: where (``kind``), which occurrence or count (``nth``), and whether the
    images dataset is removed first, so its reconcile creates every item again in batches."""

    kind: str
    nth: int
    fresh: bool = False

    @property
    def live(self) -> bool:
        """Killed while following events (the sources change after its reconciles)."""
        return self.kind in ("event-commit", "event-ack", "events")


#: how many trials of each kind
TRIALS = {
    "listing": 3,
    "batch-commit": 3,
    "run-close": 2,
    "event-commit": 3,
    "event-ack": 3,
    "items": 2,
    "events": 2,
}


def plan(rng: random.Random) -> list[Trial]:
    trials = []
    for kind, count in TRIALS.items():
        for _ in range(count):
            if kind == "listing":
                trials.append(Trial(kind, rng.randrange(1, BULK), rng.random() < 0.5))
            elif kind == "items":
                # 0: as soon as the run row is there; else once the first batch is in (a
                # race with the end of the run, which may win: then no run is interrupted)
                trials.append(Trial(kind, rng.choice((0, rng.randrange(1, 500))), True))
            elif kind == "events":
                trials.append(Trial(kind, rng.randint(1, 4)))
            else:  # a named point: its first, second or third occurrence
                trials.append(
                    Trial(kind, rng.randint(1, 3), kind == "batch-commit" and rng.random() < 0.5)
                )
    rng.shuffle(trials)
    return trials


def fault_env(trial: Trial) -> dict[str, str]:
    if trial.kind == "listing":
        return {"SYNCD_FAULT_LIST_HANG_AFTER": str(trial.nth)}
    if trial.kind in ("batch-commit", "run-close", "event-commit", "event-ack"):
        return {PAUSE_VARIABLE: f"{trial.kind}:{trial.nth}"}
    return {}


def log_has(daemon: Daemon, text: str, times: int = 1) -> bool:
    return sum(text in line for line in list(daemon.log)) >= times


def items_count(world: World, dataset: str) -> int:
    rows = query(
        world,
        "SELECT count(*) FROM items i JOIN datasets d ON d.id = i.dataset_id"
        f" WHERE d.name = '{dataset}'",
    )
    return int(rows[0][0])


def reach(
    world: World, daemon: Daemon, trial: Trial, rng: random.Random, before: dict[str, int]
) -> None:
    """Bring the daemon to the trial's moment (it is killed right after); ``before``: the
    reconcile attempts before it started."""
    if trial.live:
        wait_for(lambda: reconciled_since(world, before), "the reconciles at start", log=daemon.log)
        batches = sum("from s3-events" in line for line in list(daemon.log))
        change_all(world, rng)
    if trial.kind == "events":
        wait_for(
            lambda: log_has(daemon, "from s3-events", batches + trial.nth),
            f"event batch {trial.nth}",
            log=daemon.log,
        )
    elif trial.kind == "items":
        # the re-created dataset's run has started and written its first nth items (batches
        # of 500: none or the first), or has already ended
        wait_for(
            lambda: (
                (
                    any(name == "images" for name, _ in running_runs(world))
                    and items_count(world, "images") >= trial.nth
                )
                or reconciled_since(world, before)
            ),
            f"{trial.nth} items written",
            log=daemon.log,
        )
    else:
        wait_for(lambda: log_has(daemon, "fault injection: "), trial.kind, log=daemon.log)


def kill(daemon: Daemon) -> None:
    daemon.proc.send_signal(signal.SIGKILL)
    daemon.proc.wait(timeout=60)


@pytest.mark.slow
def test_the_daemon_survives_kill_9_at_seeded_moments(crash_world: World) -> None:
    world = crash_world
    rng = random.Random(SEED)
    trials = plan(rng)
    print(f"SYNCD_CRASH_SEED={SEED}: {len(trials)} trials")
    outcomes: dict[str, list[str]] = {}
    for number, trial in enumerate(trials, 1):
        if trial.fresh:
            removed = syncd("datasets", "rm", "images", "--db", str(world.db), "--yes")
            assert removed.returncode == 0, removed.stderr
        if not trial.live:
            change_all(world, rng)  # while the daemon is down: the reconcile at start finds it
        started = time.monotonic()
        before = attempts(world)
        daemon = world.start(env=fault_env(trial))
        reach(world, daemon, trial, rng, before)
        kill(daemon)
        killed = time.monotonic()

        interrupted = running_runs(world)
        for name, run_id in interrupted:
            assert runs_ls(world, name)[run_id]["status"] == "interrupted", (trial, name)
        if trial.kind in ("listing", "batch-commit", "run-close"):
            assert interrupted, f"{trial}: no run was interrupted"
        left = pending(world)

        before = attempts(world)
        daemon = world.start()
        try:
            converge(world, daemon, before)
            assert applied(daemon, "s3-events") >= left[0], (trial, left, daemon.log[-20:])
            assert applied(daemon, "blob-events") >= left[1], (trial, left, daemon.log[-20:])
            for name, run_id in interrupted:
                run = runs_ls(world, name)[run_id]
                statuses = [a["status"] for a in run["attempt_history"]]
                assert run["status"] == "completed" and "interrupted" in statuses, (trial, run)
        finally:
            if number == len(trials):
                assert daemon.stop() == 0  # the last one stops as an operator would
            else:
                kill(daemon)  # quiet: every message is deleted and every run closed
        outcomes.setdefault(trial.kind, []).append(
            f"#{number} nth={trial.nth}{' fresh' if trial.fresh else ''}: "
            f"{len(interrupted)} run(s) interrupted, {left[0]}+{left[1]} message(s) pending; "
            f"killed after {killed - started:.1f}s, converged {time.monotonic() - killed:.1f}s later"
        )
        print(outcomes[trial.kind][-1], flush=True)
    for kind, lines in outcomes.items():
        print(f"{kind}: {len(lines)} trial(s)")
        for line in lines:
            print("   ", line)


# -- pull ---------------------------------------------------------------------------------


def folder_files(root: Path) -> dict[str, Path]:
    return {p.relative_to(root).as_posix(): p for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_pull_survives_kill_9_at_seeded_moments(crash_world: World, tmp_path: Path) -> None:
    world = crash_world
    rng = random.Random(SEED + 1)
    items = {
        row["filename"].lstrip("/"): row
        for row in map(
            json.loads,
            syncd(
                "items", "ls", "--dataset", "images", "--db", str(world.db), "--json"
            ).stdout.splitlines(),
        )
    }
    # the first 100 bulk objects, less any the daemon trials (same world) deleted: enough
    # files for 8 downloads at once to be cut anywhere
    items = {name: row for name, row in items.items() if name.startswith(PULL_PREFIX)}
    assert len(items) >= 50, f"only {len(items)} objects under {PULL_PREFIX} to pull"
    trials = [("half-written", rng.randrange(0, len(items))) for _ in range(3)]
    trials.append(("files", rng.randrange(1, len(items))))
    for number, (kind, nth) in enumerate(trials, 1):
        target = tmp_path / f"pull-{number}"
        env = {**world.env}
        if kind == "half-written":
            env["SYNCD_FAULT_DOWNLOAD_HANG_AFTER"] = str(nth)
        proc = subprocess.Popen(
            [sys.executable, "-m", "syncd.cli", "pull", "--dataset", "images", str(target),
             "--prefix", PULL_KEYS, "--db", str(world.db)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

        def moment(
            kind: str = kind, nth: int = nth, target: Path = target, proc: Any = proc
        ) -> bool:
            if proc.poll() is not None:
                return True  # it finished first: killed after the end
            files = folder_files(target) if target.exists() else {}
            if kind == "half-written":
                return any(name.endswith(".syncd-tmp") for name in files)
            return sum(not name.endswith(".syncd-tmp") for name in files) >= nth

        wait_for(moment, f"pull trial {number} ({kind} {nth})")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        for name, path in folder_files(target).items():
            if not name.endswith(".syncd-tmp"):  # under its final name: whole
                assert path.stat().st_size == items[name]["size"], (kind, nth, name)

        again = syncd("pull", "--dataset", "images", str(target), "--prefix", PULL_KEYS,
                      "--db", str(world.db), env=world.env)  # fmt: skip
        assert again.returncode == 0, again.stderr
        files = folder_files(target)
        assert set(files) == set(items), (kind, nth)
        for name, path in files.items():
            item = items[name]
            data = path.read_bytes()
            assert len(data) == item["size"], name
            if item["md5"]:
                assert hashlib.md5(data).hexdigest() == item["md5"], name
