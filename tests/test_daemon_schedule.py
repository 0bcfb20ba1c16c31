"""The scheduler (issue 9): a failed reconcile is reported and retried with backoff, and never
stops the daemon; a reconcile the API asks for runs; shutdown leaves the run resumable."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from syncd.config import load_daemon_config
from syncd.daemon.service import Daemon


async def until(condition, what: str, timeout: float = 60) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_a_failing_dataset_is_retried_and_does_not_stop_the_others(tmp_path: Path) -> None:
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir()
    bad.mkdir()
    (good / "a").write_text("a")
    (bad / "b").write_text("b")
    (tmp_path / "syncd.toml").write_text(
        f'[drivers.good]\ntype = "local"\nbucket = "{good}"\n'
        f'[drivers.bad]\ntype = "local"\nbucket = "{bad}"\n'
        '[datasets.good]\ndriver = "good"\nwatch = false\n'
        '[datasets.bad]\ndriver = "bad"\nwatch = false\n'
    )
    config = load_daemon_config(str(tmp_path / "syncd.toml"))
    daemon = Daemon(config, str(tmp_path / "c.db"))
    daemon.scheduler.backoff_base = 0.05
    # the folder disappears before the first reconcile: it fails, is reported, and retried
    shutil.rmtree(bad)
    task = asyncio.create_task(daemon.run())
    try:
        bad_state = daemon.scheduler.states["bad"]
        good_state = daemon.scheduler.states["good"]
        await until(lambda: bad_state.failures >= 2, "two failed attempts")
        assert "does not exist" in (bad_state.last_error or "")
        await until(lambda: good_state.runs == 1, "the other dataset's reconcile")
        assert not task.done()  # the failures did not stop the daemon
        bad.mkdir()
        (bad / "b").write_text("b")
        await until(lambda: bad_state.runs == 1, "a successful retry")
        assert bad_state.failures == 0 and bad_state.last_error is None
        text = daemon.metrics.render().decode()
        assert 'syncd_sync_runs_total{dataset="bad",outcome="failed"}' in text
    finally:
        daemon.stop.set()
        await asyncio.wait_for(task, 60)
