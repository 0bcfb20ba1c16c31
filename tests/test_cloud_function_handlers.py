"""The GCP handler under functions-framework over HTTP, and the Azure handler invoked with
``azure.functions.EventGridEvent`` objects built from the vendor samples."""

from __future__ import annotations

import importlib.util
import json
import sys
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path

import pytest

from providers.config import DriverConfig
from syncd.reconcile.filters import Filters
from syncd.store.catalog import Catalog
from tests.conftest import dataset_state
from tests.emulators import free_port, start_process
from tests.test_events_parse import SAMPLES

ROOT = Path(__file__).resolve().parent.parent


def catalog_file(tmp_path: Path) -> str:
    db = str(tmp_path / "c.db")
    catalog = Catalog.open(db)
    catalog.create_dataset(
        "gcs",
        "gs://acme-images-gcs/raw/",
        DriverConfig(type="gcs", bucket="acme-images-gcs", path="raw"),
        Filters(),
    )
    catalog.create_dataset(
        "az",
        "az://images/raw/",
        DriverConfig(type="azure", bucket="images", path="raw", account="acmestore"),
        Filters(),
    )
    catalog.close()
    return db


@pytest.fixture
def gcf(tmp_path: Path):
    db = catalog_file(tmp_path)
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "functions_framework",
        "--target",
        "on_object_event",
        "--signature-type",
        "cloudevent",
        "--source",
        str(ROOT / "functions" / "gcp" / "main.py"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    # a GET without a CloudEvent answers 4xx: enough to know it is up
    proc = start_process(
        "functions-framework", argv, tmp_path, "/", port, {"SYNCD_DB": db, "PYTHONPATH": str(ROOT)}
    )
    yield proc.url + "/", db
    proc.stop()


def post_binary(url: str, event: dict) -> int:
    """A CloudEvent in binary content mode, as Eventarc sends it."""
    headers = {"Content-Type": "application/json"}
    for attr in ("specversion", "type", "source", "subject", "id", "time"):
        headers[f"ce-{attr}"] = event[attr]
    req = urllib.request.Request(
        url, data=json.dumps(event["data"]).encode(), headers=headers, method="POST"
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.status


def post_structured(url: str, event: dict) -> int:
    req = urllib.request.Request(
        url,
        data=json.dumps(event).encode(),
        headers={"Content-Type": "application/cloudevents+json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.status


def test_gcp_handler_under_functions_framework(gcf) -> None:
    url, db = gcf
    finalized = json.loads((SAMPLES / "gcs-cloudevent-finalized.json").read_text())
    assert post_binary(url, finalized) == 200
    assert dataset_state(db, "gcs") == {"raw/2026/cat 01.jpg": (4096, "CJCEsb/Ky5EDEAE=")}
    assert post_structured(url, finalized) == 200  # duplicate, other content mode: no change
    assert dataset_state(db, "gcs") == {"raw/2026/cat 01.jpg": (4096, "CJCEsb/Ky5EDEAE=")}
    deleted = json.loads((SAMPLES / "gcs-cloudevent-deleted.json").read_text())
    assert post_binary(url, deleted) == 200
    assert dataset_state(db, "gcs") == {}
    # the finalize arriving again after the delete does not resurrect the object
    assert post_binary(url, finalized) == 200
    assert dataset_state(db, "gcs") == {}
    # a malformed event is acknowledged (retrying cannot fix it) and changes nothing
    broken = {**finalized, "id": "broken", "data": {"bucket": "acme-images-gcs", "name": "raw/x"}}
    assert post_binary(url, broken) == 200
    assert dataset_state(db, "gcs") == {}


def load_function_app():
    path = ROOT / "functions" / "azure" / "function_app.py"
    spec = importlib.util.spec_from_file_location("syncd_function_app", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def grid_event(sample: dict):
    import azure.functions as func

    return func.EventGridEvent(
        id=sample["id"],
        data=sample["data"],
        topic=sample["topic"],
        subject=sample["subject"],
        event_type=sample["eventType"],
        event_time=datetime.fromisoformat(sample["eventTime"][:26] + "+00:00"),
        data_version=sample["dataVersion"],
    )


def test_azure_handler_with_event_grid_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = catalog_file(tmp_path)
    monkeypatch.setenv("SYNCD_DB", db)
    monkeypatch.delenv("SYNCD_API_URL", raising=False)
    module = load_function_app()
    [function] = module.app.get_functions()
    assert function.get_function_name() == "syncd_blob_events"
    fn = function.get_user_function()
    created = json.loads((SAMPLES / "azure-eventgrid-created.json").read_text())[0]
    deleted = json.loads((SAMPLES / "azure-eventgrid-deleted.json").read_text())[0]
    # out of order: the delete (newer sequencer) first, then the create: stays deleted
    fn(grid_event(deleted))
    fn(grid_event(created))
    assert dataset_state(db, "az") == {}
    newer = {
        **created,
        "data": {**created["data"], "sequencer": "00000000000004420000000000028999", "eTag": "0x2"},
    }
    fn(grid_event(newer))
    assert dataset_state(db, "az") == {"raw/2026/bird one.png": (524288, "0x2")}
    fn(
        grid_event({**created, "subject": "", "data": {"api": "PutBlob"}})
    )  # malformed: logged, no change
    assert dataset_state(db, "az") == {"raw/2026/bird one.png": (524288, "0x2")}
