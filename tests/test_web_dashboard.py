"""The dashboard in a real browser (issue 26): the distribution's Chromium driven by Playwright
against ``syncd run`` as a process, on a watched folder and a moto bucket.

Sign-in (wrong then right token), the overview's datasets, a file added to the folder
appearing in the dataset page's recent changes without a reload, "Sync now" producing a new
run row, CSRF refusals, the session cookie's flags, the docs page, an axe-core check of each
page, no console error anywhere (the ``web_page`` fixture fails a test on one), and the
screenshots under docs/.

Without Chromium these tests fail when ``CI`` is set and are skipped otherwise
(:func:`tests.web.chromium_path`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.conftest import unique_bucket
from tests.emulators import Emulator, free_port
from tests.web import (
    TOKEN,
    RunningDaemon,
    start_daemon,
    wait_for,
)

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
    env = {
        "AWS_ENDPOINT_URL": moto.url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
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
