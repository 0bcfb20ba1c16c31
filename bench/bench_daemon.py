"""The daemon's event paths, run by hand: prints figures, asserts nothing.

    python bench/bench_daemon.py                    # all three measurements
    python bench/bench_daemon.py --samples 50 --events 10000

1. **SQS latency**: moto S3 with notifications to moto SQS, ``syncd run`` reading the queue;
   one object put at a time, the time from ``put_object`` returning to the item being visible
   through the API (polled every 10 ms). Median and p95 of ``--samples`` puts.
2. **Folder-watch latency**: the same for a file written in a watched folder.
3. **Events per second**: ``--events`` S3 notifications (10 per SQS message, as S3 batches
   them at most 1 per message; this measures the daemon, not S3) enqueued while the daemon is
   stopped, then the time from its start until every event is applied.

The moto server is the emulator the tests use, started on a free loopback port.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import boto3  # noqa: E402

from tests.emulators import free_port, notify_queue, start_moto  # noqa: E402

TOKEN = "bench-token-0123456789abcdef"


def api(port: int, path: str) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    request.add_header("Authorization", f"Bearer {TOKEN}")
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read())


def has_item(port: int, dataset: str, key: str) -> bool:
    body = api(port, f"/api/v1/datasets/{dataset}/items?prefix={urllib.request.quote(key)}&limit=1")
    return bool(body["items"]) and body["items"][0]["key"] == key


def count(port: int, dataset: str) -> int:
    return int(api(port, f"/api/v1/datasets/{dataset}")["items"])


def wait(condition, timeout: float = 120, step: float = 0.01) -> float:
    t0 = time.perf_counter()
    while not condition():
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError
        time.sleep(step)
    return time.perf_counter()


def start(config: Path, db: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "syncd.cli", "run", "--config", str(config), "--db", str(db)],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if "running on catalog" in line:
            break
    import threading

    threading.Thread(target=proc.stderr.read, daemon=True).start()
    return proc


def quantiles(samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    p95 = ms[max(0, round(0.95 * len(ms)) - 1)]
    return f"median {statistics.median(ms):7.1f} ms   p95 {p95:7.1f} ms   ({len(ms)} samples)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=30)
    ap.add_argument("--events", type=int, default=10_000)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="syncd-bench-daemon-"))
    moto = start_moto(work)
    try:
        env = {
            **os.environ,
            "AWS_ENDPOINT_URL": moto.url,
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
            "SYNCD_API_TOKEN": TOKEN,
        }
        os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
        s3 = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1")
        sqs = boto3.client("sqs", endpoint_url=moto.url, region_name="us-east-1")
        s3.create_bucket(Bucket="bench")
        queue = sqs.create_queue(QueueName="bench-events")["QueueUrl"]
        notify_queue(s3, sqs, "bench", queue)
        folder = work / "folder"
        folder.mkdir()
        port = free_port()
        config = work / "syncd.toml"
        config.write_text(
            f'[drivers.s3]\ntype = "s3"\nbucket = "bench"\nendpoint = "{moto.url}"\n'
            f'[drivers.disk]\ntype = "local"\nbucket = "{folder}"\n'
            '[datasets.s3]\ndriver = "s3"\n[datasets.disk]\ndriver = "disk"\n'
            f'[queues.q]\ntype = "sqs"\nurl = "{queue}"\n'
            f'[server]\nhost = "127.0.0.1"\nport = {port}\n'
        )
        db = work / "c.db"
        daemon = start(config, db, env)
        try:
            sqs_lat, watch_lat = [], []
            for i in range(args.samples):
                key = f"lat/{i:05d}.bin"
                s3.put_object(Bucket="bench", Key=key, Body=b"x" * 100)
                t0 = time.perf_counter()
                sqs_lat.append(wait(lambda k=key: has_item(port, "s3", k)) - t0)
                path = folder / f"{i:05d}.txt"
                path.write_text("x" * 100)
                t0 = time.perf_counter()
                watch_lat.append(wait(lambda k=path.name: has_item(port, "disk", k)) - t0)
            print(f"event-to-item latency, S3 -> SQS -> syncd run:  {quantiles(sqs_lat)}")
            print(f"event-to-item latency, folder watch:           {quantiles(watch_lat)}")
        finally:
            daemon.terminate()
            daemon.wait(60)

        # events per second: enqueue while stopped, then time the drain
        s3.put_bucket_notification_configuration(Bucket="bench", NotificationConfiguration={})
        sqs.purge_queue(QueueUrl=queue)
        before = args.samples
        for start_at in range(0, args.events, 100):
            entries = []
            for m in range(10):
                records = [
                    {
                        "eventSource": "aws:s3",
                        "eventName": "ObjectCreated:Put",
                        "eventTime": "2026-11-24T00:00:00.000Z",
                        "s3": {
                            "bucket": {"name": "bench"},
                            "object": {"key": f"ev/{n:07d}", "size": 1, "eTag": f"e{n}"},
                        },
                    }
                    for n in range(start_at + 10 * m, min(start_at + 10 * m + 10, args.events))
                ]
                if records:
                    entries.append({"Id": str(m), "MessageBody": json.dumps({"Records": records})})
            if entries:
                sqs.send_message_batch(QueueUrl=queue, Entries=entries)
        daemon = start(config, db, env)
        t0 = time.perf_counter()
        try:
            done = wait(lambda: count(port, "s3") >= before + args.events, timeout=900, step=0.05)
        finally:
            daemon.terminate()
            daemon.wait(60)
        seconds = done - t0
        print(
            f"events applied through the daemon (SQS, 10 per message): {args.events:,} in "
            f"{seconds:.2f}s = {args.events / seconds:,.0f} events/s"
        )
    finally:
        moto.stop()


if __name__ == "__main__":
    main()
