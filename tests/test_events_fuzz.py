"""Hostile and malformed event payloads (issues 8, 10, 12): every input is either parsed *and
applies to a catalog* or is rejected with ``EventFormatError``; never a ``TypeError``,
``KeyError``, ``RecursionError``, ``OverflowError``, a sqlite binding error...

Inputs: random JSON values and bytes; each fixture payload (``tests/fixtures/events``) with one
part replaced by a random or hostile value or removed, inside the JSON text of SQS bodies and
SNS messages and the base64 of Pub/Sub data too, bare and wrapped in the other envelopes; event
times across the calendar; events naming random keys (which must come back exactly); Azure
Storage Queue bodies; and the serverless handlers' entry points with such payloads.

Example counts are bounded and the runs derandomized (the ``syncd`` profile of
``tests/conftest.py``), so the file takes well under a minute.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import json
import logging
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from providers.config import DriverConfig
from syncd.daemon.queues.azure_queue import decode_body
from syncd.events.apply import apply_events
from syncd.events.parse import (
    MAX_INT,
    EventFormatError,
    ObjectEvent,
    Parsed,
    parse,
    parse_record,
    parse_text,
)
from syncd.reconcile.filters import Filters
from syncd.store.catalog import Catalog
from tests.strategies import (
    DELETE,
    Embedded,
    deletable,
    hostile_values,
    json_values,
    keys,
    mutated,
    positions,
    surrogate_keys,
)

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "events"
PAYLOADS = {
    p.name: json.loads(p.read_text(encoding="utf-8")) for p in sorted(FIXTURES.glob("*.json"))
}
#: every bucket the fixtures name, as a dataset of the whole bucket: every event routes
BUCKETS = {
    "s3": DriverConfig(type="s3", bucket="acme-images"),
    "gcs": DriverConfig(type="gcs", bucket="acme-images-gcs"),
    "azure": DriverConfig(type="azure", bucket="images", account="acmestore"),
}


def make_catalog(path: str) -> Catalog:
    catalog = Catalog.open(path)
    for name, cfg in BUCKETS.items():
        scheme = {"s3": "s3", "gcs": "gs", "azure": "az"}[name]
        catalog.create_dataset(name, f"{scheme}://{cfg.bucket}/", cfg, Filters())
    return catalog


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Catalog]:
    """One catalog for a test's examples (emptied before each: a marker left by one example
    would make the next one's events stale, and stale events are never written)."""
    catalog = make_catalog(str(tmp_path_factory.mktemp("fuzz") / "c.db"))
    # the unrouted-bucket warning would print once per mutated bucket name
    logging.getLogger("syncd.events").setLevel(logging.ERROR)
    yield catalog
    catalog.close()


def emptied(catalog: Catalog) -> Catalog:
    for table in ("items", "key_markers", "unrouted_events"):
        catalog.db.execute(f"DELETE FROM {table}")
    return catalog


def check_event(event: ObjectEvent) -> None:
    """What the catalog will store: text that encodes, sizes sqlite can hold."""
    for text in (event.bucket, event.key):
        assert isinstance(text, str) and text
        text.encode("utf-8")
    for text in (event.etag, event.content_type, event.version, event.account, event.event_id):
        assert text is None or isinstance(text, str)
        if text is not None:
            text.encode("utf-8")
    assert event.size is None or (type(event.size) is int and 0 <= event.size <= MAX_INT)


def applied(catalog: Catalog, parsed: Parsed) -> None:
    for event in parsed.events:
        check_event(event)
    apply_events(emptied(catalog), parsed.events)


def must_parse_or_reject(payload: Any, catalog: Catalog | None = None) -> Parsed | None:
    """Parse ``payload`` as data and as text; what parses must apply. None if rejected."""
    result = None
    with contextlib.suppress(EventFormatError):
        result = parse(payload)
        if catalog is not None:
            applied(catalog, result)
    try:
        text = json.dumps(payload, ensure_ascii=False).encode("utf-8", "surrogatepass")
    except (TypeError, ValueError):
        return result
    with contextlib.suppress(EventFormatError):
        parsed = parse_text(text)
        if catalog is not None:
            applied(catalog, parsed)
    return result


mutations = json_values | hostile_values | st.just(DELETE)


@settings(max_examples=300)
@given(json_values)
def test_random_json(value: Any) -> None:
    must_parse_or_reject(value)


@settings(max_examples=800)
@given(st.sampled_from(sorted(PAYLOADS)), st.data(), mutations)
def test_mutated_payloads(catalog: Catalog, name: str, data: st.DataObject, new: Any) -> None:
    payload = PAYLOADS[name]
    where = data.draw(st.sampled_from(positions(payload)), label="position")
    if new is DELETE and not deletable(where):
        new = None
    must_parse_or_reject(mutated(payload, where, new), catalog)


def sns(payload: Any) -> dict[str, Any]:
    return {"Type": "Notification", "MessageId": "m-1", "Message": json.dumps(payload)}


def sqs(payload: Any) -> dict[str, Any]:
    body = json.dumps(payload)
    return {"Records": [{"eventSource": "aws:sqs", "messageId": "q-1", "body": body}]}


def sns_record(payload: Any) -> dict[str, Any]:
    return {"Records": [{"EventSource": "aws:sns", "Sns": {"Message": json.dumps(payload)}}]}


ENVELOPES = {"sns": sns, "sqs": sqs, "sns-record": sns_record, "sqs(sns)": lambda p: sqs(sns(p))}


@settings(max_examples=300)
@given(
    st.sampled_from(sorted(PAYLOADS)),
    st.sampled_from(sorted(ENVELOPES)),
    st.data(),
    mutations,
)
def test_mutated_payloads_in_envelopes(
    catalog: Catalog, name: str, envelope: str, data: st.DataObject, new: Any
) -> None:
    """A payload wrapped the way SNS and SQS deliver it, then one part of the whole changed
    (the envelope's own fields included)."""
    wrapped = ENVELOPES[envelope](PAYLOADS[name])
    where = data.draw(st.sampled_from(positions(wrapped)), label="position")
    if new is DELETE and not deletable(where):
        new = None
    must_parse_or_reject(mutated(wrapped, where, new), catalog)


@settings(max_examples=200)
@given(st.binary(max_size=200) | st.text(max_size=200))
def test_random_bytes_and_text(raw: bytes | str) -> None:
    with contextlib.suppress(EventFormatError):
        parse_text(raw)


@settings(max_examples=150)
@given(st.sampled_from(sorted(PAYLOADS)), st.datetimes(timezones=st.timezones()))
def test_event_times_across_the_calendar(catalog: Catalog, name: str, when: datetime) -> None:
    """Every time field set to a time from year 1 to 9999 in any zone (some overflow once
    moved to UTC: malformed, not an ``OverflowError``)."""
    payload = PAYLOADS[name]
    stamp = when.isoformat()
    for where in positions(payload):
        if where and where[-1] in ("eventTime", "time", "timestamp", "updated"):
            payload = mutated(payload, where, stamp)
    must_parse_or_reject(payload, catalog)


def test_deep_nesting_is_malformed() -> None:
    deep = "[" * 100_000
    for text in (deep, '{"a":' * 50_000 + "1" + "}" * 50_000):
        with pytest.raises(EventFormatError, match="nested too deeply"):
            parse_text(text)
    # the same inside an SQS body or an SNS message, handed over as data (the Lambda path)
    for payload in (sqs(0), sns(0)):
        inner = "Message" if "Message" in payload else None
        if inner:
            payload[inner] = deep
        else:
            payload["Records"][0]["body"] = deep
        with pytest.raises(EventFormatError, match="nested too deeply"):
            parse(payload)


# -- keys named by events -------------------------------------------------------------------


def _subject(key: str) -> str:
    return f"/blobServices/default/containers/images/blobs/{key}"


def _blob_url(key: str) -> str:
    return f"https://acmestore.blob.core.windows.net/images/{quote(key, errors='surrogatepass')}"


#: where each fixture names its object, and how that format writes a key there
KEY_FIELDS: dict[str, list[tuple[tuple[Any, ...], Any]]] = {
    # S3 notifications form-encode keys (a space is "+", a "+" is "%2B")
    "s3-put.json": [
        (
            ("Records", 0, "s3", "object", "key"),
            lambda k: quote_plus(k, safe="/", errors="surrogatepass"),
        )
    ],
    "s3-delete.json": [
        (
            ("Records", 0, "s3", "object", "key"),
            lambda k: quote_plus(k, safe="/", errors="surrogatepass"),
        )
    ],
    "eventbridge-object-created.json": [(("detail", "object", "key"), str)],
    "gcs-cloudevent-finalized.json": [(("data", "name"), str)],
    "gcs-pubsub-pull-message.json": [
        (("attributes", "objectId"), str),
        (("data", Embedded(True), "name"), str),
    ],
    "azure-eventgrid-created.json": [((0, "subject"), _subject), ((0, "data", "url"), _blob_url)],
    "azure-cloudevent-created.json": [(("subject",), _subject), (("data", "url"), _blob_url)],
}
KEYED = sorted(KEY_FIELDS)


def with_key(name: str, key: str) -> Any:
    """Fixture ``name`` with its object renamed to ``key``, written as that format writes it."""
    payload = PAYLOADS[name]
    for where, encode in KEY_FIELDS[name]:
        payload = mutated(payload, where, encode(key))
    return payload


@settings(max_examples=300)
@given(st.sampled_from(KEYED), keys)
def test_events_name_any_key_exactly(catalog: Catalog, name: str, key: str) -> None:
    """A random key (up to 1,024 bytes: ``..``, ``%``, ``+``, control characters, NFD...)
    comes out of every format exactly as it went in, and applies to the catalog under it; a
    key with a NUL byte is refused (no catalog can hold it, so a sync skips it too)."""
    if "\x00" in key:
        with pytest.raises(EventFormatError, match="NUL byte"):
            parse(with_key(name, key))
        return
    parsed = parse(with_key(name, key))
    assert [e.key for e in parsed.events] == [key]
    applied(catalog, parsed)
    dataset = {"s3": "s3", "gcs": "gcs", "azure": "azure"}[parsed.events[0].provider]
    stored = [i.key for i in catalog.iter_items(catalog.get_dataset(dataset).id)]
    assert stored == ([key] if parsed.events[0].kind.value == "created" else [])


@settings(max_examples=150)
@given(st.sampled_from(KEYED), surrogate_keys)
def test_events_naming_a_lone_surrogate_are_malformed(name: str, key: str) -> None:
    """No bucket holds such a key (it has no UTF-8): the event is rejected, as data and as
    the text a sender escaping it with ``\\ud800`` would send."""
    payload = with_key(name, key)
    with pytest.raises(EventFormatError, match=r"surrogate|UTF-8"):
        parse(payload)
    with pytest.raises(EventFormatError, match=r"surrogate|UTF-8"):
        parse_text(json.dumps(payload))


@pytest.mark.parametrize(
    "encoded", ["%FF.jpg", "a%ED%A0%80b", "%C3", "%e9t%e9.txt"], ids=lambda s: s.replace("%", "")
)
def test_s3_keys_that_do_not_decode_to_utf8_are_malformed(encoded: str) -> None:
    """Replacing bad bytes with U+FFFD would name another object: refuse instead."""
    payload = mutated(PAYLOADS["s3-put.json"], ("Records", 0, "s3", "object", "key"), encoded)
    with pytest.raises(EventFormatError, match="does not decode to UTF-8"):
        parse(payload)


@pytest.mark.parametrize(
    ("size", "message"),
    [(2**63, "out of range"), (-1, "out of range"), (1.5, "malformed"), (True, "malformed")],
)
def test_sizes_the_catalog_cannot_hold_are_malformed(size: Any, message: str) -> None:
    payload = mutated(PAYLOADS["s3-put.json"], ("Records", 0, "s3", "object", "size"), size)
    with pytest.raises(EventFormatError, match=message):
        parse(payload)


# -- queue bodies and handler entry points --------------------------------------------------


@settings(max_examples=200)
@given(
    st.binary(max_size=300)
    | st.text(max_size=300)
    | st.sampled_from(sorted(PAYLOADS)).map(lambda n: json.dumps(PAYLOADS[n]))
    | st.sampled_from(sorted(PAYLOADS)).map(
        lambda n: base64.b64encode(json.dumps(PAYLOADS[n]).encode()).decode()
    ),
    st.integers(0, 400),
    st.binary(max_size=4),
)
def test_azure_queue_bodies(catalog: Catalog, body: bytes | str, cut: int, junk: bytes) -> None:
    """Azure Storage Queue messages, plain or base64, whole, cut short or with bytes spliced
    in: decoded, then parsed or rejected."""
    raw = body.encode() if isinstance(body, str) else body
    raw = raw[:cut] + junk + raw[cut:] if junk else raw
    with contextlib.suppress(EventFormatError):
        applied(catalog, parse_text(decode_body(raw)))


@pytest.fixture(scope="module")
def handler_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("handlers") / "c.db")
    make_catalog(path).close()
    return path


@pytest.fixture(scope="module")
def handler_env(handler_db: str) -> Iterator[str]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SYNCD_DB", handler_db)
        mp.delenv("SYNCD_API_URL", raising=False)
        mp.delenv("SYNCD_API_TOKEN_SECRET_ARN", raising=False)
        yield handler_db


@settings(max_examples=150)
@given(st.data(), mutations, st.sampled_from([0, 1]))
def test_lambda_handler_with_mutated_batches(
    handler_env: str, data: st.DataObject, new: Any, which: int
) -> None:
    """An SQS batch with one record mutated: the handler never raises, and reports exactly the
    records it could not parse in ``batchItemFailures``."""
    from functions.aws_lambda import handler

    batch = PAYLOADS["sqs-batch.json"]
    record = data.draw(st.sampled_from(positions(batch["Records"][which])), label="position")
    if new is DELETE and not deletable(record):
        new = None
    event = mutated(batch, ("Records", which, *record), new)
    try:
        result = handler(event, None)
    except EventFormatError:
        # the record no longer says it came from SQS: a direct payload, rejected by raising
        mutant = event["Records"][which]
        assert not isinstance(mutant, dict) or mutant.get("eventSource") != "aws:sqs"
        return
    if "batchItemFailures" not in result:
        assert "applied" in result  # no longer an SQS batch: delivered as a direct payload
        return
    expected = []
    for rec in event["Records"]:
        try:
            parse_record(rec)
        except EventFormatError:
            message_id = rec.get("messageId") if isinstance(rec, dict) else None
            # a record without a message id (a non-empty string) cannot be reported on its
            # own: an empty or foreign itemIdentifier would fail the whole batch
            if isinstance(message_id, str) and message_id:
                expected.append({"itemIdentifier": message_id})
    assert result["batchItemFailures"] == expected
    assert all(f["itemIdentifier"] for f in result["batchItemFailures"])


@settings(max_examples=150)
@given(
    st.sampled_from([n for n in sorted(PAYLOADS) if n.startswith(("s3", "eventbridge"))]),
    st.data(),
    mutations,
)
def test_lambda_handler_with_mutated_direct_events(
    handler_env: str, name: str, data: st.DataObject, new: Any
) -> None:
    """A direct S3 or EventBridge event: delivered, or rejected with ``EventFormatError``
    (Lambda's own retry and DLQ take it), never another exception."""
    from functions.aws_lambda import handler

    where = data.draw(st.sampled_from(positions(PAYLOADS[name])), label="position")
    if new is DELETE and not deletable(where):
        new = None
    with contextlib.suppress(EventFormatError):
        handler(mutated(PAYLOADS[name], where, new), None)


def _load(path: Path, module: str) -> Any:
    spec = importlib.util.spec_from_file_location(module, path)
    assert spec is not None and spec.loader is not None
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


@settings(max_examples=150)
@given(
    st.sampled_from(["gcs-cloudevent-finalized.json", "gcs-cloudevent-deleted.json"]),
    st.data(),
    mutations,
)
def test_gcp_handler_with_mutated_cloudevents(
    handler_env: str, name: str, data: st.DataObject, new: Any
) -> None:
    """The Cloud Functions entry point with a CloudEvent whose data was mutated: it returns
    (a malformed event is logged and acknowledged), never raises."""
    from cloudevents.http import CloudEvent

    main = _load(ROOT / "functions" / "gcp" / "main.py", "syncd_fuzz_gcf")
    payload = PAYLOADS[name]
    where = data.draw(st.sampled_from(positions(payload["data"])), label="position")
    if new is DELETE and not deletable(where):
        new = None
    attributes = {k: v for k, v in payload.items() if k != "data"}
    main.on_object_event(CloudEvent(attributes, mutated(payload["data"], where, new)))


@settings(max_examples=150)
@given(
    st.sampled_from(["azure-eventgrid-created.json", "azure-eventgrid-deleted.json"]),
    st.data(),
    mutations,
)
def test_azure_handler_with_mutated_events(
    handler_env: str, name: str, data: st.DataObject, new: Any
) -> None:
    """The Azure Functions entry point with an Event Grid event whose subject, type or data
    was mutated: it returns, never raises."""
    import azure.functions as func

    app = _load(ROOT / "functions" / "azure" / "function_app.py", "syncd_fuzz_azfunc")
    [function] = app.app.get_functions()
    sample = PAYLOADS[name][0]
    editable = {k: sample[k] for k in ("subject", "eventType", "data")}
    where = data.draw(st.sampled_from(positions(editable)[1:]), label="position")
    if new is DELETE and not deletable(where):
        new = None
    event = mutated(editable, where, new)
    function.get_user_function()(
        func.EventGridEvent(
            id=sample["id"],
            data=event.get("data"),
            topic=sample["topic"],
            subject=event.get("subject"),
            event_type=event.get("eventType"),
            event_time=datetime.fromisoformat(sample["eventTime"][:26] + "+00:00"),
            data_version=sample["dataVersion"],
        )
    )


@pytest.mark.parametrize("records", [9223372036854775808, 5, "aws:sqs", {"eventSource": "aws:sqs"}])
def test_lambda_handler_rejects_records_that_are_no_list(handler_env: str, records: Any) -> None:
    """Found by test_lambda_handler_with_mutated_direct_events: ``{"Records": <int>}`` raised a
    TypeError from the batch check instead of the parser's EventFormatError."""
    from functions.aws_lambda import handler

    with pytest.raises(EventFormatError, match="Records must be a list"):
        handler({"Records": records}, None)
