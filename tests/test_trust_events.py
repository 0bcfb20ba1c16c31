"""Issue 21: keys no catalog can hold, event keys over the provider's limit, per-record errors
of ``syncd events apply``, and the serverless handlers' failure paths.

Every test here failed on 055b6dc (see each docstring for what it produced there).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from providers.config import DriverConfig
from syncd.events.parse import EventFormatError, parse
from syncd.reconcile.filters import Filters
from syncd.store.catalog import Catalog
from tests.conftest import CatalogMaker, catalog_state
from tests.emulators import Emulator
from tests.test_events_parse import SAMPLES
from tests.test_sync_cli import syncd


@pytest.fixture
def s3(moto: Emulator) -> Iterator[tuple[Any, str]]:
    """(a boto3 client, a fresh bucket), with ``AWS_ENDPOINT_URL`` set for syncd."""
    client = boto3.client("s3", endpoint_url=moto.url)
    bucket = f"nul-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=bucket)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ENDPOINT_URL", moto.url)
        yield client, bucket


def sync_json(source: str, db: str, *extra: str) -> tuple[int, dict[str, Any], str]:
    """``syncd sync SOURCE --dataset n --json``: (exit code, its summary, its stderr)."""
    proc = syncd("sync", source, "--dataset", "n", "--db", db, "--json", *extra)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    found = next((line["summary"] for line in lines if "summary" in line), {})
    return proc.returncode, found, proc.stderr


# -- 1. a NUL byte in a key -----------------------------------------------------------------


def test_a_listed_key_with_a_nul_byte_is_skipped_and_counted_on_both_stores(
    s3: tuple[Any, str], catalogs: CatalogMaker
) -> None:
    """On 055b6dc PostgreSQL failed every run with ``internal error: DataError`` (sqlite
    stored the key, so the two stores disagreed)."""
    client, bucket = s3
    for key in ("a.txt", "bad\x00key", "z/\x00", "z/ok"):
        client.put_object(Bucket=bucket, Key=key, Body=b"x")
    db = catalogs.new_url()
    for _run in range(2):  # the next run is not wedged either
        code, summary, err = sync_json(f"s3://{bucket}", db)
        assert code == 0, err
        assert summary["skipped"] == 2 and summary["listed"] == 2, summary
        assert err.count("NUL byte in the key: no catalog can hold it") == 2, err
        assert "\x00" not in err  # the key is shown escaped
    catalog = Catalog.open(db)
    try:
        assert sorted(catalog_state(catalog, "n")) == ["a.txt", "z/ok"]
    finally:
        catalog.close()


def test_a_split_run_does_not_cut_at_a_folder_with_a_nul_byte(
    s3: tuple[Any, str], postgres_url: str
) -> None:
    """A first split run cuts at the folders under the path: on 055b6dc the folder
    ``b\\x00/`` became a range bound the catalog could not store (``DataError``)."""
    client, bucket = s3
    for key in ("a/1", "b\x00/2", "c/3", "d/4"):
        client.put_object(Bucket=bucket, Key=key, Body=b"x")
    code, summary, err = sync_json(f"s3://{bucket}", postgres_url, "--ranges", "4")
    assert code == 0, err
    assert summary["skipped"] == 1, summary
    catalog = Catalog.open(postgres_url)
    try:
        assert sorted(catalog_state(catalog, "n")) == ["a/1", "c/3", "d/4"]
    finally:
        catalog.close()


def s3_event(key: str, bucket: str = "bkt") -> dict[str, Any]:
    """An S3 notification creating ``key`` (form-encoded as S3 writes it)."""
    from urllib.parse import quote_plus

    return {
        "Records": [
            {
                "eventSource": "aws:s3",
                "eventName": "ObjectCreated:Put",
                "eventTime": "2026-11-20T10:00:00.000Z",
                "s3": {
                    "bucket": {"name": bucket},
                    "object": {
                        "key": quote_plus(key, safe="/"),
                        "size": 3,
                        "eTag": "e",
                        "sequencer": "0A",
                    },
                },
            }
        ]
    }


@pytest.mark.parametrize(
    "payload",
    [
        s3_event("bad\x00key"),
        # the bucket, the ETag: every text field goes to the catalog
        json.loads(json.dumps(s3_event("k")).replace('"bkt"', '"b\\u0000kt"')),
        json.loads(json.dumps(s3_event("k")).replace('"eTag": "e"', '"eTag": "e\\u0000"')),
    ],
    ids=["key", "bucket", "etag"],
)
def test_an_event_with_a_nul_byte_is_refused(payload: dict[str, Any]) -> None:
    """On 055b6dc it parsed, and applying it failed on PostgreSQL with ``DataError``."""
    with pytest.raises(EventFormatError, match="NUL byte"):
        parse(payload)


def test_events_apply_refuses_a_nul_key_record_on_postgresql(
    tmp_path: Path, postgres_url: str
) -> None:
    """The record is refused by position, the others applied, exit 1: on 055b6dc the run
    died with ``internal error: DataError`` and applied nothing."""
    catalog = Catalog.open(postgres_url)
    catalog.create_dataset("ds", "s3://bkt/", DriverConfig(type="s3", bucket="bkt"), Filters())
    catalog.close()
    lines = tmp_path / "events.jsonl"
    lines.write_text("\n".join(json.dumps(s3_event(k)) for k in ("a", "bad\x00key", "c")))
    proc = syncd("events", "apply", str(lines), "--db", postgres_url, "--json")
    assert proc.returncode == 1, proc.stderr
    assert json.loads(proc.stdout)["refused"] == 1
    assert "line 2" in proc.stderr and "NUL byte" in proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    catalog = Catalog.open(postgres_url)
    try:
        assert sorted(catalog_state(catalog)) == ["a", "c"]
    finally:
        catalog.close()


# -- 3. one bad record does not refuse the file ---------------------------------------------


def test_a_bad_line_is_refused_alone_and_reading_stays_lazy() -> None:
    """On 055b6dc the bad line raised: the lines after it were never read or applied."""
    from syncd.events.stream import Refused, read_payloads

    read: list[int] = []

    def lines() -> Iterator[bytes]:
        for i in range(4):
            read.append(i)
            yield b"{oops\n" if i == 1 else json.dumps(s3_event(f"k{i}")).encode() + b"\n"
        raise AssertionError("read past what was asked for")

    stream = read_payloads(lines())
    assert [e.key for e in next(stream).events] == ["k0"]
    refused = next(stream)
    assert isinstance(refused, Refused) and refused.position == "line 2"
    assert read == [0, 1]  # nothing read ahead of what was parsed
    assert [e.key for e in next(stream).events] == ["k2"]
    assert read == [0, 1, 2]


def test_events_apply_applies_the_records_beside_a_bad_one(tmp_path: Path) -> None:
    """One pretty-printed payload whose second record is malformed: the first and third are
    applied, the second named (``record 2``), exit 1. On 055b6dc: exit 2, nothing applied."""
    db = str(tmp_path / "c.db")
    catalog = Catalog.open(db)
    catalog.create_dataset("ds", "s3://bkt/", DriverConfig(type="s3", bucket="bkt"), Filters())
    catalog.close()
    records = [s3_event(k)["Records"][0] for k in ("a", "b", "c")]
    records[1] = {**records[1], "s3": {"bucket": {"name": "bkt"}}}  # no object
    payload = tmp_path / "events.json"
    payload.write_text(json.dumps({"Records": records}, indent=2))
    proc = syncd("events", "apply", str(payload), "--db", db)
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 2 and "events.json: record 2: missing field s3.object" in err[0], err
    assert err[1].startswith("syncd: error: ") and "1 record(s) refused" in err[1]
    assert "refused 1" in proc.stdout
    catalog = Catalog.open(db)
    try:
        assert sorted(catalog_state(catalog)) == ["a", "c"]
    finally:
        catalog.close()
