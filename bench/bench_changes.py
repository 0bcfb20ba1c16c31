"""What the change log costs, run by hand: this checkout against an older one in the same run.

    python bench/bench_changes.py --objects 1000000 --base 055b6dc
    python bench/bench_changes.py --objects 1000000 --base 055b6dc --store postgresql

For each checkout (the ``--base`` commit, checked out into a temporary git worktree, and this
one), interleaved, ``--repeat`` times, each in a fresh process on a fresh catalog: a first
sync of ``bench://N`` (every object a create: one change record each), a re-sync with no
change, and a re-sync after a round of churn (1% changed, deleted, added: ``SYNCD_BENCH_ROUND``).
Then, on this checkout only, the feed's read rate: ``syncd changes --after 0 --json`` over the
first sync's N records into /dev/null. Prints medians with the range over the rounds
(min..max), the ratio of the medians to the base, the child's peak RSS, and the load average
when the run started and ended. ``--store postgresql`` uses the tests' throwaway server
(tests/pg.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def run(tree: Path, args: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """``syncd ARGS`` with ``tree``'s code; (wall seconds, peak RSS MiB) of that process."""
    cmd = [sys.executable, "-m", "syncd.cli", *args]
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        env={**os.environ, "PYTHONPATH": str(tree), **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=tree,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(args[:4])}... failed: {proc.stderr.read().decode()[-2000:]}")
    proc.stderr.close()
    return wall, usage.ru_maxrss / 1024


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    """``median (min..max)`` of ``values``, each formatted with ``fmt``."""
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"{fmt.format(mid)} ({fmt.format(low)}..{fmt.format(high)})"


def worktree(base: str, where: Path) -> Path:
    path = where / "base"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(path), base], check=True
    )
    return path


def catalog_url(store: str, tmp: Path, n: int, pg: object | None) -> str:
    if store == "sqlite":
        return str(tmp / f"c{n}.db")
    assert pg is not None
    return pg.create_database(f"bench_{n}")  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=1_000_000)
    parser.add_argument("--base", default="055b6dc", help="the commit to compare with")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--store", choices=["sqlite", "postgresql"], default="sqlite")
    opts = parser.parse_args()
    pg = None
    if opts.store == "postgresql":
        from tests import pg as throwaway

        pg = throwaway.start_server()
    source = f"bench://{opts.objects}"
    times: dict[tuple[str, str], list[float]] = {}
    rss: dict[tuple[str, str], float] = {}
    read_rate: list[float] = []
    n = 0
    load_start = Path("/proc/loadavg").read_text().strip()
    with tempfile.TemporaryDirectory(prefix="bench-changes-") as tmp_name:
        tmp = Path(tmp_name)
        base = worktree(opts.base, tmp)
        trees = {"base": base, "head": ROOT}
        try:
            for _ in range(opts.repeat):
                for label, tree in trees.items():
                    n += 1
                    db = catalog_url(opts.store, tmp, n, pg)
                    steps = [
                        ("first sync", [], {}),
                        ("no change", [], {}),
                        ("1% churn", [], {"SYNCD_BENCH_ROUND": "1"}),
                    ]
                    for step, extra, env in steps:
                        args = ["sync", source, "--dataset", "b", "--db", db, "--ranges", "1"]
                        wall, peak = run(tree, args + extra, env)
                        times.setdefault((label, step), []).append(wall)
                        rss[(label, step)] = max(rss.get((label, step), 0.0), peak)
                    if label == "head":
                        t0 = time.perf_counter()
                        with open(os.devnull, "w") as sink:
                            subprocess.run(
                                [sys.executable, "-m", "syncd.cli", "changes", "--after", "0",
                                 "--json", "--db", db],
                                stdout=sink, check=True, cwd=ROOT,
                            )  # fmt: skip
                        read_rate.append(opts.objects / (time.perf_counter() - t0))
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)])
            if pg is not None:
                pg.stop()  # type: ignore[attr-defined]
    load_end = Path("/proc/loadavg").read_text().strip()
    print(f"{opts.objects:,} objects, {opts.store}, medians (min..max) of {opts.repeat} rounds")
    print(f"  load average at the start: {load_start}; at the end: {load_end}")
    for step in ("first sync", "no change", "1% churn"):
        b, h = times[("base", step)], times[("head", step)]
        ratio = statistics.median(h) / statistics.median(b)
        print(
            f"  {step:<11} base {opts.base}: {spread(b)} s   head: {spread(h)} s"
            f"   ratio {ratio:4.2f}x   (RSS head {rss[('head', step)]:.0f} MiB)"
        )
    print(
        "  feed read (syncd changes --after 0 --json > /dev/null):"
        f" {spread(read_rate, '{:,.0f}')} changes/s"
    )


if __name__ == "__main__":
    main()
