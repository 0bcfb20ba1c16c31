"""Random hostile keys through sync, events and pull (issue 12).

Keys (``tests.strategies.keys``): up to 1,024 bytes of UTF-8 with ``..``/``.``/empty segments,
control characters, ``%``, ``_``, ``*``, ``?``, ``[``, ``+``, backslashes, trailing slashes,
and a name beside its other Unicode normalisation form (NFC and NFD: two keys, both kept).

* **sync** on moto S3, into a sqlite and a PostgreSQL catalog: whatever keys the bucket holds,
  the dataset afterwards equals the bucket (keys, sizes, ETags) but for keys with a NUL byte,
  which no catalog can hold (skipped and counted; their events refused), then **events**
  change the bucket and the catalog follows them exactly, then **pull** writes every safe key's bytes under its name inside DIR and refuses and reports
  the rest: nothing is written outside DIR, and nothing raises.
* **sync** on a local folder, with the names the filesystem allows; a file name that is not
  UTF-8 (what a lone surrogate stands for on Linux) is skipped and reported, not synced.

One bucket serves each test, emptied between examples; each example has its own catalog.
"""

from __future__ import annotations

import itertools
import os
import unicodedata
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import syncd
from providers.local import TMP_SUFFIX
from syncd.events.apply import apply_events
from syncd.events.parse import EventFormatError, parse
from syncd.store.catalog import Catalog
from syncd.transfer.paths import UnsafePath, check_relative, is_folder_marker
from tests.conftest import CatalogMaker, dataset_state, unique_bucket
from tests.emulators import Emulator
from tests.strategies import keys, nfc_nfd_names
from tests.test_api_fuzz import s3_event

_examples = itertools.count()

key_sets = st.tuples(
    st.lists(keys, min_size=1, max_size=6, unique=True),
    st.lists(nfc_nfd_names, max_size=2),
).map(lambda t: sorted({*t[0], *(k for pair in t[1] for k in pair)}))


@pytest.fixture(scope="module")
def s3(moto: Emulator) -> Iterator[tuple[Any, str]]:
    """(a boto3 client, one bucket) with ``AWS_ENDPOINT_URL`` pointing the syncd side at moto."""
    client = boto3.client("s3", endpoint_url=moto.url)
    bucket = unique_bucket()
    client.create_bucket(Bucket=bucket)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ENDPOINT_URL", moto.url)
        yield client, bucket


def bucket_state(client: Any, bucket: str) -> dict[str, tuple[int, str]]:
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = (obj["Size"], obj["ETag"].strip('"'))
    return out


def empty(client: Any, bucket: str) -> None:
    for key in bucket_state(client, bucket):
        client.delete_object(Bucket=bucket, Key=key)


def put(client: Any, bucket: str, key: str) -> dict[str, Any] | None:
    """Put ``key`` (its own UTF-8 as the body); None if the service refuses the name (then no
    bucket holds it, and there is nothing to sync)."""
    from botocore.exceptions import ClientError

    try:
        return client.put_object(Bucket=bucket, Key=key, Body=key.encode())
    except ClientError:
        return None


def files(root: Path) -> dict[str, bytes]:
    """Every regular file under ``root`` (links not followed), by its path as a key."""
    out = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = Path(dirpath, name)
            if path.is_file() and not path.is_symlink():
                out[path.relative_to(root).as_posix()] = path.read_bytes()
    return out


def pull_is_safe(db: str, expected: dict[str, bytes], jail: Path) -> None:
    """Pull dataset ``ds`` into ``jail/out``: each key that passes the path rules lands there
    with its bytes or is reported failed (a name the filesystem refuses, a file where a folder
    is needed); the others are refused and reported; nothing else under ``jail`` changes."""
    out = jail / "out"
    (jail / "beside").mkdir(parents=True)
    (jail / "beside" / "keep.txt").write_bytes(b"keep")
    around = files(jail)
    result = syncd.pull("ds", str(out), db=db)
    assert {k: v for k, v in files(jail).items() if not k.startswith("out/")} == around
    reported = {key: kind for kind, key, _why in result.problems}
    written = files(out)
    for key, body in expected.items():
        if is_folder_marker(key):
            continue  # a folder, not a file: nothing to write (nor to refuse)
        try:
            check_relative(key)
        except UnsafePath:
            assert reported.get(key) == "refused", key
            continue
        assert written.get(key) == body or reported.get(key) == "failed", key
    # nothing but the dataset's own keys landed in DIR (no temp file, no other name)
    assert set(written) <= set(expected), set(written) - set(expected)


def storable(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` without the keys no catalog can hold (a NUL byte): a sync skips them."""
    return {k: v for k, v in state.items() if "\x00" not in k}


@settings(max_examples=20)
@given(key_sets, st.data())
def test_s3_keys_through_sync_events_and_pull(
    s3: tuple[Any, str],
    catalogs: CatalogMaker,
    tmp_path_factory: pytest.TempPathFactory,
    names: list[str],
    data: Any,
) -> None:
    """On sqlite and PostgreSQL alike: a key with a NUL byte is skipped and counted by the
    sync and refused as an event; every other key round-trips."""
    client, bucket = s3
    empty(client, bucket)
    work = tmp_path_factory.mktemp(f"keys-{next(_examples)}")
    db = catalogs.new_url()
    for key in names:
        put(client, bucket, key)
    before = bucket_state(client, bucket)
    run = syncd.sync(f"s3://{bucket}", dataset="ds", db=db)
    assert dataset_state(db) == storable(before)
    assert run.counts["skipped"] == len(before) - len(storable(before))

    # events: delete some keys, add others, and apply what S3 would notify
    gone = data.draw(st.lists(st.sampled_from(sorted(before)), unique=True), label="deleted")
    added = data.draw(st.lists(keys, max_size=3, unique=True), label="added")
    payloads = []
    for key in gone:
        client.delete_object(Bucket=bucket, Key=key)
        event = s3_event(bucket, key, complete=False)
        # moto sends no sequencer: the event's time orders it after the listing's mtime
        event["Records"][0] |= {
            "eventName": "ObjectRemoved:Delete",
            "eventTime": datetime.now(UTC).isoformat(),
        }
        payloads.append(event)
    for key in added:
        answer = put(client, bucket, key)
        if answer is not None:
            event = s3_event(bucket, key, complete=True)
            event["Records"][0]["s3"]["object"] |= {
                "size": len(key.encode()),
                "eTag": answer["ETag"].strip('"'),
            }
            event["Records"][0]["eventTime"] = datetime.now(UTC).isoformat()
            payloads.append(event)
    catalog = Catalog.open(db)
    try:
        for payload in payloads:
            try:
                events = parse(payload).events
            except EventFormatError as exc:
                assert "NUL byte" in str(exc)
                continue
            apply_events(catalog, events)
    finally:
        catalog.close()
    after = storable(bucket_state(client, bucket))
    assert dataset_state(db) == after

    pull_is_safe(db, {k: k.encode() for k in after}, work / "jail")


def test_nfc_and_nfd_of_one_name_are_two_objects_and_two_files(
    s3: tuple[Any, str], tmp_path: Path
) -> None:
    client, bucket = s3
    empty(client, bucket)
    nfc = unicodedata.normalize("NFC", "résumé/café.txt")
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfc != nfd
    for key in (nfc, nfd):
        put(client, bucket, key)
    db = str(tmp_path / "c.db")
    syncd.sync(f"s3://{bucket}", dataset="ds", db=db)
    assert set(dataset_state(db)) == {nfc, nfd}
    result = syncd.pull("ds", str(tmp_path / "out"), db=db)
    assert result.ok and files(tmp_path / "out") == {nfc: nfc.encode(), nfd: nfd.encode()}


# -- local folders -------------------------------------------------------------------------


def write_tree(root: Path, names: list[str]) -> dict[str, int]:
    """Create the files the filesystem allows; {key: size} of those the folder then holds."""
    for key in names:
        parts = key.split("/")
        if key.endswith("/") or any(p in ("", ".", "..") for p in parts) or "\x00" in key:
            continue  # not a file name a folder can hold
        path = root.joinpath(*parts)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(key.encode())
        except OSError:
            continue  # too long, or a file where a folder is needed (a/b beside a)
    return {
        key: len(body)
        for key, body in files(root).items()
        if not key.rsplit("/", 1)[-1].endswith(TMP_SUFFIX)
    }


@settings(max_examples=50)
@given(key_sets, st.binary(min_size=1, max_size=6).filter(lambda b: b"/" not in b))
def test_local_folder_keys_through_sync_and_pull(
    tmp_path_factory: pytest.TempPathFactory, names: list[str], raw: bytes
) -> None:
    work = tmp_path_factory.mktemp(f"folder-{next(_examples)}")
    src = work / "src"
    src.mkdir()
    expected = write_tree(src, names)
    # a file name that is not UTF-8 (os.listdir hands it back with a lone surrogate)
    undecodable = os.fsencode(src) + b"/bad\xff" + raw.replace(b"\x00", b"")
    with open(undecodable, "wb") as handle:
        handle.write(b"x")
    db = str(work / "c.db")
    run = syncd.sync(str(src), dataset="ds", db=db)
    state = dataset_state(db)
    assert {k: size for k, (size, _etag) in state.items()} == expected
    assert run.counts["skipped"] == 1  # the undecodable name, reported
    pull_is_safe(db, {k: k.encode() for k in expected}, work / "jail")
