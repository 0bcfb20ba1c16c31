"""Several ``syncd run`` workers sharing one PostgreSQL catalog: wall time of a first round.

    python bench/bench_workers.py --datasets 20 --objects 20000 --latency 80ms --workers 1 3

For each worker count: a fresh database on a throwaway PostgreSQL server (tests/pg.py: the
machine's binaries, else PyPI's pgserver), a config of ``--datasets`` synthetic datasets
(``type = "bench"``: ``--objects`` generated objects each, ``--latency`` per 1,000-key page,
standing in for a remote bucket), the workers started together, and the time until every
dataset has a completed run (read from the catalog every 0.2 s). Prints wall time, objects per
second and the ratio to one worker. Each worker runs at most 4 reconciles at once (the
scheduler's limit), so one worker's floor is ``datasets / 4`` listings back to back.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import pg  # noqa: E402


def config(path: Path, datasets: int, objects: int, latency: str) -> None:
    lines = ["[daemon]", "interval = 86400", "lease_ttl = 10", ""]
    for i in range(datasets):
        lines += [
            f"[drivers.b{i:02d}]",
            'type = "bench"',
            f'bucket = "{objects}?latency={latency}"',
            f'path = "ds{i:02d}"',
            "",
            f"[datasets.ds{i:02d}]",
            f'driver = "b{i:02d}"',
            "",
        ]
    path.write_text("\n".join(lines))


def completed(url: str, datasets: int) -> int:
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(DISTINCT dataset_id) FROM runs WHERE status = 'completed'"
        ).fetchone()
    return int(row[0]) if row else 0


def round_of(server: pg.PostgresServer, cfg: Path, workers: int, datasets: int) -> float:
    server.drop_database("bench")
    url = server.create_database("bench")
    env = {**os.environ, "SYNCD_DB": url}
    subprocess.run([sys.executable, "-m", "syncd.cli", "db", "migrate"], env=env, check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "syncd.cli", "run", "--config", str(cfg)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=cfg.parent,
        )
        for _ in range(workers)
    ]
    try:
        while completed(url, datasets) < datasets:
            if any(p.poll() is not None for p in procs):
                raise SystemExit("a worker exited early: run one by hand to see why")
            time.sleep(0.2)
        return time.perf_counter() - t0
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=int, default=20)
    parser.add_argument("--objects", type=int, default=20_000)
    parser.add_argument("--latency", default="80ms")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    cfg = work / "syncd.toml"
    config(cfg, args.datasets, args.objects, args.latency)
    server = pg.start_server()
    server.create_database("bench")
    total = args.datasets * args.objects
    print(
        f"{args.datasets} datasets x {args.objects:,} synthetic objects, {args.latency} a page, "
        f"one PostgreSQL catalog, medians of {args.repeat}"
    )
    try:
        base = None
        for n in args.workers:
            walls = [round_of(server, cfg, n, args.datasets) for _ in range(args.repeat)]
            wall = statistics.median(walls)
            base = base or wall
            print(
                f"  {n} worker(s): {wall:7.2f} s  {total / wall:>10,.0f} obj/s  "
                f"{base / wall:4.2f}x one worker  (runs: {', '.join(f'{w:.2f}' for w in walls)})"
            )
    finally:
        server.stop()


if __name__ == "__main__":
    main()
