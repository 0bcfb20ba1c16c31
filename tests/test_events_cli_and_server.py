"""``syncd events apply`` and ``syncd serve`` with the vendor-format samples."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from providers.config import DriverConfig
from syncd.reconcile.filters import Filters
from syncd.store.catalog import Catalog
from tests.emulators import free_port, start_process
from tests.test_cli_errors import one_line_error
from tests.test_events_parse import SAMPLES
from tests.test_sync_cli import syncd

TOKEN = "test-token-0123456789abcdef"


@pytest.fixture
def db(tmp_path: Path) -> str:
    path = str(tmp_path / "c.db")
    catalog = Catalog.open(path)
    catalog.create_dataset(
        "s3raw",
        "s3://acme-images/raw/",
        DriverConfig(type="s3", bucket="acme-images", path="raw"),
        Filters(),
    )
    catalog.create_dataset(
        "azimg",
        "az://images/",
        DriverConfig(type="azure", bucket="images", account="acmestore"),
        Filters(),
    )
    catalog.create_dataset(
        "gcsraw",
        "gs://acme-images-gcs/raw/",
        DriverConfig(type="gcs", bucket="acme-images-gcs", path="raw/"),
        Filters(),
    )
    catalog.close()
    return path


def keys(db: str, dataset: str) -> list[str]:
    proc = syncd("items", "ls", "--dataset", dataset, "--db", db, "--json")
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line)["key"] for line in proc.stdout.splitlines()]


def test_events_apply_from_files_and_stdin(db: str) -> None:
    proc = syncd("events", "apply", str(SAMPLES / "s3-put.json"), "--db", db, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["applied"]["created"] == 1
    assert keys(db, "s3raw") == ["raw/2026/red flower.jpg"]
    # the delete has a newer sequencer: applied; replaying the put afterwards changes nothing
    assert syncd("events", "apply", str(SAMPLES / "s3-delete.json"), "--db", db).returncode == 0
    replay = subprocess.run(
        [sys.executable, "-m", "syncd.cli", "events", "apply", "-", "--db", db, "--json"],
        input=(SAMPLES / "s3-put.json").read_text(),
        capture_output=True,
        text=True,
    )
    assert json.loads(replay.stdout)["applied"]["stale"] == 1
    assert keys(db, "s3raw") == []
    # GCS overwrite: the delete of the old generation arriving last keeps the new one
    for name in ("gcs-pubsub-overwrite-finalize.json", "gcs-pubsub-overwrite-delete.json"):
        assert syncd("events", "apply", str(SAMPLES / name), "--db", db).returncode == 0
    assert keys(db, "gcsraw") == ["raw/2026/dog.jpg"]
    assert (
        syncd(
            "events", "apply", str(SAMPLES / "azure-eventgrid-created.json"), "--db", db
        ).returncode
        == 0
    )
    assert keys(db, "azimg") == ["raw/2026/bird one.png"]


def test_events_apply_rejects_malformed_input(db: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"Records": [{"eventSource": "aws:s3"}]}')
    proc = syncd("events", "apply", str(bad), "--db", db)
    assert proc.returncode == 1  # a refused record, named: the others (none) applied
    assert (
        "bad.json: line 1, record 1: missing field" in proc.stderr
        and "Traceback" not in proc.stderr
    )
    bad.write_text("not json at all")
    one_line_error(syncd("events", "apply", str(bad), "--db", db), 2, "not valid JSON")


@pytest.fixture
def server(db: str, tmp_path: Path):
    port = free_port()
    argv = [sys.executable, "-m", "syncd.cli", "serve", "--db", db, "--port", str(port)]
    proc = start_process(
        "syncd-serve", argv, tmp_path, "/healthz", port, {"SYNCD_API_TOKEN": TOKEN}
    )
    yield proc.url
    proc.stop()


def post(url: str, body: bytes, token: str | None = TOKEN) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url + "/api/v1/events", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_serve_applies_authenticated_events(server: str, db: str) -> None:
    with urllib.request.urlopen(server + "/healthz") as resp:
        assert json.loads(resp.read()) == {"status": "ok"}
    created = (SAMPLES / "azure-eventgrid-created.json").read_bytes()
    assert post(server, created, token=None)[0] == 401
    assert post(server, created, token="wrong-token-wrong-token")[0] == 401
    status, body = post(server, created)
    assert status == 200 and body["applied"]["created"] == 1
    assert post(server, created)[1]["applied"]["stale"] == 1  # duplicate delivery
    status, body = post(server, (SAMPLES / "azure-eventgrid-validation.json").read_bytes())
    assert (status, body) == (200, {"validationResponse": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"})
    status, body = post(server, b'{"what": "ever"}')
    assert status == 400 and "unrecognised event payload" in body["error"]
    assert keys(db, "azimg") == ["raw/2026/bird one.png"]


def test_serve_refuses_to_start_without_a_token(db: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SYNCD_API_TOKEN"}
    proc = subprocess.run(
        [sys.executable, "-m", "syncd.cli", "serve", "--db", db],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    one_line_error(proc, 2, "SYNCD_API_TOKEN")


def test_lambda_handler_delivers_over_http(
    server: str, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from functions.aws_lambda import handler

    monkeypatch.delenv("SYNCD_DB", raising=False)
    monkeypatch.setenv("SYNCD_API_URL", server)
    batch = json.loads((SAMPLES / "sqs-batch.json").read_text())
    good_id, bad_id = (r["messageId"] for r in batch["Records"])
    monkeypatch.setenv("SYNCD_API_TOKEN", "not-the-right-token")
    # a wrong token is a delivery failure: every message goes back to the queue
    assert handler(batch, None) == {
        "batchItemFailures": [{"itemIdentifier": bad_id}, {"itemIdentifier": good_id}]
    }
    assert keys(db, "s3raw") == []
    monkeypatch.setenv("SYNCD_API_TOKEN", TOKEN)
    assert handler(batch, None) == {"batchItemFailures": [{"itemIdentifier": bad_id}]}
    assert keys(db, "s3raw") == ["raw/2026/red flower.jpg"]


def test_unrouted_events_are_counted_logged_once_and_listed(tmp_path: Path) -> None:
    db = str(tmp_path / "c.db")
    src = tmp_path / "src"
    src.mkdir()
    assert syncd("sync", str(src), "--dataset", "local", "--db", db).returncode == 0
    payload = tmp_path / "events.json"
    payload.write_text((SAMPLES / "s3-put.json").read_text())
    first = syncd("events", "apply", str(payload), "--db", db, "--json")
    second = syncd("events", "apply", str(payload), "--db", db, "--json")
    assert json.loads(first.stdout)["applied"]["unrouted"] == 1
    assert json.loads(second.stdout)["applied"]["unrouted"] == 1
    # one warning per bucket and process, saying what to do
    assert first.stderr.count("reach no dataset") == 1 and "acme-images" in first.stderr
    listed = [
        json.loads(x) for x in syncd("events", "unrouted", "--db", db, "--json").stdout.splitlines()
    ]
    assert [(r["provider"], r["bucket"], r["count"]) for r in listed] == [("s3", "acme-images", 2)]
    assert listed[0]["last_key"] == "raw/2026/red flower.jpg"


def test_handlers_refuse_a_catalog_that_does_not_exist(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from syncd.events.delivery import DeliveryError, deliver

    missing = tmp_path / "synd.db"  # a typo of syncd.db
    monkeypatch.delenv("SYNCD_API_URL", raising=False)
    monkeypatch.setenv("SYNCD_DB", str(missing))
    with pytest.raises(DeliveryError, match="does not exist"):
        deliver(json.loads((SAMPLES / "s3-put.json").read_text()))
    assert not missing.exists()
    served = syncd("serve", "--db", str(missing), "--port", "1", env={"SYNCD_API_TOKEN": "x" * 20})
    assert served.returncode == 2 and "does not exist" in served.stderr
    assert not missing.exists()


def test_serve_on_a_busy_port_says_so_before_claiming_to_serve(tmp_path: Path) -> None:
    import socket

    db = str(tmp_path / "c.db")
    assert syncd("sync", str(tmp_path), "--dataset", "d", "--db", db).returncode == 0
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = syncd("serve", "--db", db, "--port", str(port), env={"SYNCD_API_TOKEN": "t" * 20})
    one_line_error(proc, 2, f"127.0.0.1:{port}", "already in use")
    assert "running" not in proc.stderr
