"""The soak (issue 12): ``syncd run`` under continuous change, faults and a purged queue.

For ``SYNCD_SOAK_SECONDS`` (default 600 when ``CI`` is set, else 60) the daemon follows moto S3
(notifications to SQS), Azurite blob storage (Event Grid messages on an Azurite queue) and a
watched local folder, while a driver thread makes random puts, overwrites and deletes in all
three (a bounded pool of keys, so overwrites and deletes are frequent) and sends the matching
events. The daemon reaches moto and the Azurite queue through :class:`tests.proxy.FaultProxy`
loopback proxies that fail every tenth request (S3/SQS: ``503 SlowDown``; Azure queue: a
dropped connection), so about 10 % of its requests fail. Halfway through, the SQS queue is
purged once (those events are lost; the final reconcile repairs them).

At the end: the queues drain, one reconcile of each dataset is asked for through the API, and
then every dataset equals its source (keys, sizes, ETags). The daemon's RSS (``VmRSS``) and open
file descriptors are sampled every minute (every sixth of the run, if shorter) and printed; the
last sample stays within ``first * 1.5 + 20 MiB`` and ``first + 10`` descriptors.
"""

from __future__ import annotations

import os
import random
import re
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.emulators import Emulator
from tests.proxy import FaultProxy
from tests.test_daemon_crash import attempts, datasets, pending, reconciled_since, sources
from tests.test_daemon_e2e import Daemon, World, make_world
from tests.waiting import wait_for

SECONDS = float(os.environ.get("SYNCD_SOAK_SECONDS") or (600 if os.environ.get("CI") else 60))
SEED = int(os.environ.get("SYNCD_SOAK_SEED", "1202"))
#: keys per source the driver draws from
POOL = 300
#: one request in this many, through the proxies, fails
FAULT_EVERY = 10
SLOWDOWN = (
    503,
    {"Content-Type": "application/xml"},
    b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>",
)


def inject(proxy: FaultProxy, reply: Any, stop: threading.Event, counts: Counter[str]) -> None:
    """Fail one request in every ``FAULT_EVERY`` through ``proxy`` until ``stop``."""
    seen = [0]
    while not stop.is_set():
        with proxy.lock:
            # woken by every answered request; the timeout only lets ``stop`` be noticed
            proxy.lock.wait_for(lambda: proxy.requests >= seen[0] + FAULT_EVERY, timeout=1)
            if proxy.requests >= seen[0] + FAULT_EVERY:
                seen[0] = proxy.requests
                proxy.reply = reply
                proxy.fail += 1
                counts["faults armed"] += 1


def drive(world: World, stop: threading.Event, counts: Counter[str]) -> None:
    """Random puts, overwrites and deletes with their events, until ``stop``."""
    rng = random.Random(SEED)
    s3_keys: set[str] = set()
    blobs: set[str] = set()
    files: set[str] = set()
    while not stop.is_set():
        source = rng.choice(("s3", "azure", "folder"))
        n = rng.randrange(POOL)
        data = os.urandom(rng.randrange(2048))
        if source == "s3":
            key = f"raw/k{n:03d}.bin"
            if key in s3_keys and rng.random() < 0.3:
                world.s3.delete_object(Bucket=world.bucket, Key=key)
                s3_keys.discard(key)
                counts["s3 delete"] += 1
            else:
                world.s3.put_object(Bucket=world.bucket, Key=key, Body=data)
                counts["s3 overwrite" if key in s3_keys else "s3 put"] += 1
                s3_keys.add(key)
        elif source == "azure":
            name = f"docs/k{n:03d}.txt"
            if name in blobs and rng.random() < 0.3:
                world.blob.delete_blob(name)
                world.blob_event(name, deleted=True)
                blobs.discard(name)
                counts["azure delete"] += 1
            else:
                world.blob.upload_blob(name, data, overwrite=True)
                world.blob_event(name)
                counts["azure overwrite" if name in blobs else "azure put"] += 1
                blobs.add(name)
        else:
            rel = f"d{n % 7}/k{n:03d}.txt"
            path = world.folder / rel
            if rel in files and rng.random() < 0.3:
                path.unlink()
                files.discard(rel)
                counts["folder delete"] += 1
            else:
                path.parent.mkdir(exist_ok=True)
                path.write_bytes(data)
                counts["folder overwrite" if rel in files else "folder put"] += 1
                files.add(rel)
        stop.wait(0.01)  # a pace, not a synchronisation: leave the 2 cores to the daemon


def sample(pid: int) -> tuple[int, int]:
    """(VmRSS in KiB, open file descriptors) of process ``pid``."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    assert match, status
    return int(match.group(1)), len(os.listdir(f"/proc/{pid}/fd"))


def events_total(daemon: Daemon) -> dict[str, float]:
    status, text = daemon.api("/metrics")
    assert status == 200
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("syncd_events_total{"):
            labels, value = line.rsplit(" ", 1)
            out[labels[len("syncd_events_total") :]] = float(value)
    return out


def reconcile_once(world: World, daemon: Daemon) -> None:
    """Ask for one reconcile of every dataset and wait until each has completed it."""
    before = attempts(world)
    for name in sources(world):
        status, body = daemon.api(f"/api/v1/datasets/{name}/sync", method="POST")
        assert status == 202, body
    wait_for(
        lambda: reconciled_since(world, before),
        "one more reconcile of every dataset",
        300,
        daemon.log,
    )


@pytest.mark.slow
def test_soak_daemon_under_change_faults_and_a_purge(
    moto: Emulator, azurite: Emulator, azurite_queue: Emulator, tmp_path: Path
) -> None:
    world = make_world(moto, azurite, azurite_queue, tmp_path)
    s3_proxy, queue_proxy = FaultProxy(moto.url), FaultProxy(azurite_queue.url)
    config = world.config.read_text().replace(moto.url, s3_proxy.url)
    # a message whose delete was refused comes back soon
    config = config.replace(
        'type = "azure-queue"\n', 'type = "azure-queue"\nvisibility_timeout = 5\n'
    )
    world.config.write_text(config)
    world.env["AWS_ENDPOINT_URL"] = s3_proxy.url
    world.env["AZURE_STORAGE_CONNECTION_STRING"] = world.env[
        "AZURE_STORAGE_CONNECTION_STRING"
    ].replace(azurite_queue.url, queue_proxy.url)
    counts: Counter[str] = Counter()
    stop = threading.Event()
    daemon = world.start()
    threads: list[threading.Thread] = []
    try:
        wait_for(lambda: reconciled_since(world, {}), "the reconciles at start", log=daemon.log)
        threads = [
            threading.Thread(target=drive, args=(world, stop, counts), daemon=True),
            threading.Thread(target=inject, args=(s3_proxy, SLOWDOWN, stop, counts), daemon=True),
            threading.Thread(target=inject, args=(queue_proxy, None, stop, counts), daemon=True),
        ]
        for thread in threads:
            thread.start()
        every = min(60.0, SECONDS / 6)
        started = time.monotonic()
        samples = [(0.0, *sample(daemon.proc.pid))]
        purged, next_sample = False, every
        # the soak's clock: sample each ``every`` seconds, purge once at half time
        while (elapsed := time.monotonic() - started) < SECONDS:
            assert daemon.proc.poll() is None, "the daemon died:\n" + "".join(daemon.log[-40:])
            if not purged and elapsed >= SECONDS / 2:
                world.sqs.purge_queue(QueueUrl=world.queue_url)
                purged = True
            if elapsed >= next_sample:
                samples.append((elapsed, *sample(daemon.proc.pid)))
                next_sample += every
            wake = min(SECONDS, next_sample, SECONDS if purged else SECONDS / 2)
            stop.wait(max(0.0, wake - elapsed))
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        samples.append((time.monotonic() - started, *sample(daemon.proc.pid)))

        wait_for(lambda: pending(world) == (0, 0), "the queues drained", 300, daemon.log)
        reconcile_once(world, daemon)
        wait_for(
            lambda: datasets(world) == sources(world),
            "every dataset equal to its source after one reconcile",
            120,
            daemon.log,
        )
        metrics = events_total(daemon)
    finally:
        stop.set()
        code = daemon.stop()
        s3_proxy.close()
        queue_proxy.close()
    assert code == 0

    print(f"\nsoak: {SECONDS:.0f}s, seed {SEED}; driver operations: {dict(sorted(counts.items()))}")
    print(
        f"requests through the proxies: S3/SQS {s3_proxy.requests}, Azure queue {queue_proxy.requests}"
    )
    print("daemon events (syncd_events_total):")
    for labels, value in sorted(metrics.items()):
        print(f"    {labels} {value:.0f}")
    print("samples (seconds, VmRSS MiB, open fds):")
    for at, rss, fds in samples:
        print(f"    {at:7.1f}s {rss / 1024:8.1f} MiB {fds:5d}")
    ops = sum(v for k, v in counts.items() if k != "faults armed")
    assert ops >= SECONDS  # continuous change: at least one operation a second
    first, last = samples[0], samples[-1]
    assert last[1] <= first[1] * 1.5 + 20 * 1024, samples
    assert last[2] <= first[2] + 10, samples
