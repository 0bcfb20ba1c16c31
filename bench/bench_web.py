"""What the dashboard costs, run by hand (issue 26's targets): prints figures, asserts nothing.

    python bench/bench_web.py overview [--datasets 200 --items 10000000 --repeat 20]
    python bench/bench_web.py sync [--objects 1000000 --trials 2]

``overview``: a sqlite catalog of ``--datasets`` datasets holding ``--items`` items in all
(written straight with SQL: the rows a sync writes) and one completed run each, served by
``syncd serve``; ``GET /`` (the overview) is asked for once cold (the first view counts every
dataset's items, :class:`syncd.web.data.Totals`) and then ``--repeat`` times; the figures are
the server's own durations from its access log (``GET / 200 12.3ms``), and the client's.
Target: <= 300 ms server-side.

``sync``: a first sync of ``bench://N`` (providers.synthetic: generated objects) by ``syncd
sync`` into a catalog that ``syncd serve`` serves (neither a config nor the API may name a
bench source), the run's ``seconds``, in trials alternating between nobody looking and the
dataset page open in the distribution's Chromium (headless: its live change stream, its runs
table refreshing every second or five, the overview in a second tab polling every 3 s).
Target: the open page adds nothing noticeable.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.emulators import free_port  # noqa: E402

TOKEN = "bench-token-0123456789abcdef"


def call(port: int, path: str, *, method: str = "GET", body: Any = None) -> tuple[int, str]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, data=data)
    request.add_header("Authorization", f"Bearer {TOKEN}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=600) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        raise SystemExit(f"{method} {path}: {exc.code} {exc.read().decode()}") from None


def start(
    args: list[str], env: dict[str, str], ready: str
) -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "syncd.cli", *args],
        env={**os.environ, "SYNCD_API_TOKEN": TOKEN, **env},
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stderr is not None
    log: list[str] = []
    for line in proc.stderr:
        log.append(line)
        if ready in line:
            break
    else:
        raise SystemExit("the server did not start:\n" + "".join(log))

    def drain() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            log.append(line)

    threading.Thread(target=drain, daemon=True).start()
    return proc, log


def build(db: str, datasets: int, items: int) -> None:
    from providers.config import DriverConfig
    from syncd.reconcile.filters import Filters
    from syncd.store.catalog import Catalog
    from syncd.store.db import transaction

    catalog = Catalog.open(db)
    per = items // datasets
    stamp = "2026-06-01T00:00:00.000000Z"
    t0 = time.perf_counter()
    for n in range(datasets):
        name = f"ds-{n:03d}"
        ds = catalog.create_dataset(
            name, f"s3://bucket-{n}/", DriverConfig(type="s3", bucket=f"bucket-{n}"), Filters()
        )
        with transaction(catalog.db):
            catalog.db.execute(
                "WITH RECURSIVE i(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM i WHERE n + 1 < ?)"
                " INSERT INTO items (dataset_id, key, filename, uri, size, etag, content_type,"
                " mtime, version, created_at, updated_at, metadata)"
                " SELECT ?, printf('d%05d/obj-%09d.jpg', n / 1000, n),"
                " printf('/d%05d/obj-%09d.jpg', n / 1000, n),"
                " printf('s3://b/d%05d/obj-%09d.jpg', n / 1000, n), (n * 7919) % 5000000,"
                " printf('e%d', n), 'image/jpeg', ?, NULL, ?, ?, '{}' FROM i",
                [per, ds.id, stamp, stamp, stamp],
            )
            catalog.db.execute(
                "INSERT INTO runs (dataset_id, fingerprint, status, started_at, ended_at,"
                " listed, created) VALUES (?, 'bench', ?, ?, ?, ?, ?)",
                [
                    ds.id,
                    "failed" if n % 50 == 7 else "completed",
                    "2026-06-01T00:00:00.000000Z",
                    "2026-06-01T00:01:00.000000Z",
                    per,
                    per,
                ],
            )
        if n % 20 == 19:
            print(
                f"  built {n + 1} datasets, {(n + 1) * per:,} items, {time.perf_counter() - t0:.0f} s"
            )
    catalog.db.close()


def overview(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="syncd-bench-web-"))
    db = str(work / "c.db")
    print(f"building {args.datasets} datasets, {args.items:,} items in {db}")
    build(db, args.datasets, args.items)
    port = free_port()
    proc, log = start(["serve", "--db", db, "--port", str(port)], {}, "running on catalog")
    try:
        mark = len(log)
        t0 = time.perf_counter()
        call(port, "/")
        cold_client = (time.perf_counter() - t0) * 1000
        while "counting…" in call(port, "/")[1]:  # the counts are made in the background
            time.sleep(0.5)
        counted = time.perf_counter() - t0
        mark_warm = len(log)
        client = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            status, page = call(port, "/")
            client.append((time.perf_counter() - t0) * 1000)
        assert status == 200 and page.count("data-dataset=") == args.datasets

        def served(lines: list[str]) -> list[float]:
            found = (re.search(r"GET / 200 ([\d.]+)ms", line) for line in lines)
            return [float(m.group(1)) for m in found if m]

        cold, warm = served(log[mark : mark + 1] + log[mark:mark_warm])[:1], served(log[mark_warm:])
        print(f"overview of {args.datasets} datasets, {args.items:,} items:")
        print(f"  every count made in the background after {counted:.1f} s")
        if cold and warm:
            print(f"  cold (first view, nothing counted yet): server {cold[0]:.0f} ms")
            print(
                f"  warm: server median {statistics.median(warm):.1f} ms, slowest "
                f"{max(warm):.1f} ms ({len(warm)} views)"
            )
        else:
            print("  (no access log lines: is the log level INFO?)")
        print(
            f"  client: cold {cold_client:.0f} ms, warm median {statistics.median(client):.1f} ms,"
            f" page {len(page) / 1024:.0f} KiB"
        )
    finally:
        proc.terminate()
        proc.wait(60)
        shutil.rmtree(work, ignore_errors=True)


def one_sync(objects: int, with_page: bool) -> float:
    """One first sync of ``bench://objects`` by ``syncd sync`` into a catalog that ``syncd
    serve`` serves (a daemon cannot declare a bench source), with or without the dataset page
    and the overview open in Chromium; the run's seconds."""
    work = Path(tempfile.mkdtemp(prefix="syncd-bench-web-sync-"))
    db = str(work / "c.db")
    port = free_port()
    from syncd.store.catalog import Catalog

    Catalog.open(db).db.close()  # syncd serve needs the catalog to exist
    proc, _ = start(["serve", "--db", db, "--port", str(port)], {}, "running on catalog")
    pw = browser = None
    try:
        if with_page:
            from playwright.sync_api import sync_playwright

            pw = sync_playwright().start()
            browser = pw.chromium.launch(
                executable_path=shutil.which("chromium"), args=["--no-sandbox"]
            )
            context = browser.new_context()
            tab = context.new_page()
            tab.goto(f"http://127.0.0.1:{port}/login")
            tab.fill("#token", TOKEN)
            tab.click("button[type=submit]")
            tab.wait_for_selector("#live")
            overview_tab = context.new_page()
            overview_tab.goto(f"http://127.0.0.1:{port}/")
        syncing = subprocess.Popen(
            [sys.executable, "-m", "syncd.cli", "sync", f"bench://{objects}", "--dataset", "b",
             "--db", db, "--quiet"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        if with_page:
            while True:  # the page opens as soon as the sync has created the dataset
                tab.goto(f"http://127.0.0.1:{port}/datasets/b")
                if tab.locator("#recent").count():
                    break
                time.sleep(0.2)
        assert syncing.wait() == 0
        runs = json.loads(call(port, "/api/v1/datasets/b/runs")[1])["runs"]
        assert runs and runs[0]["status"] == "completed", runs
        if with_page:
            # the page followed the sync: its live list shows changes
            tab.locator("#recent tbody tr").first.wait_for()
        return float(runs[0]["seconds"])
    finally:
        if browser is not None:
            browser.close()
        if pw is not None:
            pw.stop()
        proc.terminate()
        proc.wait(120)
        shutil.rmtree(work, ignore_errors=True)


def sync(args: argparse.Namespace) -> None:
    times: dict[bool, list[float]] = {False: [], True: []}
    for trial in range(args.trials):
        for with_page in (False, True) if trial % 2 == 0 else (True, False):
            seconds = one_sync(args.objects, with_page)
            times[with_page].append(seconds)
            print(f"  trial {trial + 1}, page {'open' if with_page else 'closed'}: {seconds:.1f} s")
    for with_page, found in times.items():
        print(
            f"first sync of {args.objects:,} objects, page {'open  ' if with_page else 'closed'}:"
            f" median {statistics.median(found):.1f} s ({', '.join(f'{s:.1f}' for s in found)})"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    o = sub.add_parser("overview")
    o.add_argument("--datasets", type=int, default=200)
    o.add_argument("--items", type=int, default=10_000_000)
    o.add_argument("--repeat", type=int, default=20)
    s = sub.add_parser("sync")
    s.add_argument("--objects", type=int, default=1_000_000)
    s.add_argument("--trials", type=int, default=2)
    args = ap.parse_args()
    overview(args) if args.what == "overview" else sync(args)


if __name__ == "__main__":
    main()
