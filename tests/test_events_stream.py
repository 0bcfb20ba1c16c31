"""``syncd events apply`` reads JSON lines as a stream and applies them in batches."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from providers.config import DriverConfig
from syncd.events.apply import EventApplier
from syncd.events.parse import EventFormatError, Parsed, parse_text
from syncd.events.stream import Refused, read_payloads
from syncd.reconcile.filters import Filters
from syncd.store.catalog import Catalog
from tests.conftest import catalog_state
from tests.test_events_parse import SAMPLES
from tests.test_sync_cli import syncd


def s3_line(*keys: str) -> bytes:
    records = [
        {
            "eventSource": "aws:s3",
            "eventName": "ObjectCreated:Put",
            "eventTime": "2026-11-20T10:00:00.000Z",
            "s3": {
                "bucket": {"name": "bkt"},
                "object": {"key": key, "size": 3, "eTag": "e", "sequencer": "0A"},
            },
        }
        for key in keys
    ]
    return json.dumps({"Records": records}).encode() + b"\n"


def test_json_lines_are_read_one_line_at_a_time() -> None:
    read: list[int] = []

    def lines() -> Iterator[bytes]:
        for i in range(5):
            read.append(i)
            yield s3_line(f"k{i}")
        raise AssertionError("read past what was asked for")

    stream = read_payloads(lines())
    assert [e.key for e in next(stream).events] == ["k0"]
    assert [e.key for e in next(stream).events] == ["k1"]
    assert read == [0, 1]  # nothing read ahead of what was parsed


@pytest.mark.parametrize(
    "sample", ["s3-put.json", "azure-eventgrid-created.json", "gcs-pubsub-overwrite-delete.json"]
)
def test_a_multi_line_payload_parses_as_a_whole(sample: str) -> None:
    text = (SAMPLES / sample).read_bytes()
    pretty = json.dumps(json.loads(text), indent=2).encode()
    assert b"\n" in pretty
    parsed = list(read_payloads(pretty.splitlines(keepends=True)))
    assert len(parsed) == 1
    assert parsed[0].events == parse_text(text).events


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"", "not valid JSON"),
        (b"\n  \n", "not valid JSON"),
        (b"{not json\n", "not valid JSON"),
        (b"{not json\n[1,\n", "not valid JSON"),
        (b'{"Records": [\xff]}\n  \n', "not UTF-8"),
    ],
)
def test_input_with_no_record_to_read_says_what_parse_text_says(text: bytes, message: str) -> None:
    with pytest.raises(EventFormatError, match=message):
        list(read_payloads(text.splitlines(keepends=True)))


def outcome(items: list[Parsed | Refused]) -> list[str]:
    """Each record read: its keys, or ``refused <position>``."""
    return [
        f"refused {r.position}" if isinstance(r, Refused) else ",".join(e.key for e in r.events)
        for r in items
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (s3_line("a") + b"\n" + s3_line("b") + b"{oops\n", ["a", "b", "refused line 3"]),
        (s3_line("a") + b"\xff\n" + s3_line("c"), ["a", "refused line 2", "c"]),
        (b"{oops\n" + s3_line("b"), ["refused line 1", "b"]),  # a broken first line
        (b"\xff\n" + s3_line("b"), ["refused line 1", "b"]),  # a first line not UTF-8
        (
            json.dumps([[[json.loads(s3_line("a"))]] * 2, json.loads(s3_line("b"))]).encode(),
            ["a,a", "b"],  # arrays in an array: parsed whole
        ),
        (
            json.dumps({"Records": [*json.loads(s3_line("a"))["Records"], {"s3": {}}]}).encode(),
            ["a", "refused line 1, record 2"],
        ),
        (
            json.dumps([json.loads(s3_line("a")), 7, json.loads(s3_line("b"))], indent=1).encode(),
            ["a", "refused item 2", "b"],
        ),
    ],
    ids=[
        "bad-json-line",
        "not-utf8-line",
        "bad-first-line",
        "not-utf8-first-line",
        "nested-arrays",
        "bad-record",
        "bad-array-item",
    ],
)
def test_a_bad_record_is_refused_alone(text: bytes, expected: list[str]) -> None:
    assert outcome(list(read_payloads(text.splitlines(keepends=True)))) == expected


def test_records_after_a_bad_line_are_applied(tmp_path: Path) -> None:
    catalog = Catalog.open(str(tmp_path / "c.db"))
    catalog.create_dataset("ds", "s3://bkt/", DriverConfig(type="s3", bucket="bkt"), Filters())
    lines = [s3_line("a", "b"), s3_line("c"), b"{oops\n", s3_line("d")]
    refused = []

    def events():
        for parsed in read_payloads(lines):
            if isinstance(parsed, Refused):
                refused.append(str(parsed))
            else:
                yield from parsed.events

    committed = [
        result.as_dict()["created"]
        for result in EventApplier(catalog).apply_stream(events(), batch_size=2)
    ]
    assert committed == [2, 2]
    assert refused == ["line 3: not valid JSON: Expecting property name enclosed in double quotes"]
    assert sorted(catalog_state(catalog)) == ["a", "b", "c", "d"]
    catalog.close()


def test_cli_applies_json_lines_and_names_the_bad_line(tmp_path: Path) -> None:
    db = str(tmp_path / "c.db")
    catalog = Catalog.open(db)
    catalog.create_dataset("ds", "s3://bkt/", DriverConfig(type="s3", bucket="bkt"), Filters())
    catalog.close()
    good = tmp_path / "good.jsonl"
    good.write_bytes(s3_line("a", "b") + b"\n" + s3_line("c"))
    proc = syncd("events", "apply", str(good), "--db", db, "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["events"] == 3 and out["applied"]["created"] == 3 and out["refused"] == 0
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(s3_line("d") + b"[1, 2\n" + s3_line("e"))
    proc = syncd("events", "apply", str(bad), "--db", db, "--json")
    assert proc.returncode == 1, proc.stderr
    summary, error = map(json.loads, proc.stdout.splitlines())  # --json: the failure too
    assert summary["refused"] == 1 and "refused" in error["error"]
    first, last = proc.stderr.strip().splitlines()
    assert "bad.jsonl: line 2: not valid JSON" in first
    assert "1 record(s) refused" in last and "Traceback" not in proc.stderr
    catalog = Catalog.open(db)
    assert sorted(catalog_state(catalog)) == ["a", "b", "c", "d", "e"]
    catalog.close()


def test_cli_counts_every_skipped_record_and_names_the_first_hundred(tmp_path: Path) -> None:
    """A file of many skipped records (test events) keeps memory bounded: the reasons listed
    stop at SKIPPED_SHOWN, the count does not."""
    from syncd.cli import SKIPPED_SHOWN

    db = str(tmp_path / "c.db")
    Catalog.open(db).close()
    test_event = json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "b"})
    lines = tmp_path / "tests.jsonl"
    lines.write_text("\n".join([test_event] * (SKIPPED_SHOWN + 50)) + "\n")
    proc = syncd("events", "apply", str(lines), "--db", db, "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["skipped_total"] == SKIPPED_SHOWN + 50 and out["events"] == 0
    assert out["skipped"] == ["s3:TestEvent"] * SKIPPED_SHOWN
    proc = syncd("events", "apply", str(lines), "--db", db)
    assert f"skipped {SKIPPED_SHOWN + 50};" in proc.stdout
