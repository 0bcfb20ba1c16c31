"""Items record their objects' content types and the provider's metadata and tags (issue 23,
items 1 and 2), against the real emulators: moto, fake-gcs-server, Azurite, a local folder.

Metadata and tags are written with each provider's own SDK (the drivers' ``put`` takes none):
what a user's upload would leave in the bucket.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from providers import open_driver
from providers.config import DriverConfig
from providers.content_types import UNKNOWN, guess
from syncd import api
from syncd.config import DatasetSpec
from syncd.daemon.catalog_thread import CatalogThread
from syncd.daemon.intake import Intake
from syncd.daemon.metrics import Metrics
from syncd.events.apply import apply_events
from syncd.events.parse import EventFormatError, EventKind, ObjectEvent, parse
from syncd.reconcile.filters import Filters
from syncd.reconcile.sync import SyncOptions, SyncResult
from syncd.store.catalog import Catalog
from tests.conftest import Backend, CatalogMaker


def write_object(
    backend: Backend,
    bucket: str,
    key: str,
    data: bytes,
    *,
    content_type: str | None = None,
    metadata: dict[str, str] | None = None,
    tags: dict[str, str] | None = None,
) -> None:
    """Upload through the provider's SDK, with metadata and tags where it has them."""
    if backend.name == "local":
        path = Path(bucket, *key.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    elif backend.name == "s3":
        import boto3

        extra: dict[str, Any] = {}
        if content_type:
            extra["ContentType"] = content_type
        if metadata:
            extra["Metadata"] = metadata
        if tags:
            extra["Tagging"] = "&".join(f"{k}={v}" for k, v in tags.items())
        client = boto3.client("s3", endpoint_url=backend.emulator.url)
        client.put_object(Bucket=bucket, Key=key, Body=data, **extra)
    elif backend.name == "gcs":
        blob = backend._gcs_client().bucket(bucket).blob(key)
        if metadata:
            blob.metadata = metadata
        blob.upload_from_string(data, content_type=content_type or "application/octet-stream")
    else:
        from azure.storage.blob import BlobServiceClient, ContentSettings

        service = BlobServiceClient.from_connection_string(
            backend.emulator.extra["connection_string"]
        )
        service.get_blob_client(bucket, key).upload_blob(
            data,
            overwrite=True,
            metadata=metadata,
            tags=tags,
            content_settings=ContentSettings(content_type=content_type) if content_type else None,
        )


def sync(
    catalog: Catalog, backend: Backend, bucket: str, metadata: str = "listing", tags: bool = False
) -> SyncResult:
    spec = DatasetSpec("ds", backend.config(bucket), Filters())
    options = SyncOptions(metadata=metadata, tags=tags)  # type: ignore[arg-type]
    return asyncio.run(api.sync(catalog, "ds", spec=spec, options=options))


def items(catalog: Catalog) -> dict[str, tuple[str | None, dict[str, Any]]]:
    ds = catalog.find_dataset("ds")
    assert ds is not None
    return {i.key: (i.content_type, json.loads(i.metadata)) for i in catalog.iter_items(ds.id)}


@pytest.fixture
def catalog(tmp_path: Path):
    cat = Catalog.open(str(tmp_path / "catalog.db"))
    yield cat
    cat.close()


# -- content types ---------------------------------------------------------------------------


def test_content_type_for_every_item_on_every_source(backend: Backend, catalog: Catalog) -> None:
    """A listing that states the type (GCS, Azure) is taken as is; one that does not (S3,
    a folder) gets a guess from the extension, marked as guessed; no item is left without."""
    bucket = backend.new_bucket()
    # the stated type differs from what the extension says, so a guess cannot pass for it
    write_object(backend, bucket, "a/photo.jpg", b"png bytes", content_type="image/png")
    write_object(backend, bucket, "b/shot.HEIC", b"heic", content_type="image/heic")
    write_object(backend, bucket, "c/clip.mkv", b"mkv", content_type="video/x-matroska")
    write_object(backend, bucket, "d/no-extension", b"?", content_type="text/x-custom")
    sync(catalog, backend, bucket)
    got = items(catalog)
    if backend.name in ("gcs", "azure"):
        assert got == {
            "a/photo.jpg": ("image/png", {}),
            "b/shot.HEIC": ("image/heic", {}),
            "c/clip.mkv": ("video/x-matroska", {}),
            "d/no-extension": ("text/x-custom", {}),
        }
    else:
        guessed = {"content_type_guessed": True}
        assert got == {
            "a/photo.jpg": ("image/jpeg", guessed),
            "b/shot.HEIC": ("image/heic", guessed),
            "c/clip.mkv": ("video/x-matroska", guessed),
            "d/no-extension": ("application/octet-stream", guessed),
        }


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("x/a.webp", "image/webp"),
        ("x/a.AVIF", "image/avif"),
        ("x/a.heif", "image/heif"),
        ("x/a.jxl", "image/jxl"),
        ("x/a.dng", "image/x-adobe-dng"),
        ("x/a.CR3", "image/x-canon-cr3"),
        ("x/a.arw", "image/x-sony-arw"),
        ("x/a.webm", "video/webm"),
        ("x/a.mov", "video/quicktime"),
        ("x/a.mp4", "video/mp4"),
        ("x/a.jsonl", "application/jsonl"),
        ("x/a.parquet", "application/vnd.apache.parquet"),
        ("x/archive.tar.gz", "application/x-tar"),  # an encoding suffix: mimetypes decides
        ("x/.hidden", None),
        ("x/noext", None),
        ("dir.jpg/noext", None),  # a dot in a folder name is no extension
    ],
)
def test_guess_table(key: str, expected: str | None) -> None:
    assert guess(key) == expected
    assert guess(key) == expected  # the cached answer is the same


# -- head mode on S3 (moto) --------------------------------------------------------------------


def one_backend(
    request: pytest.FixtureRequest, name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Backend:
    """The ``backend`` fixture's Backend for one provider, for tests of that provider only."""
    emulator = request.getfixturevalue({"s3": "moto", "gcs": "fake_gcs", "azure": "azurite"}[name])
    if name == "azure":
        monkeypatch.setenv("SYNCD_TEST_AZURE_CONN", emulator.extra["connection_string"])
    return Backend(name, emulator, tmp_path)


@pytest.fixture
def s3(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Backend:
    return one_backend(request, "s3", tmp_path, monkeypatch)


def test_head_mode_reads_s3_metadata_content_type_and_tags(s3: Backend, tmp_path: Path) -> None:
    bucket = s3.new_bucket()
    meta, tags = {"site": "berlin", "camera": "cam-7"}, {"team": "cv", "review": "yes"}
    write_object(s3, bucket, "img/a.jpg", b"a", content_type="image/png", metadata=meta, tags=tags)
    write_object(s3, bucket, "img/b.jpg", b"b", content_type="image/jpeg")
    # listing mode: S3's listing says none of it
    with closing(Catalog.open(str(tmp_path / "listing.db"))) as listing:
        assert sync(listing, s3, bucket).counts["heads"] == 0
        assert items(listing)["img/a.jpg"] == ("image/jpeg", {"content_type_guessed": True})
    with closing(Catalog.open(str(tmp_path / "head.db"))) as head:
        result = sync(head, s3, bucket, metadata="head", tags=True)
        assert (result.counts["created"], result.counts["heads"]) == (2, 2)
        assert items(head) == {
            "img/a.jpg": ("image/png", {"provider": meta, "object_tags": tags}),
            # no metadata, no tags: nothing but the real content type
            "img/b.jpg": ("image/jpeg", {}),
        }


def test_a_guess_is_the_sources_rule_and_rows_store_only_the_exceptions(
    s3: Backend, tmp_path: Path
) -> None:
    """On S3 a type is a guess unless a HEAD read it: a listed item's row stores ``{}`` (not
    the marker in every row, which cost a 1M first sync 8%), a HEADed one says ``false``;
    every reader (items, the change feed in both forms, queries) sees the public form, where
    ``content_type_guessed`` is ``true`` or absent."""
    from syncd.query import parse_where
    from syncd.store import changes

    bucket = s3.new_bucket()
    write_object(s3, bucket, "a.jpg", b"a", content_type="image/png", metadata={"k": "v"})
    write_object(s3, bucket, "b", b"b", content_type="text/plain")

    def stored(catalog: Catalog) -> dict[str, str]:
        rows = catalog.db.execute("SELECT key, metadata FROM items").fetchall()
        return dict(rows)

    def feed(catalog: Catalog) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        records = [c.item["metadata"] for c in changes.read(catalog.db) if c.item]
        lines, _ = changes.read_json(catalog.db)
        return records, [json.loads(line)["item"]["metadata"] for line in lines]

    def count(catalog: Catalog, where: str) -> int:
        ds = catalog.find_dataset("ds")
        assert ds is not None
        return catalog.count_query(ds.id, parse_where([where]))[0]

    guessed = {"content_type_guessed": True}
    with closing(Catalog.open(str(tmp_path / "listing.db"))) as listing:
        sync(listing, s3, bucket)
        assert stored(listing) == {"a.jpg": "{}", "b": "{}"}
        assert items(listing) == {"a.jpg": ("image/jpeg", guessed), "b": (UNKNOWN, guessed)}
        assert feed(listing) == ([guessed, guessed], [guessed, guessed])
        assert count(listing, "metadata.content_type_guessed=true") == 2
        assert count(listing, "metadata.content_type_guessed") == 2
        assert count(listing, "metadata.content_type_guessed=false") == 0
    with closing(Catalog.open(str(tmp_path / "head.db"))) as head:
        sync(head, s3, bucket, metadata="head")
        assert stored(head) == {
            "a.jpg": '{"provider": {"k": "v"}, "content_type_guessed": false}',
            "b": '{"content_type_guessed": false}',
        }
        assert items(head) == {
            "a.jpg": ("image/png", {"provider": {"k": "v"}}),
            "b": ("text/plain", {}),
        }
        assert feed(head) == ([{"provider": {"k": "v"}}, {}], [{"provider": {"k": "v"}}, {}])
        assert count(head, "metadata.content_type_guessed") == 0
        assert count(head, "metadata.content_type_guessed=true") == 0


def test_head_mode_without_tags_reads_no_tags(s3: Backend, catalog: Catalog) -> None:
    bucket = s3.new_bucket()
    write_object(s3, bucket, "a.bin", b"a", metadata={"k": "v"}, tags={"t": "1"})
    result = sync(catalog, s3, bucket, metadata="head")
    assert result.counts["heads"] == 1
    assert items(catalog)["a.bin"] == ("binary/octet-stream", {"provider": {"k": "v"}})


def test_head_mode_resync_heads_only_changed_objects(s3: Backend, catalog: Catalog) -> None:
    """A re-sync HEADs what the listing shows new or changed (ETag), never the whole bucket."""
    bucket = s3.new_bucket()
    for i in range(30):
        write_object(s3, bucket, f"k/{i:03d}.png", b"x%d" % i, metadata={"n": str(i)})
    first = sync(catalog, s3, bucket, metadata="head")
    assert (first.counts["created"], first.counts["heads"]) == (30, 30)
    again = sync(catalog, s3, bucket, metadata="head")
    assert (again.counts["unchanged"], again.counts["heads"]) == (30, 0)
    # two overwritten (new bytes: new ETag), one new, one deleted
    write_object(s3, bucket, "k/003.png", b"changed", metadata={"n": "3b"})
    write_object(s3, bucket, "k/007.png", b"changed too", metadata={"n": "7b"})
    write_object(s3, bucket, "k/999.png", b"new", metadata={"n": "new"})
    import boto3

    boto3.client("s3", endpoint_url=s3.emulator.url).delete_object(Bucket=bucket, Key="k/010.png")
    third = sync(catalog, s3, bucket, metadata="head")
    assert third.counts["heads"] == 3
    assert (third.counts["updated"], third.counts["created"], third.counts["deleted"]) == (2, 1, 1)
    got = items(catalog)
    assert got["k/003.png"][1] == {"provider": {"n": "3b"}}
    assert got["k/999.png"][1] == {"provider": {"n": "new"}}
    assert got["k/004.png"][1] == {"provider": {"n": "4"}}


def test_cli_sync_head_mode_counts_heads(s3: Backend, tmp_path: Path) -> None:
    bucket = s3.new_bucket()
    write_object(s3, bucket, "p/a.jpg", b"a", content_type="image/png", metadata={"s": "1"})
    cmd = [sys.executable, "-m", "syncd.cli", "sync", s3.source(bucket), "--dataset", "ds"]
    cmd += ["--db", str(tmp_path / "c.db"), "--metadata", "head", "--json"]
    env = {**os.environ, "AWS_ENDPOINT_URL": s3.emulator.url}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])["summary"]
    assert (summary["created"], summary["heads"]) == (1, 1)
    with closing(Catalog.open(str(tmp_path / "c.db"))) as catalog:
        assert items(catalog) == {"p/a.jpg": ("image/png", {"provider": {"s": "1"}})}


def test_cli_rejects_a_bad_metadata_mode(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "syncd.cli", "sync", str(tmp_path), "--dataset", "ds"]
    proc = subprocess.run([*cmd, "--metadata", "full"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "'full' is not one of 'listing', 'head'" in proc.stderr


def test_config_rejects_bad_metadata_and_tags(tmp_path: Path) -> None:
    config = tmp_path / "syncd.toml"
    base = f'[drivers.d]\ntype = "local"\nbucket = "{tmp_path}"\n[datasets.x]\ndriver = "d"\n'
    for line, message in [
        ('metadata = "full"', "datasets.x.metadata: must be 'listing' or 'head' (got 'full')"),
        ('tags = "yes"', "datasets.x.tags: "),
    ]:
        config.write_text(base + line + "\n")
        proc = subprocess.run(
            [sys.executable, "-m", "syncd.cli", "sync", "--config", str(config)],
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )
        assert proc.returncode == 2, proc.stderr
        assert message in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


# -- GCS custom metadata (fake-gcs-server) -----------------------------------------------------


@pytest.fixture
def gcs(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Backend:
    return one_backend(request, "gcs", tmp_path, monkeypatch)


def test_gcs_listing_records_custom_metadata(gcs: Backend, catalog: Catalog) -> None:
    bucket = gcs.new_bucket()
    meta = {"site": "berlin", "label": "bird"}
    write_object(gcs, bucket, "i/a.webp", b"a", content_type="image/webp", metadata=meta)
    write_object(gcs, bucket, "i/b.webp", b"b", content_type="image/webp")
    result = sync(catalog, gcs, bucket)
    assert result.counts["heads"] == 0  # the listing said it all
    assert items(catalog) == {
        "i/a.webp": ("image/webp", {"provider": meta}),
        "i/b.webp": ("image/webp", {}),
    }
    # an overwrite with other metadata (a new generation) is an update the listing sees. A
    # metadata change alone is too on GCS (a new metageneration: the version differs), but
    # fake-gcs-server keeps the metageneration and ETag on a patch, so that is not shown here
    write_object(gcs, bucket, "i/b.webp", b"b2", content_type="image/webp", metadata={"l": "c"})
    assert sync(catalog, gcs, bucket).counts["updated"] == 1
    assert items(catalog)["i/b.webp"] == ("image/webp", {"provider": {"l": "c"}})


# -- Azure metadata and index tags (Azurite) ---------------------------------------------------


@pytest.fixture
def azure(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Backend:
    return one_backend(request, "azure", tmp_path, monkeypatch)


def test_azure_listing_records_metadata(azure: Backend, catalog: Catalog) -> None:
    bucket = azure.new_bucket()
    meta = {"site": "berlin"}
    write_object(azure, bucket, "v/a.mov", b"a", content_type="video/quicktime", metadata=meta)
    result = sync(catalog, azure, bucket)
    assert result.counts["heads"] == 0
    assert items(catalog) == {"v/a.mov": ("video/quicktime", {"provider": meta})}


def test_azure_index_tags_from_the_listing_and_from_head(azure: Backend, tmp_path: Path) -> None:
    """``tags = true``: the listing asks for index tags (``include=tags``); in head mode Get
    Blob Tags reads them per object. Without it neither is asked for."""
    bucket = azure.new_bucket()
    meta, tags = {"site": "berlin"}, {"team": "cv"}
    write_object(azure, bucket, "t/a.png", b"a", content_type="image/png", metadata=meta, tags=tags)
    write_object(azure, bucket, "t/b.png", b"b", content_type="image/png")
    expected = {
        "t/a.png": ("image/png", {"provider": meta, "object_tags": tags}),
        "t/b.png": ("image/png", {}),
    }
    with closing(Catalog.open(str(tmp_path / "plain.db"))) as plain:
        sync(plain, azure, bucket)
        assert items(plain)["t/a.png"] == ("image/png", {"provider": meta})
    with closing(Catalog.open(str(tmp_path / "listing.db"))) as listing:
        assert sync(listing, azure, bucket, tags=True).counts["heads"] == 0
        assert items(listing) == expected
    with closing(Catalog.open(str(tmp_path / "head.db"))) as head:
        assert sync(head, azure, bucket, metadata="head", tags=True).counts["heads"] == 2
        assert items(head) == expected


# -- events --------------------------------------------------------------------------------


async def intake_deliver(spec: DatasetSpec, db: Path, events: list[ObjectEvent]) -> dict:
    """Deliver ``events`` through the daemon's intake; the dataset's items afterwards."""
    catalog = CatalogThread(str(db))
    await catalog.start()
    await catalog.call(lambda c: api.ensure_dataset(c, "ds", spec=spec))
    intake = Intake(catalog, {"ds": spec}, Metrics())
    try:
        await intake.deliver(events, source="test")
        return await catalog.call(items)
    finally:
        await intake.close()
        await catalog.close()


@pytest.fixture(params=["s3", "azure"])
def evented(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Backend:
    """The providers whose events carry no metadata (S3, Azure Event Grid)."""
    return one_backend(request, request.param, tmp_path, monkeypatch)


async def test_head_mode_create_event_is_headed(evented: Backend, tmp_path: Path) -> None:
    """S3 and Azure events carry no metadata (S3's no content type either): in head mode the
    daemon HEADs the object (and reads its tags) before applying the event; in listing mode
    an S3 event's type is guessed. (Azurite sends no Event Grid events: the events are built
    here as the parser makes them; the HEADs go to the emulator.)"""
    bucket = evented.new_bucket()
    write_object(evented, bucket, "e/a.jpg", b"abc", content_type="image/png", metadata={"s": "1"})
    write_object(evented, bucket, "e/b.jpg", b"abd", metadata={"s": "2"}, tags={"t": "x"})
    config = evented.config(bucket)
    async with open_driver(config) as driver:
        heads = {k: await driver.head(k) for k in ("e/a.jpg", "e/b.jpg")}
    events = [
        ObjectEvent(EventKind.CREATED, evented.name, bucket, k, size=3, etag=h.etag)
        for k, h in heads.items()
    ]
    gone = ObjectEvent(EventKind.CREATED, evented.name, bucket, "e/gone.jpg", size=1, etag="x")
    head = DatasetSpec("ds", config, Filters(), metadata="head", tags=True)
    got = await intake_deliver(head, tmp_path / "head.db", [*events, gone])
    default_type = heads["e/b.jpg"].content_type
    assert got == {
        "e/a.jpg": ("image/png", {"provider": {"s": "1"}}),
        "e/b.jpg": (default_type, {"provider": {"s": "2"}, "object_tags": {"t": "x"}}),
        # HEAD found nothing: applied as the event says, with a guessed type
        "e/gone.jpg": ("image/jpeg", {"content_type_guessed": True}),
    }
    listing = DatasetSpec("ds", config, Filters())
    got = await intake_deliver(listing, tmp_path / "listing.db", events[:1])
    assert got == {"e/a.jpg": ("image/jpeg", {"content_type_guessed": True})}


def _driver(provider: str, bucket: str) -> DriverConfig:
    return DriverConfig(type=provider, bucket=bucket)


def gcs_message(resource: dict[str, Any]) -> dict[str, Any]:
    """A Pub/Sub push body of a GCS notification (JSON_API_V1: the object resource)."""
    attributes = {
        "eventType": "OBJECT_FINALIZE",
        "bucketId": resource["bucket"],
        "objectId": resource["name"],
        "objectGeneration": resource["generation"],
        "eventTime": "2026-12-07T10:00:00.000Z",
        "payloadFormat": "JSON_API_V1",
    }
    data = base64.b64encode(json.dumps(resource).encode()).decode()
    return {"message": {"data": data, "attributes": attributes, "messageId": "1"}}


def test_gcs_event_carries_content_type_and_metadata(catalogs) -> None:
    """On both stores, and the text read back is the same on both (jsonb's own order)."""
    catalog = catalogs()
    catalog.create_dataset("ds", "gs://bkt", _driver("gcs", "bkt"), Filters())
    meta = {"zz": "1", "a": "2", "bbb": "ü"}
    resource = {
        "kind": "storage#object",
        "bucket": "bkt",
        "name": "e/a.jpg",
        "generation": "5",
        "metageneration": "1",
        "size": "3",
        "etag": "CAU=",
        "contentType": "image/png",
        "metadata": meta,
        "updated": "2026-12-07T10:00:00.000Z",
    }
    assert apply_events(catalog, parse(gcs_message(resource)).events).counts["created"] == 1
    assert items(catalog) == {"e/a.jpg": ("image/png", {"provider": meta})}
    [item] = catalog.iter_items(catalog.find_dataset("ds").id)
    assert item.metadata == '{"provider": {"a": "2", "zz": "1", "bbb": "ü"}}'


@pytest.mark.parametrize("bad", [["a"], {"a": 1}, {"a": "x" * 9000}])
def test_gcs_event_with_malformed_metadata_is_refused(bad: Any) -> None:
    resource = {"bucket": "bkt", "name": "k", "generation": "1", "metadata": bad}
    with pytest.raises(EventFormatError, match="metadata"):
        parse(gcs_message(resource))


def test_s3_event_gets_a_guessed_content_type(catalog: Catalog) -> None:
    catalog.create_dataset("ds", "s3://bkt", _driver("s3", "bkt"), Filters())
    record = {
        "eventSource": "aws:s3",
        "eventName": "ObjectCreated:Put",
        "eventTime": "2026-12-07T10:00:00.000Z",
        "s3": {
            "bucket": {"name": "bkt"},
            "object": {"key": "e/b.avif", "size": 3, "eTag": "abc", "sequencer": "0A"},
        },
    }
    assert apply_events(catalog, parse({"Records": [record]}).events).counts["created"] == 1
    assert items(catalog) == {"e/b.avif": ("image/avif", {"content_type_guessed": True})}


def test_head_mode_split_run_counts_every_ranges_heads(s3: Backend, catalog: Catalog) -> None:
    """A run split into key ranges HEADs in each range; the result counts them all."""
    bucket = s3.new_bucket()
    for i in range(12):
        write_object(s3, bucket, f"{'ab'[i % 2]}/{i:02d}.png", b"%d" % i, metadata={"n": str(i)})
    spec = DatasetSpec("ds", s3.config(bucket), Filters())
    options = SyncOptions(metadata="head", ranges=2)
    result = asyncio.run(api.sync(catalog, "ds", spec=spec, options=options))
    assert (result.counts["created"], result.counts["heads"]) == (12, 12)
    ranges = catalog.db.execute("SELECT count(*) FROM run_ranges").fetchone()[0]
    assert ranges == 2  # it was split
    assert {meta["provider"]["n"] for _, meta in items(catalog).values()} == {
        str(i) for i in range(12)
    }


def test_metadata_entries_no_store_can_hold_are_left_out() -> None:
    """A NUL in a listed metadata name or value (PostgreSQL's jsonb refuses it) drops that
    entry, not the sync; events with one are refused by the parser already."""
    from syncd.reconcile.metadata import provider_part

    text = provider_part(None, {"a\x00": "1", "b": "2", "c": "x\x00"}, {"t": "\x00"})
    assert text == '{"provider": {"b": "2"}}'
    assert provider_part(True, {"k": "v"}, None) == (
        '{"provider": {"k": "v"}, "content_type_guessed": true}'
    )


def test_gcs_event_without_metadata_says_there_is_none() -> None:
    """The object resource lists custom metadata whenever there is some: its absence is "none"
    (``()``), not "unknown" (None), so a head-mode dataset does not HEAD the object for it."""
    resource = {"bucket": "bkt", "name": "k", "generation": "1", "size": "1", "etag": "e"}
    [event] = parse(gcs_message(resource)).events
    assert event.metadata == ()


def test_folder_watch_event_type_is_marked_guessed(catalog: Catalog, tmp_path: Path) -> None:
    """A folder watch's content type comes from the file's name: recorded as a guess."""
    root = tmp_path / "folder"
    root.mkdir()
    catalog.create_dataset("ds", str(root), _driver("local", str(root)), Filters())
    event = ObjectEvent(
        EventKind.CREATED,
        "local",
        str(root),
        "a/b.png",
        size=1,
        etag="1-2",
        content_type="image/png",
    )
    assert apply_events(catalog, [event], dataset="ds").counts["created"] == 1
    assert items(catalog) == {"a/b.png": ("image/png", {"content_type_guessed": True})}


def test_migration_0017_keeps_every_items_guess_as_it_was(catalogs: CatalogMaker) -> None:
    """Rows written before ``0017_content_type_rule`` marked every guess; after it an S3 or
    local row marks only a stated type (``false``), so the migration must turn the old
    marks into the new ones without changing what any item says, on both stores."""
    from providers.config import DriverConfig
    from syncd.store.catalog import Item
    from syncd.store.db import transaction
    from syncd.store.stamps import now

    before = {
        # (source type, key): stored metadata before 0017, public metadata after it
        ("s3", "guessed"): ('{"content_type_guessed": true}', {"content_type_guessed": True}),
        ("s3", "headed"): ("{}", {}),
        ("s3", "headed-meta"): ('{"provider": {"k": "v"}}', {"provider": {"k": "v"}}),
        ("s3", "guessed-meta"): (
            '{"provider": {"k": "v"}, "content_type_guessed": true}',
            {"provider": {"k": "v"}, "content_type_guessed": True},
        ),
        ("gcs", "stated"): ("{}", {}),
        ("gcs", "guessed"): ('{"content_type_guessed": true}', {"content_type_guessed": True}),
    }
    url = catalogs.new_url()
    catalog = Catalog.open(url)
    ids = {
        t: catalog.create_dataset(t, f"{t}://b/", DriverConfig(type=t, bucket="b"), Filters()).id
        for t in ("s3", "gcs")
    }
    with transaction(catalog.db):
        for (t, key), (stored, _) in before.items():
            catalog.write_items(
                ids[t],
                [
                    Item(
                        key,
                        "/" + key,
                        f"x://{key}",
                        1,
                        "e",
                        "a/b",
                        now(),
                        None,
                        now(),
                        now(),
                        stored,
                    )
                ],
            )
        catalog.db.execute("DELETE FROM _syncd_migrations WHERE name = '0017_content_type_rule'")
    catalog.close()
    with closing(Catalog.open(url)) as migrated:
        got = {
            (t, i.key): json.loads(i.metadata)
            for t, ds in ids.items()
            for i in migrated.iter_items(ds)
        }
        assert got == {k: public for k, (_, public) in before.items()}
        stored_now = dict(
            migrated.db.execute("SELECT key, metadata FROM items WHERE dataset_id = ?", [ids["s3"]])
        )
        assert stored_now["guessed"] == "{}"  # the mark every row carried is gone
