"""How long the tests' throwaway PostgreSQL takes: start (initdb to the first answered query),
``CREATE DATABASE`` (what ``postgres_url`` costs each test) and stop, for every binary source
on this machine, interleaved so that a loaded machine slows them alike.

    python bench/bench_pg_fixture.py --rounds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import pg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="servers started per source")
    parser.add_argument("--databases", type=int, default=3, help="databases created per server")
    args = parser.parse_args()
    sources = pg.binary_sources()
    if not sources:
        sys.exit("no PostgreSQL binaries found: pip install -e '.[test]' (pgserver)")
    figures: dict[str, dict[str, list[float]]] = {
        str(s.bindir): {"start": [], "create": [], "stop": []} for s in sources
    }
    for _ in range(args.rounds):
        for source in sources:
            fig = figures[str(source.bindir)]
            server = pg.start_with(source)
            fig["start"].append(server.started_in)
            for i in range(args.databases):
                began = time.monotonic()
                server.create_database(f"bench_{i}")
                fig["create"].append(time.monotonic() - began)
            began = time.monotonic()
            server.stop()
            fig["stop"].append(time.monotonic() - began)
    print(f"load average {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} cores")
    for source in sources:
        fig = figures[str(source.bindir)]
        print(
            f"{source.origin:20} {source.bindir}\n"
            f"  start  median {statistics.median(fig['start']):.2f} s"
            f" (min {min(fig['start']):.2f}, max {max(fig['start']):.2f}, n={len(fig['start'])})\n"
            f"  CREATE DATABASE median {1000 * statistics.median(fig['create']):.0f} ms"
            f" (n={len(fig['create'])})\n"
            f"  stop   median {statistics.median(fig['stop']):.2f} s"
        )


if __name__ == "__main__":
    main()
