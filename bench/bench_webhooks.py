"""Webhook delivery, run by hand: throughput of a backlog and latency of single changes.

    python bench/bench_webhooks.py --files 50000 --samples 50

A ``syncd run`` process (its own process, as deployed) keeps a local folder's dataset and
delivers its change log to a receiver on loopback (aiohttp, in this process, verifying each
signature with ``standardwebhooks``):

* **throughput**: the folder holds ``--files`` files when the daemon starts; its first
  reconcile records one ``created`` change each, and the figure is those changes divided by
  the time from the first batch received to the last (``batch = 1000``);
* **latency**: then ``--samples`` files are written one at a time, each once the previous one
  arrived; for each, the time from the change's ``at`` (when the catalog committed it, written
  by the daemon) to the receiver taking the POST. Both clocks are this machine's. The folder
  watch's settle window (0.5 s) comes before ``at``, so it is not in the figure.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from aiohttp import web
from standardwebhooks import Webhook

ROOT = Path(__file__).resolve().parent.parent
SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=50_000)
    parser.add_argument("--samples", type=int, default=50)
    opts = parser.parse_args()
    verifier = Webhook(SECRET)
    received: list[tuple[float, dict]] = []  # (arrival, change)
    seen: set[str] = set()
    arrived = asyncio.Event()

    async def take(request: web.Request) -> web.Response:
        body = await request.read()
        batch = verifier.verify(body, dict(request.headers))
        now = time.time()
        if request.headers["webhook-id"] not in seen:
            seen.add(request.headers["webhook-id"])
            received.extend((now, change) for change in batch["changes"])
            arrived.set()
        return web.Response(status=204)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/hook", take)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    with tempfile.TemporaryDirectory(prefix="bench-webhooks-") as tmp_name:
        tmp = Path(tmp_name)
        src = tmp / "src"
        for i in range(opts.files):
            path = src / f"d{i // 1000:03d}" / f"f{i:06d}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x")
        (tmp / "syncd.toml").write_text(
            f'[drivers.disk]\ntype = "local"\nbucket = "{src}"\n'
            '[datasets.files]\ndriver = "disk"\nwatch = true\ninterval = 3600\n'
            f'[webhooks.bench]\nurl = "http://127.0.0.1:{port}/hook"\n'
            'secret = "env:BENCH_WEBHOOK_SECRET"\nbatch = 1000\n'
        )
        daemon = subprocess.Popen(
            [sys.executable, "-m", "syncd.cli", "run", "--config", str(tmp / "syncd.toml"),
             "--db", str(tmp / "c.db")],
            env={**os.environ, "BENCH_WEBHOOK_SECRET": SECRET, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            while len(received) < opts.files:
                arrived.clear()
                await asyncio.wait_for(arrived.wait(), 600)
            first, last = received[0][0], received[opts.files - 1][0]
            rate = opts.files / max(last - first, 1e-9)
            latencies = []
            for n in range(opts.samples):
                arrived.clear()
                before = len(received)
                (src / f"sample-{n:04d}.txt").write_bytes(b"y")
                while len(received) == before:
                    await asyncio.wait_for(arrived.wait(), 60)
                    arrived.clear()
                at, change = received[before]
                committed = datetime.fromisoformat(change["at"].replace("Z", "+00:00"))
                latencies.append((at - committed.astimezone(UTC).timestamp()) * 1000)
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(60)
            await runner.cleanup()
    latencies.sort()
    print(f"load {os.getloadavg()[0]:.2f}")
    print(
        f"throughput: {opts.files:,} created changes in {last - first:.2f} s = {rate:,.0f} changes/s"
    )
    print(
        f"latency, change committed -> POST received ({opts.samples} files): median "
        f"{statistics.median(latencies):.1f} ms, p95 {latencies[int(len(latencies) * 0.95) - 1]:.1f} ms"
    )


if __name__ == "__main__":
    asyncio.run(main())
