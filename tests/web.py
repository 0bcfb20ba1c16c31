"""What the dashboard's browser tests share (tests/test_web_*.py): the distribution's Chromium
driven by Playwright, ``syncd run`` as a real process, signing in.

* :func:`chromium_path`: ``chromium`` from PATH (``apt-get install -y chromium``; ``make
  test`` installs it when root). Missing, the browser tests *fail* when ``CI`` is set and
  are skipped otherwise; Playwright's own downloaded browsers are never used.
* ``web_browser`` (per module) and ``web_page`` fixtures (available to every test through tests/conftest.py:
  ``pytest_plugins``): each page records the
  browser console's errors and uncaught page errors in ``page.errors`` (a
  :class:`Watched`), and the fixture fails the test if any was seen, unless the test cleared
  them knowingly.
* :func:`start_daemon`: ``syncd run`` on a config, returned once its ready line is logged;
  :class:`RunningDaemon` has the base URL, its log, ``api()`` for JSON calls with the
  token, and ``stop()``.
* :func:`sign_in`: the sign-in form, filled and sent; waits for the overview.

Every wait is on a condition (a page element, an API answer) with a generous timeout, never
a sleep.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.required import missing

TOKEN = "dashboard-token-0123456789abcdef"
RUN = (sys.executable, "-m", "syncd.cli", "run")
#: milliseconds a browser wait may take on a loaded 2-core machine
WAIT_MS = 60_000


def chromium_path() -> str:
    """The system Chromium; fails (CI) or skips the test without it."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    missing("chromium is not installed (apt-get install -y chromium; make test does it as root)")


# module scope, not session: while Playwright's sync API runs, this thread has an event loop
# running (its greenlet's), and pytest-asyncio could not run the async tests of later modules
@pytest.fixture(scope="module")
def web_browser() -> Iterator[Any]:
    executable = chromium_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("playwright is not installed (pip install -e '.[test]')")
    with sync_playwright() as pw:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start
        launched = pw.chromium.launch(
            executable_path=executable, headless=True, args=["--no-sandbox"]
        )
        yield launched
        launched.close()


@dataclass
class Watched:
    """What went wrong in a page: console errors and uncaught exceptions, as text."""

    seen: list[str] = field(default_factory=list)

    def clear(self) -> None:
        self.seen.clear()


@pytest.fixture
def web_page(web_browser: Any) -> Iterator[Any]:
    context = web_browser.new_context()
    context.set_default_timeout(WAIT_MS)
    tab = context.new_page()
    errors = Watched()
    tab.on(
        "console",
        lambda msg: (
            errors.seen.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None
        ),
    )
    tab.on("pageerror", lambda exc: errors.seen.append(f"page error: {exc}"))
    tab.errors = errors
    yield tab
    context.close()
    assert not errors.seen, f"the browser reported errors: {errors.seen}"


@dataclass
class RunningDaemon:
    proc: subprocess.Popen[str]
    port: int
    log: list[str]
    token: str = TOKEN

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, path: str, *, method: str = "GET", body: bytes | None = None) -> tuple[int, Any]:
        request = urllib.request.Request(self.base + path, method=method, data=body)
        request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                text = resp.read().decode()
                kind = resp.headers.get_content_type()
                return resp.status, json.loads(text) if kind == "application/json" else text
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=120)


def start_daemon(config: Path, db: Path, port: int, env: dict[str, str]) -> RunningDaemon:
    """``syncd run --config config --db db`` with ``SYNCD_API_TOKEN`` = :data:`TOKEN` (and
    ``env``), once it logs that it runs; its stderr is kept in ``log``."""
    proc = subprocess.Popen(
        [*RUN, "--config", str(config), "--db", str(db)],
        env={**os.environ, "SYNCD_API_TOKEN": TOKEN, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    seen: list[str] = []
    for line in proc.stderr:
        seen.append(line)
        if "running on catalog" in line:
            break
    else:
        raise AssertionError("syncd run did not start:\n" + "".join(seen))
    daemon = RunningDaemon(proc, port, seen)

    def drain() -> None:  # a chatty daemon must never block on a full pipe
        assert proc.stderr is not None
        for line in proc.stderr:
            daemon.log.append(line)

    threading.Thread(target=drain, daemon=True).start()
    return daemon


def sign_in(page: Any, daemon: RunningDaemon, token: str = TOKEN) -> None:
    """Sign in through the form and wait for the overview."""
    page.goto(daemon.base + "/login")
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_selector("#datasets, #live")
