"""The S3 record short-cut of the event parser decides exactly what the checked path decides.

``syncd.events.parse.records`` parses a ``Records`` list with ``_s3_fast`` for the plain S3
record (ASCII text, a key with nothing to decode, a whole-number size) and the full
``_s3_record`` for the rest. For any record, hypothesis checks that ``records([rec])`` gives
the events, skip reasons or error message that ``parse_record(rec)`` (the checked path alone)
gives; and that the short-cut is taken for the plain records, so the comparison tests it.
Also: ``syncd events apply``, which turns the cyclic garbage collector off while it applies,
turns it back on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from syncd.events import parse
from syncd.events.parse import EventFormatError, records

#: plain text, the short-cut's case
PLAIN = st.sampled_from(["a", "raw/x.jpg", "k" * 1024, "d0001/obj-00000001.bin"])
#: any text field: plain ASCII, empty, non-ASCII, a lone surrogate, a NUL, things to decode
TEXT = st.one_of(
    PLAIN,
    st.sampled_from(["", "ü", "a%20b", "a+b", "%ff", "\ud800", "a\x00b", "k" * 1025]),
    st.text(max_size=12),
    st.text(alphabet="ab/.%+", max_size=8),
    st.integers(-1, 2),
    st.none(),
)
SIZE = st.one_of(
    st.integers(0, 100),
    st.none(),
    st.integers(-2, 5),
    st.just(2**63 - 1),
    st.just(2**63),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["", "12", "-1", "１"]),
)
#: where a record can differ from the plain one: (path to the field, values it can take);
#: a value of ``DROP`` removes the field
DROP = object()
FIELDS: list[tuple[tuple[str, ...], st.SearchStrategy]] = [
    (("s3", "object", "key"), st.one_of(TEXT, st.just(DROP))),
    (("s3", "bucket", "name"), st.one_of(TEXT, st.just(DROP))),
    (("s3", "object", "size"), st.one_of(SIZE, st.just(DROP))),
    (("s3", "object", "eTag"), st.one_of(TEXT, st.just(DROP))),
    (("s3", "object", "etag"), TEXT),
    (("s3", "object", "sequencer"), st.sampled_from(["", "zz", "a" * 65, 7, None, " 0b ", DROP])),
    (("eventName",), st.sampled_from(["ObjectRemoved:Delete", "ObjectRestore:Post", "", 3, DROP])),
    (("eventTime",), st.sampled_from(["2026-11-20T10:00:00Z", "soon", "", 5, None, DROP])),
    (("responseElements",), st.sampled_from([{"x-amz-request-id": "r1"}, {}, None])),
    (("eventSource",), st.sampled_from(["aws:s3", "aws:sqs"])),
    (("s3", "object"), st.sampled_from([None, [], "x"])),
    (("s3", "bucket"), st.sampled_from([None, {}, "b"])),
    (("s3",), st.sampled_from([None, {}, "b"])),
]


@st.composite
def s3_records(draw: st.DrawFn) -> Any:
    """A plain S3 record (the short-cut's case) with up to three fields changed, or no record
    at all."""
    if draw(st.integers(0, 20)) == 0:
        return draw(st.one_of(st.none(), st.integers(), st.lists(st.integers(), max_size=2)))
    rec: dict[str, Any] = {
        "eventName": draw(st.sampled_from(["ObjectCreated:Put", "ObjectCreated:Copy"])),
        "eventTime": "2026-11-20T10:00:00.000Z",
        "s3": {
            "bucket": {"name": draw(PLAIN)},
            "object": {
                "key": draw(PLAIN),
                "size": draw(st.integers(0, 100)),
                "eTag": draw(PLAIN),
                "sequencer": "0A",
            },
        },
    }
    for path, values in draw(st.lists(st.sampled_from(FIELDS), max_size=3)):
        where = rec
        for part in path[:-1]:
            if not isinstance(where.get(part), dict):
                break
            where = where[part]
        else:
            value = draw(values)
            if value is DROP:
                where.pop(path[-1], None)
            else:
                where[path[-1]] = value
    return rec


def outcome(parser: Any, value: Any) -> tuple[Any, ...]:
    try:
        parsed = parser(value)
    except EventFormatError as exc:
        return ("refused", str(exc))
    return (parsed.events, parsed.skipped, parsed.validation_code)


@settings(max_examples=1500, deadline=None)
@given(s3_records())
def test_the_short_cut_decides_what_the_checked_parser_decides(rec: Any) -> None:
    assert outcome(records, [rec]) == outcome(parse.parse_record, rec)


def test_the_short_cut_is_taken_for_a_plain_record() -> None:
    rec = {
        "eventName": "ObjectCreated:Put",
        "eventTime": "2026-11-20T10:00:00.000Z",
        "s3": {
            "bucket": {"name": "bkt"},
            "object": {"key": "raw/a.jpg", "size": 3, "eTag": "e1", "sequencer": "0A"},
        },
    }
    fast = parse._s3_fast(rec)
    assert fast is not None
    assert [fast] == parse.parse_record(rec).events
    assert records([rec, rec]).events == [fast, fast]


def test_events_apply_in_process_leaves_the_garbage_collector_on(tmp_path: Path) -> None:
    """``syncd events apply`` turns the cyclic collector off while it applies (it collects
    each batch's young objects itself); whoever runs the command in-process (a script through
    ``syncd.cli.main``) gets it back on, after a good input and after a refused one."""
    import gc
    import json

    from providers.config import DriverConfig
    from syncd.cli import main
    from syncd.reconcile.filters import Filters
    from syncd.store.catalog import Catalog

    db = tmp_path / "c.db"
    catalog = Catalog.open(str(db))
    catalog.create_dataset("ds", "s3://bkt/", DriverConfig(type="s3", bucket="bkt"), Filters())
    catalog.close()
    rec = {
        "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": "bkt"}, "object": {"key": "a", "size": 1, "eTag": "e"}},
    }
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"Records": [rec]}) + "\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    assert gc.isenabled()
    for path, code in ((good, 0), (bad, 2)):
        try:
            main(["events", "apply", str(path), "--db", str(db)])
            exit_code = 0
        except SystemExit as exc:
            exit_code = exc.code or 0
        assert exit_code == code
        assert gc.isenabled()
    catalog = Catalog.open(str(db))
    assert [i.key for i in catalog.iter_items(catalog.get_dataset("ds").id)] == ["a"]
    catalog.close()
