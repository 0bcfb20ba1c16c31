"""One-shot start-up, run by hand: how long ``syncd sync SOURCE`` takes from the process's
start to its first listing call, in fresh processes, medians of ``--repeat``.

    python bench/bench_startup.py                      # a local folder
    python bench/bench_startup.py --s3                 # and an S3 bucket on moto server

The child is ``python -c WRAPPER sync SOURCE ...``: the wrapper imports the source's driver
module (which the sync imports before it lists anyway), wraps its ``list`` so the first call
writes the wall-clock time (and which heavy modules are loaded by then) to a file, and runs
``syncd.cli`` as ``python -m syncd.cli`` does. The figure is that time minus the time taken
just before the process was started; ``python -c pass`` is measured interleaved, as the
floor no Python program starts below. One more run with ``-X importtime`` prints the
slowest imports. The machine's load average is printed at the start and at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bytecode import compile_checkout  # noqa: E402

#: modules a sync of a local folder must not import (each costs tens of milliseconds; the
#: bare ``google`` and ``google.cloud`` namespaces come from a .pth file of another package)
HEAVY = (
    "botocore",
    "boto3",
    "pydantic",
    "aiohttp",
    "psycopg",
    "grpc",
    "google.cloud.storage",
    "google.auth",
    "google.protobuf",
    "azure",
    "importlib.metadata",
)

WRAPPER = """
import os, sys, time, runpy, importlib
mod, _, cls = os.environ["BENCH_DRIVER"].partition(":")
driver = getattr(importlib.import_module(mod), cls)
original = driver.list
def list(self, *args, **kwargs):
    if not os.path.exists(os.environ["BENCH_MARK"]):
        wanted = os.environ["BENCH_HEAVY"].split()
        heavy = sorted({h for h in wanted for m in sys.modules if m == h or m.startswith(h + ".")})
        with open(os.environ["BENCH_MARK"], "w") as out:
            out.write(repr(time.time()) + " " + ",".join(heavy))
    return original(self, *args, **kwargs)
driver.list = list
sys.argv[0] = "syncd"
runpy.run_module("syncd.cli", run_name="__main__", alter_sys=True)
"""


def first_list(cmd: list[str], driver: str, mark: Path, env: dict[str, str]) -> tuple[float, str]:
    """Seconds from just before starting ``syncd <cmd>`` to its first ``list`` call, and the
    heavy modules loaded by then."""
    mark.unlink(missing_ok=True)
    full_env = {
        **os.environ,
        **env,
        "BENCH_DRIVER": driver,
        "BENCH_MARK": str(mark),
        "BENCH_HEAVY": " ".join(HEAVY),
    }
    t0 = time.time()
    subprocess.run(
        [sys.executable, "-c", WRAPPER, *cmd],
        env=full_env,
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    at, _, heavy = mark.read_text().partition(" ")
    return float(at) - t0, heavy


def bare() -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - t0


def importtime(cmd: list[str], env: dict[str, str], top: int = 8) -> None:
    """Run ``cmd`` once with ``-X importtime``; print the total and the slowest top-level
    imports (cumulative microseconds)."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "syncd.cli", *cmd],
        env={**os.environ, **env},
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    ).stderr
    rows = []
    for line in out.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, self_us, cum_us, name = (p.strip() for p in line.replace(":", "|", 1).split("|"))
        if not self_us.isdigit():
            continue
        depth = len(line.rsplit("|", 1)[1]) - len(line.rsplit("|", 1)[1].lstrip())
        rows.append((int(self_us), int(cum_us), name, depth))
    outer = min(r[3] for r in rows)
    tops = [r for r in rows if r[3] == outer]
    total = sum(r[1] for r in tops)
    print(f"    -X importtime: {len(rows)} modules, {total / 1e3:.1f} ms in all; slowest:")
    for _, cum, name, _ in sorted(tops, key=lambda r: -r[1])[:top]:
        print(f"      {cum / 1e3:6.1f} ms  {name}")


def scenario(
    label: str, cmd: list[str], driver: str, env: dict[str, str], args, work: Path, fresh
) -> None:
    times, floors, heavy = [], [], set()
    for _ in range(args.repeat):
        fresh()
        floors.append(bare())
        t, h = first_list(cmd, driver, work / "mark", env)
        times.append(t)
        heavy.update(filter(None, h.split(",")))
    t, f = statistics.median(times), statistics.median(floors)
    print(
        f"  {label:<36} {t * 1e3:7.1f} ms to the first listing call "
        f"({min(times) * 1e3:.1f}-{max(times) * 1e3:.1f}); python -c pass {f * 1e3:.1f} ms"
    )
    print(f"    heavy modules loaded by then: {', '.join(sorted(heavy)) or 'none'}")
    fresh()
    importtime(cmd, env)


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--s3", action="store_true", help="also an S3 bucket on moto server")
    args = parser.parse_args()
    compile_checkout()  # as an installed syncd has (bench/bytecode.py)
    work = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    db = work / "bench.db"
    print(f"start-up, medians of {args.repeat} fresh processes; {load()}")

    def fresh() -> None:
        for p in work.glob("bench.db*"):
            p.unlink()

    try:
        folder = work / "folder"
        folder.mkdir()
        for i in range(100):
            (folder / f"f{i:03d}.bin").write_bytes(b"x")
        cmd = ["sync", str(folder), "--dataset", "bench", "--db", str(db)]
        scenario(
            "syncd sync DIR (new catalog)",
            cmd,
            "providers.local:LocalDriver",
            {},
            args,
            work,
            fresh,
        )
        fresh()
        subprocess.run([*(sys.executable, "-m", "syncd.cli"), *cmd], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        scenario(
            "syncd sync DIR (catalog has it)",
            cmd,
            "providers.local:LocalDriver",
            {},
            args,
            work,
            lambda: None,
        )
        if args.s3:
            s3(args, work, fresh)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"  {load()}")


def s3(args, work: Path, fresh) -> None:
    import boto3

    from tests.emulators import start_moto

    emu = start_moto(work)
    env = {
        "AWS_ENDPOINT_URL": emu.url,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    os.environ.update(env)
    try:
        client = boto3.client("s3")
        client.create_bucket(Bucket="bench")
        for i in range(100):
            client.put_object(Bucket="bench", Key=f"f{i:03d}.bin", Body=b"x")
        cmd = ["sync", "s3://bench", "--dataset", "bench", "--db", str(work / "bench.db")]
        scenario(
            "syncd sync s3://BUCKET (moto)", cmd, "providers.s3:S3Driver", env, args, work, fresh
        )
    finally:
        emu.stop()


if __name__ == "__main__":
    main()
