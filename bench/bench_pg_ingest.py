"""PostgreSQL ingest against sqlite, run by hand: issue 27's row "1M synthetic, first sync,
PostgreSQL vs sqlite same run", with the idle re-sync and the 1% churn beside it.

    python bench/bench_pg_ingest.py --objects 1000000 --repeat 3
    python bench/bench_pg_ingest.py --objects 1000000 --repeat 3 --base f0d106b
    python bench/bench_pg_ingest.py --objects 1000000 --repeat 3 --durable

Each round, for each checkout (this one, and with ``--base`` that commit in a temporary git
worktree) and each store (sqlite file, a database on a throwaway PostgreSQL server started
from tests/pg.py), in turns whose order alternates per round: a first sync of
``bench://N`` into a fresh catalog, a re-sync with no change, and a re-sync after a round of
churn (1% changed, deleted, added: ``SYNCD_BENCH_ROUND``). Every step is a fresh
``python -m syncd.cli sync`` process (default ranges, as ``bench_scale.py synthetic``), its
bytecode compiled first as an installed syncd has it.

Prints per checkout, store and step the median wall time with the range over the rounds,
the client's CPU (user + system, from ``wait4``) and, for PostgreSQL, the server's CPU over
the step (every postgres process of the throwaway server, backends included, read from
``/proc``); then the first sync's rows/s and the PostgreSQL / sqlite ratio of the medians, and
the load average at the start, after each round and at the end.

The server's settings are printed. By default they are the tests' (tests/pg.py
``SETTINGS``: ``fsync``, ``synchronous_commit`` and ``full_page_writes`` off,
``shared_buffers`` 32MB); ``--durable`` starts it with PostgreSQL's defaults for those four
(on, on, on, 128MB), as a real server runs. syncd itself never changes them (sqlite runs
WAL with ``synchronous = NORMAL``: a commit does not wait for the disk).
"""

from __future__ import annotations

import argparse
import compileall
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STEPS = (("first sync", {}), ("no change", {}), ("1% churn", {"SYNCD_BENCH_ROUND": "1"}))
DURABLE = {
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "shared_buffers": "128MB",
}
TICK = os.sysconf("SC_CLK_TCK")


def server_cpu(pids: list[int]) -> float:
    """CPU seconds used so far by the postmaster ``pids[0]``, its reaped children (backends
    that ended: ``cutime``/``cstime``) and its live children."""
    total = 0.0
    try:
        children = Path(f"/proc/{pids[0]}/task/{pids[0]}/children").read_text().split()
    except OSError:
        children = []
    for n, pid in enumerate([pids[0], *map(int, children)]):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended in between: counted in the postmaster's cutime from now on
        utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
        total += utime + stime + (cutime + cstime if n == 0 else 0)
    return total / TICK


def run(tree: Path, args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """``syncd ARGS`` with ``tree``'s code: (wall seconds, CPU seconds) of that process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "syncd.cli", *args],
        env={**os.environ, "PYTHONPATH": str(tree), **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=tree,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(args[:4])}... failed: {proc.stderr.read().decode()[-2000:]}")
    proc.stderr.close()
    return wall, usage.ru_utime + usage.ru_stime


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    """``median (min..max)``."""
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}..{fmt.format(max(values))})"


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--base", help="also run this commit (a temporary worktree)")
    parser.add_argument(
        "--durable", action="store_true", help="the server with PostgreSQL's default durability"
    )
    parser.add_argument("--stores", nargs="+", default=["sqlite", "postgresql"])
    parser.add_argument(
        "--vacuum",
        action="store_true",
        help="VACUUM (ANALYZE) the PostgreSQL catalog before each re-sync, so autovacuum's"
        " work after a large write is charged to no step (each step measured settled)",
    )
    opts = parser.parse_args()
    from tests import pg

    if opts.durable:
        pg.SETTINGS.update(DURABLE)
    settings = {k: pg.SETTINGS[k] for k in DURABLE}
    server = pg.start_server() if "postgresql" in opts.stores else None
    postmaster = [server.pid] if server is not None else []
    source = f"bench://{opts.objects}"
    # (tree, store, step) -> [(wall, client cpu, server cpu)]
    figures: dict[tuple[str, str, str], list[tuple[float, float, float]]] = {}
    loads = [load()]
    n = 0
    with tempfile.TemporaryDirectory(prefix="bench-pg-") as tmp_name:
        tmp = Path(tmp_name)
        trees = {"head": ROOT}
        if opts.base:
            base = tmp / "base"
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(base), opts.base],
                check=True,
            )
            trees = {f"base {opts.base}": base, "head": ROOT}
        try:
            for tree in trees.values():
                for package in ("syncd", "providers"):
                    compileall.compile_dir(tree / package, quiet=1)
            turns = [(t, s) for t in trees for s in opts.stores]
            for r in range(opts.repeat):
                for label, store in turns if r % 2 == 0 else turns[::-1]:
                    n += 1
                    if store == "sqlite":
                        db = str(tmp / f"c{n}.db")
                    else:
                        assert server is not None
                        db = server.create_database(f"bench_{n}")
                    for i, (step, env) in enumerate(STEPS):
                        if opts.vacuum and store != "sqlite" and i > 0:
                            import psycopg

                            with psycopg.connect(db, autocommit=True) as conn:
                                conn.execute("VACUUM (ANALYZE)")
                        cpu0 = server_cpu(postmaster) if store != "sqlite" else 0.0
                        wall, cpu = run(
                            trees[label], ["sync", source, "--dataset", "b", "--db", db], env
                        )
                        srv = server_cpu(postmaster) - cpu0 if store != "sqlite" else 0.0
                        figures.setdefault((label, store, step), []).append((wall, cpu, srv))
                    if store == "sqlite":
                        for p in tmp.glob(f"c{n}.db*"):
                            p.unlink()
                    else:
                        assert server is not None
                        server.drop_database(f"bench_{n}")
                loads.append(load())
        finally:
            if opts.base:
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tmp / "base")]
                )
            if server is not None:
                server.stop()
    print(
        f"{opts.objects:,} objects, medians (min..max) of {opts.repeat} rounds, fresh processes,"
        f" interleaved; {os.cpu_count()} cores"
    )
    print(f"  load average (1/5/15 min) at the start, after each round: {' | '.join(loads)}")
    print(f"  PostgreSQL server settings: {settings}" + (" (--durable)" if opts.durable else ""))
    for label in trees:
        print(f"{label}:")
        for store in opts.stores:
            for step, _ in STEPS:
                got = figures[(label, store, step)]
                line = (
                    f"  {store:<10} {step:<10} {spread([g[0] for g in got])} s"
                    f"   client CPU {spread([g[1] for g in got])} s"
                )
                if store != "sqlite":
                    line += f"   server CPU {spread([g[2] for g in got])} s"
                if step == "first sync":
                    line += f"   {opts.objects / statistics.median(g[0] for g in got):,.0f} rows/s"
                print(line)
        if len(opts.stores) == 2:
            for step, _ in STEPS:
                pg_med = statistics.median(g[0] for g in figures[(label, "postgresql", step)])
                lite = statistics.median(g[0] for g in figures[(label, "sqlite", step)])
                print(f"  PostgreSQL / sqlite, {step}: {pg_med / lite:.2f}x")


if __name__ == "__main__":
    main()
