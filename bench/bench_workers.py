"""Several ``syncd run`` workers on one catalog, run by hand: prints figures, asserts nothing.

    python bench/bench_workers.py                         # 20 datasets, 1 worker vs 3, sqlite
    python bench/bench_workers.py --workers 1 3 --rounds 2 --store postgresql

``--datasets`` datasets of ``--objects`` objects each in one moto S3 bucket (one prefix each),
listed through a loopback proxy that holds every listing answer back ``--latency`` (80 ms:
a distant region), in ``--page``-key pages. For each worker count, a fresh catalog and that
many ``syncd run`` processes started together; the figure is the reconcile wall time read
from the catalog: from the first run's start to the last run's end (process start-up left
out), and how the runs spread over the workers. Counts alternate (1, 3, 1, 3, ...) over
``--rounds`` so load on the machine falls on both alike.

``--store postgresql`` starts a throwaway PostgreSQL as the tests do (tests/pg.py).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import boto3  # noqa: E402

from syncd.store.catalog import Catalog  # noqa: E402
from tests.emulators import start_moto  # noqa: E402
from tests.proxy import FaultProxy  # noqa: E402


def config(endpoint: str, bucket: str, datasets: int, page: int) -> str:
    body = "[daemon]\ninterval = 3600\n"
    for i in range(datasets):
        body += (
            f'\n[drivers.d{i:02d}]\ntype = "s3"\nbucket = "{bucket}"\npath = "d{i:02d}/"\n'
            f'endpoint = "{endpoint}"\npage_size = {page}\n'
            f'\n[datasets.d{i:02d}]\ndriver = "d{i:02d}"\n'
        )
    return body


def seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def measure(db: str, cfg: Path, env: dict[str, str], workers: int, datasets: int) -> dict:
    logs = [cfg.parent / f"worker-{time.time_ns()}-{i}.log" for i in range(workers)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "syncd.cli", "run", "--config", str(cfg), "--db", db],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log.open("w"),
        )
        for log in logs
    ]
    try:
        deadline = time.monotonic() + 1800
        rows: list = []
        while time.monotonic() < deadline:
            time.sleep(0.5)
            try:
                catalog = Catalog.open_reader(db)
            except Exception:  # not created yet
                continue
            try:
                rows = catalog.db.execute(
                    "SELECT started_at, ended_at, owner FROM runs WHERE status = 'completed'"
                ).fetchall()
            except Exception:  # migrations still running
                rows = []
            finally:
                catalog.close()
            if len(rows) >= datasets:
                break
        start = min(seconds(r[0]) for r in rows)
        end = max(seconds(r[1]) for r in rows)
        spread = Counter(r[2].rsplit("/", 1)[0] for r in rows)
        return {"wall": end - start, "runs": len(rows), "per_worker": sorted(spread.values())}
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=120)
        for log in logs:  # what went wrong, if anything did
            for line in log.read_text().splitlines():
                if "ERROR" in line or "error:" in line or "Traceback" in line:
                    print(f"    {log.name}: {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", type=int, default=20)
    parser.add_argument("--objects", type=int, default=200)
    parser.add_argument("--page", type=int, default=10)
    parser.add_argument("--latency", type=float, default=0.08, help="seconds per listing page")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--store", choices=["sqlite", "postgresql"], default="sqlite")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    moto = start_moto(work)
    server = None
    try:
        s3 = boto3.client(
            "s3",
            endpoint_url=moto.url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        bucket = "bench-workers"
        s3.create_bucket(Bucket=bucket)
        keys = [f"d{i:02d}/{j:05d}" for i in range(args.datasets) for j in range(args.objects)]
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda k: s3.put_object(Bucket=bucket, Key=k, Body=b"x"), keys))
        proxy = FaultProxy(moto.url)
        proxy.inject(1.0, ("slow",), delay=args.latency, only="list-type=2")
        cfg = work / "syncd.toml"
        cfg.write_text(config(proxy.url, bucket, args.datasets, args.page))
        env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        if args.store == "postgresql":
            from tests import pg

            server = pg.start_server()
        pages = args.objects // args.page + 1
        print(
            f"{args.datasets} datasets x {args.objects:,} objects, {pages} pages each at "
            f"{args.latency * 1000:.0f} ms, {args.store} catalog; load {os.getloadavg()[0]:.2f}"
        )
        results: dict[int, list[float]] = {n: [] for n in args.workers}
        for r in range(args.rounds):
            for n in args.workers:
                if server is not None:
                    db = server.create_database(f"bench_{r}_{n}_{len(results[n])}")
                else:
                    db = str(work / f"c-{r}-{n}.db")
                got = measure(db, cfg, env, n, args.datasets)
                results[n].append(got["wall"])
                print(
                    f"  {n} worker(s): {got['wall']:6.2f} s reconcile wall time, runs per "
                    f"worker {got['per_worker']}  (load {os.getloadavg()[0]:.2f})"
                )
        base = min(results[args.workers[0]])
        for n in args.workers[1:]:
            print(f"best of {args.rounds}: {args.workers[0]} vs {n} workers: "
                  f"{base / min(results[n]):.2f}x")  # fmt: skip
        proxy.close()
    finally:
        if server is not None:
            server.stop()
        moto.stop()


if __name__ == "__main__":
    main()
