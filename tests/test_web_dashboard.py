"""The dashboard in a real browser (issue 26): the distribution's Chromium driven by Playwright
against ``syncd run`` as a process, on a watched folder and a moto bucket.

Sign-in (wrong then right token), the overview's datasets, a file added to the folder
appearing in the dataset page's recent changes without a reload, "Sync now" producing a new
run row, CSRF refusals, the session cookie's flags, the docs page, an axe-core check of each
page, no console error anywhere (the ``web_page`` fixture fails a test on one), and the
screenshots under docs/ (written there with ``SYNCD_UPDATE_SCREENSHOTS=1``).

Without Chromium these tests fail when ``CI`` is set and are skipped otherwise
(:func:`tests.web.chromium_path`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.conftest import unique_bucket
from tests.emulators import Emulator, free_port, moto_env
from tests.waiting import wait_for
from tests.web import TOKEN, WAIT_MS, RunningDaemon, sign_in, start_daemon

DOCS = Path(__file__).parent.parent / "docs"


@dataclass
class Dash:
    daemon: RunningDaemon
    folder: Path
    bucket: str
    s3: Any

    @property
    def base(self) -> str:
        return self.daemon.base

    def runs(self, dataset: str) -> list[dict[str, Any]]:
        status, body = self.daemon.api(f"/api/v1/datasets/{dataset}/runs")
        assert status == 200, body
        return body["runs"]


@pytest.fixture(scope="module")
def dash(moto: Emulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dash]:
    """``syncd run`` on a watched folder (``disk``) and a moto bucket (``images``), each
    synced once before the tests look (their first reconcile completed)."""
    tmp = tmp_path_factory.mktemp("dash")
    folder = tmp / "folder"
    folder.mkdir()
    (folder / "readme.txt").write_text("hello")
    (folder / "photos").mkdir()
    (folder / "photos" / "cat.txt").write_text("meow")
    s3 = boto3.client(
        "s3",
        endpoint_url=moto.url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    bucket = unique_bucket("dash")
    s3.create_bucket(Bucket=bucket)
    for i in range(3):
        s3.put_object(Bucket=bucket, Key=f"raw/img-{i}.bin", Body=b"x" * (100 + i))
    port = free_port()
    config = tmp / "syncd.toml"
    config.write_text(
        f"""
[daemon]
interval = 3600

[drivers.images]
type = "s3"
bucket = "{bucket}"
path = "raw/"
endpoint = "{moto.url}"

[drivers.disk]
type = "local"
bucket = "{folder}"

[datasets.images]
driver = "images"

[datasets.disk]
driver = "disk"
watch = true

[server]
host = "127.0.0.1"
port = {port}
"""
    )
    env = moto_env(moto)
    daemon = start_daemon(config, tmp / "catalog.db", port, env)
    made = Dash(daemon, folder, bucket, s3)
    try:
        for name in ("images", "disk"):
            wait_for(
                lambda n=name: any(r["status"] == "completed" for r in made.runs(n)),
                f"the first reconcile of {name}",
            )
        yield made
    finally:
        code = daemon.stop()
        assert code == 0, "".join(daemon.log[-40:])


def test_sign_in_with_a_wrong_then_the_right_token(dash: Dash, web_page: Any) -> None:
    page = web_page
    page.goto(dash.base + "/")
    # no session: the overview sends the browser to the sign-in page
    page.wait_for_url("**/login?next=/")
    page.fill("#token", "wrong-token-0123456789abcdef")
    page.click("button[type=submit]")
    error = page.wait_for_selector("#login-error")
    assert "not one of this server's tokens" in error.inner_text()
    # the failed sign-in answered 401: Chromium logs that as a console error
    page.errors.clear()
    assert TOKEN not in page.content()
    page.fill("#token", TOKEN)
    page.click("button[type=submit]")
    page.wait_for_selector("#datasets")
    assert page.url == dash.base + "/"
    assert TOKEN not in page.content() and TOKEN not in page.url


def _screenshot(page: Any, name: str) -> None:
    """Take the screenshot the README shows; written to docs/ only with
    ``SYNCD_UPDATE_SCREENSHOTS=1`` (each run's differ: times, paths), so a test run leaves the
    work tree clean."""
    png = page.screenshot(full_page=True)
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    if os.environ.get("SYNCD_UPDATE_SCREENSHOTS") == "1":
        DOCS.mkdir(exist_ok=True)
        (DOCS / name).write_bytes(png)


def _signed_in(dash: Dash, page: Any) -> Any:
    sign_in(page, dash.daemon)
    return page


def test_the_overview_lists_every_dataset_with_its_numbers(dash: Dash, web_page: Any) -> None:
    page = _signed_in(dash, web_page)
    rows = page.locator("#datasets tbody tr")
    wait_for(lambda: rows.count() == 2, "two dataset rows")
    by_name = {
        page.locator(f"#datasets tr[data-dataset={n}]").get_attribute("data-dataset"): n
        for n in ("images", "disk")
    }
    assert set(by_name) == {"images", "disk"}
    images = page.locator("#datasets tr[data-dataset=images]")
    assert f"s3://{dash.bucket}/raw/" in images.inner_text()
    # the item count is the API's
    status, body = dash.daemon.api("/api/v1/datasets/images")
    assert status == 200
    # (the first view may say "counting…": the count comes with the page's next refresh)
    wait_for(
        lambda: images.locator("td.num").first.inner_text() == f"{body['items']:,}",
        "the item count on the overview",
    )
    assert "ok" in images.locator("td.health").inner_text()
    assert page.locator("#daemon-health").inner_text().startswith("Healthy")
    # the daemon is a registered worker of the catalog
    assert page.locator("#workers tbody tr").count() >= 1
    _screenshot(page, "dashboard-overview.png")


def test_a_new_file_appears_in_recent_changes_without_a_reload(dash: Dash, web_page: Any) -> None:
    page = _signed_in(dash, web_page)
    page.goto(dash.base + "/datasets/disk")
    page.wait_for_selector("#recent")
    # the page's live stream is open before the file is written (the stream's first answer)
    page.wait_for_function("() => document.getElementById('recent').dataset.live")
    marker = page.evaluate("() => { window.__same_page = 1; return 1; }")
    assert marker == 1
    (dash.folder / "fresh-from-the-test.txt").write_text("new")
    cell = page.locator("#recent tbody td.key", has_text="fresh-from-the-test.txt")
    cell.first.wait_for(timeout=WAIT_MS)
    # no reload happened: the page's own state is still there
    assert page.evaluate("() => window.__same_page") == 1
    assert "created" in page.locator("#recent tbody tr").first.inner_text()
    # the three charts are drawn (uPlot's canvas in each)
    for chart in ("duration", "changes", "items"):
        page.locator(f"#chart-{chart} canvas").wait_for()
    _screenshot(page, "dashboard-dataset.png")


def test_sync_now_produces_a_new_run_row(dash: Dash, web_page: Any) -> None:
    page = _signed_in(dash, web_page)
    before = {r["id"] for r in dash.runs("images")}
    page.goto(dash.base + "/datasets/images")
    rows = page.locator("#runs tr.run")
    assert rows.count() == len(before)
    page.click("#sync-now")
    page.wait_for_selector("#sync-result:has-text('A run was started.')")
    # the runs table refreshes itself: a row for a run that was not there before
    selector = ", ".join(f"tr.run:not([data-run='{i}'])" for i in before) or "tr.run"
    page.locator(f"#runs {selector}" if before else "#runs tr.run").first.wait_for()
    wait_for(lambda: len(dash.runs("images")) > len(before), "a new run in the API")
    new = page.locator("#runs tr.run").first.get_attribute("data-run")
    assert int(new or 0) not in before


def test_the_session_cookie_is_httponly_and_samesite_strict(dash: Dash, web_page: Any) -> None:
    page = _signed_in(dash, web_page)
    cookies = {c["name"]: c for c in page.context.cookies()}
    session = cookies["syncd_session"]
    assert session["httpOnly"] is True
    assert session["sameSite"] == "Strict"
    assert TOKEN not in session["value"]
    # scripts cannot read it
    assert "syncd_session" not in page.evaluate("() => document.cookie")


def test_a_cross_site_form_post_is_refused(dash: Dash, web_page: Any, tmp_path: Path) -> None:
    """A page of another origin (another port of 127.0.0.1: the same *site*, so SameSite
    does not stop the cookie) posts the "Sync now" form: refused, no run starts."""
    page = _signed_in(dash, web_page)
    before = len(dash.runs("disk"))
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "index.html").write_text(
        "<!doctype html><html lang='en'><title>x</title><link rel='icon' href='data:,'><body>"
        f"<form id='f' method='post' action='{dash.base}/datasets/disk/sync'>"
        "<input name='csrf' value='guessed'></form></body></html>"
    )
    server = _serve(evil)
    try:
        page.goto(f"http://127.0.0.1:{server.server_address[1]}/index.html")
        with page.expect_response(lambda r: r.url.endswith("/datasets/disk/sync")) as answer:
            page.evaluate("() => document.getElementById('f').submit()")
        assert answer.value.status == 403
        page.wait_for_url("**/datasets/disk/sync")
        assert "cross-site" in page.locator("body").inner_text()
        page.errors.clear()  # the refused post's 403 is a console error of that page
    finally:
        server.shutdown()
    # the same post from the dashboard's own origin but without the CSRF token: refused too
    page.goto(dash.base + "/")
    status = page.evaluate(
        """async () => (await fetch('/datasets/disk/sync', {method: 'POST',
            headers: {'Content-Type': 'application/x-www-form-urlencoded'},
            body: 'csrf=wrong'})).status"""
    )
    assert status == 403
    page.errors.clear()
    assert len(dash.runs("disk")) == before


def _serve(folder: Path) -> Any:
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(folder))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


PAGES = ["/", "/datasets/disk", "/datasets/images", "/docs"]


@pytest.mark.parametrize("path", PAGES)
def test_every_page_passes_axe_without_critical_violations_or_console_errors(
    dash: Dash, web_page: Any, path: str
) -> None:
    from axe_playwright_python.sync_playwright import Axe

    page = _signed_in(dash, web_page)
    page.goto(dash.base + path)
    page.wait_for_load_state("networkidle") if path != "/datasets/disk" else page.wait_for_selector(
        "#recent"
    )
    results = Axe().run(page)
    critical = [v for v in results.response["violations"] if v.get("impact") == "critical"]
    assert not critical, json.dumps(critical, indent=1)[:4000]


def test_the_sign_in_page_passes_axe(dash: Dash, web_page: Any) -> None:
    from axe_playwright_python.sync_playwright import Axe

    web_page.goto(dash.base + "/login")
    results = Axe().run(web_page)
    critical = [v for v in results.response["violations"] if v.get("impact") == "critical"]
    assert not critical, json.dumps(critical, indent=1)[:4000]


def test_the_docs_page_renders_every_operation_and_serves_the_document(
    dash: Dash, web_page: Any
) -> None:
    import yaml

    page = _signed_in(dash, web_page)
    page.goto(dash.base + "/docs")
    spec = yaml.safe_load((Path(__file__).parent.parent / "syncd/server/openapi.yaml").read_text())
    operations = sum(1 for ops in spec["paths"].values() for m in ops if m != "parameters")
    assert page.locator("section.op").count() == operations
    assert page.locator("section.op h2", has_text="/api/v1/datasets/{name}/sync").count() == 1
    answer = page.request.get(dash.base + "/api/v1/openapi.yaml")
    assert answer.status == 200 and yaml.safe_load(answer.text())["paths"]
    # and no script of another origin anywhere: everything is served by the daemon
    sources = page.evaluate("() => [...document.scripts].map(s => s.src)")
    assert sources and all(s.startswith(dash.base + "/static/") for s in sources)


def test_pages_read_with_javascript_off(dash: Dash, web_browser: Any) -> None:
    context = web_browser.new_context(java_script_enabled=False)
    try:
        page = context.new_page()
        sign_in(page, dash.daemon)
        # every row, table and section is in the HTML itself
        for path, selector in [
            ("/", "#datasets tr[data-dataset=disk]"),
            ("/datasets/disk", "#runs table tr.run"),
            ("/datasets/disk", "#recent tbody tr"),
            ("/docs", "section.op"),
        ]:
            page.goto(dash.base + path)
            assert page.locator(selector).count() >= 1, path
    finally:
        context.close()
