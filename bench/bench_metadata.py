"""What ``metadata = "head"`` costs, run by hand: a first sync of an S3 bucket on moto in
``listing`` mode against the same in ``head`` mode (and ``head`` with ``--tags``), same run.

    python bench/bench_metadata.py --objects 10000 --repeat 3

One moto server holds ``--objects`` objects, each with two ``x-amz-meta-*`` entries and one
tag. Each round, interleaved, a fresh catalog per command: ``syncd sync s3://bench`` with
``--metadata listing``, ``--metadata head`` and ``--metadata head --tags``; then a re-sync of the
head-mode catalog after 1% of the objects were overwritten (what a re-sync HEADs). Prints
medians, the extra seconds per 10,000 objects over ``listing``, and the HEADs each did.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def sync(db: Path, env: dict[str, str], *extra: str) -> tuple[float, dict[str, int]]:
    """``syncd sync s3://bench`` into ``db``: (wall seconds, the JSON summary)."""
    cmd = [sys.executable, "-m", "syncd.cli", "sync", "s3://bench", "--dataset", "b"]
    cmd += ["--db", str(db), "--json", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd, env={**os.environ, **env}, capture_output=True, text=True, cwd=ROOT, check=False
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(extra)} failed: {proc.stderr[-2000:]}")
    return wall, json.loads(proc.stdout.strip().splitlines()[-1])["summary"]


def fill(objects: int, churn: int = 0) -> None:
    """Put the objects (or, with ``churn``, overwrite every 100th with new bytes)."""
    import boto3
    from botocore.config import Config

    client = boto3.client("s3", config=Config(max_pool_connections=32))
    keys = [f"d{i // 1000:04d}/obj-{i:08d}.jpg" for i in range(0, objects, 100 if churn else 1)]

    def put(key: str) -> None:
        client.put_object(
            Bucket="bench",
            Key=key,
            Body=f"{key}-{churn}".encode(),
            ContentType="image/jpeg",
            Metadata={"site": "berlin", "camera": key[-8:]},
            Tagging="team=cv",
        )

    async def all_of() -> None:
        gate = asyncio.Semaphore(32)

        async def one(key: str) -> None:
            async with gate:
                await asyncio.to_thread(put, key)

        await asyncio.gather(*map(one, keys))

    asyncio.run(all_of())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    opts = parser.parse_args()
    from tests.emulators import start_moto

    modes = {
        "listing": ["--metadata", "listing"],
        "head": ["--metadata", "head"],
        "head + tags": ["--metadata", "head", "--tags"],
    }
    times: dict[str, list[float]] = {m: [] for m in [*modes, "head re-sync, 1% changed"]}
    heads: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="bench-metadata-") as tmp_name:
        work = Path(tmp_name)
        emu = start_moto(work)
        env = {
            "AWS_ENDPOINT_URL": emu.url,
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        os.environ.update(env)
        try:
            import boto3

            boto3.client("s3").create_bucket(Bucket="bench")
            fill(opts.objects)
            for r in range(opts.repeat):
                for mode, extra in modes.items():
                    db = work / f"{mode.replace(' ', '')}-{r}.db"
                    wall, summary = sync(db, env, *extra)
                    times[mode].append(wall)
                    heads[mode] = summary.get("heads", 0)
                fill(opts.objects, churn=r + 1)
                label = "head re-sync, 1% changed"
                wall, summary = sync(work / f"head-{r}.db", env, "--metadata", "head")
                times[label].append(wall)
                heads[label] = summary["heads"]
        finally:
            emu.stop()
    load = os.getloadavg()[0]
    print(f"moto server, {opts.objects:,} objects, medians of {opts.repeat}, load {load:.2f}")
    base = statistics.median(times["listing"])
    for mode, samples in times.items():
        wall = statistics.median(samples)
        per10k = (wall - base) * 10_000 / opts.objects
        extra = (
            ""
            if mode not in modes or mode == "listing"
            else f"   +{per10k:5.2f} s per 10k vs listing"
        )
        print(f"  {mode:<26} {wall:7.2f} s   HEADs {heads[mode]:>7,}{extra}")


if __name__ == "__main__":
    main()
