"""One model for bucket events, and parsers for every provider format we accept.

:func:`parse` auto-detects the format of a decoded JSON payload and returns normalized
:class:`ObjectEvent` records plus what it skipped and why:

* S3 notifications (``Records[]``), also inside SQS (``body``) and SNS (``Message``), and
  ``s3:TestEvent`` (skipped); S3 via EventBridge (``detail-type`` Object Created/Deleted).
* GCS CloudEvents (``google.cloud.storage.object.v1.*``), legacy background events
  (``{"context": ..., "data": ...}``), and Pub/Sub notifications (push envelope or bare message,
  attributes + ``JSON_API_V1`` payload).
* Azure Event Grid, in the Event Grid schema and the CloudEvents schema; subscription
  validation events are recognised and their code returned.

Keys are decoded per format: S3 notification keys are form-encoded (``+`` is a space);
EventBridge and GCS keys are plain; Azure keys come from ``subject`` (plain) or else the
URL-encoded ``data.url``.

Each event carries an *ordering marker*: a string that, for one key, sorts older events before
newer ones. S3 and Azure sequencers are right-padded with zeros to a fixed width (so string
order is their documented order); GCS uses zero-padded ``generation`` then ``metageneration``.
Markers compare only between events for the same key. Emulators that send no sequencer
(moto) give ``marker=None``.

Unknown event types are skipped with a reason (and a log line), and so are SNS
``SubscriptionConfirmation`` / ``UnsubscribeConfirmation`` messages (raw SNS envelopes that an
SQS subscription puts in the queue: acknowledging them is all a consumer can do). A payload that
claims a known format but lacks what that format requires raises :class:`EventFormatError`. So
does one whose fields have the wrong shape for what the catalog stores: every text field must be
a JSON string that encodes to UTF-8 (a ``\\ud800`` escape or Pub/Sub bytes can carry a lone
surrogate) and holds no NUL byte (PostgreSQL's text cannot hold one, so neither store takes it:
a sync skips such keys too), a key or bucket must not be empty, an encoded key must decode to
UTF-8 (never replaced by U+FFFD, which would name another object), a key must fit its provider's
limit (S3 and GCS: 1,024 bytes of UTF-8; Azure: 1,024 characters, counted as UTF-16 code units
as the service counts them), since no object has a longer name, and a size or generation must
be a whole number from 0 to 2**63-1 (what sqlite's INTEGER holds). A parsed event can therefore
always be applied.
"""

from __future__ import annotations

import base64
import binascii
import enum
import functools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, unquote_plus, urlsplit

log = logging.getLogger("syncd.events.parse")

SEQUENCER_WIDTH = 64
#: the largest size or generation an event may carry: sqlite's INTEGER (and GCS's int64)
MAX_INT = 2**63 - 1
#: the longest key S3 and GCS allow, in bytes of UTF-8
MAX_KEY_BYTES = 1024
#: the longest blob name Azure allows, in characters (UTF-16 code units, as .NET counts them)
MAX_AZURE_KEY_CHARS = 1024
#: SNS messages about the subscription itself, not a notification: an SQS queue subscribed
#: with raw delivery off receives them as its first (or last) message
SNS_SUBSCRIPTION_TYPES = frozenset({"SubscriptionConfirmation", "UnsubscribeConfirmation"})


class EventFormatError(ValueError):
    """The payload is not a well-formed event of any format we know."""


class EventKind(enum.StrEnum):
    CREATED = "created"
    DELETED = "deleted"


@dataclass(frozen=True, slots=True, init=False)
class ObjectEvent:
    """A normalized "object created/deleted" event."""

    kind: EventKind
    provider: str  # "s3" | "gcs" | "azure"
    bucket: str  # bucket, or Azure container
    key: str
    marker: str | None = None
    size: int | None = None
    etag: str | None = None
    content_type: str | None = None
    event_time: datetime | None = None
    version: str | None = None  # as the listing driver reports it (GCS "gen.metagen")
    account: str | None = None  # Azure storage account
    event_id: str | None = None
    #: the object's custom metadata where the event carries it (GCS notifications do), as
    #: sorted (name, value) pairs (hashable, as the event is); None: the event does not say
    metadata: tuple[tuple[str, str], ...] | None = None
    #: the object's tags, likewise (no event format carries them: a HEAD step adds them)
    tags: tuple[tuple[str, str], ...] | None = None

    # written by hand, not generated: a frozen dataclass's own __init__ sets each field
    # through object.__setattr__ by name (2 us an event, a third of parsing an S3 record);
    # the slots' descriptors set them directly (as providers.base.ObjectInfo does)
    def __init__(
        self,
        kind: EventKind,
        provider: str,
        bucket: str,
        key: str,
        marker: str | None = None,
        size: int | None = None,
        etag: str | None = None,
        content_type: str | None = None,
        event_time: datetime | None = None,
        version: str | None = None,
        account: str | None = None,
        event_id: str | None = None,
        metadata: tuple[tuple[str, str], ...] | None = None,
        tags: tuple[tuple[str, str], ...] | None = None,
    ) -> None:
        _SET_KIND(self, kind)
        _SET_PROVIDER(self, provider)
        _SET_BUCKET(self, bucket)
        _SET_KEY(self, key)
        _SET_MARKER(self, marker)
        _SET_SIZE(self, size)
        _SET_ETAG(self, etag)
        _SET_CONTENT_TYPE(self, content_type)
        _SET_EVENT_TIME(self, event_time)
        _SET_VERSION(self, version)
        _SET_ACCOUNT(self, account)
        _SET_EVENT_ID(self, event_id)
        _SET_METADATA(self, metadata)
        _SET_TAGS(self, tags)


# the slots' own setters (they bypass the frozen guard, as dataclass's __init__ does)
_SET_KIND = ObjectEvent.kind.__set__  # type: ignore[attr-defined]
_SET_PROVIDER = ObjectEvent.provider.__set__  # type: ignore[attr-defined]
_SET_BUCKET = ObjectEvent.bucket.__set__  # type: ignore[attr-defined]
_SET_KEY = ObjectEvent.key.__set__  # type: ignore[attr-defined]
_SET_MARKER = ObjectEvent.marker.__set__  # type: ignore[attr-defined]
_SET_SIZE = ObjectEvent.size.__set__  # type: ignore[attr-defined]
_SET_ETAG = ObjectEvent.etag.__set__  # type: ignore[attr-defined]
_SET_CONTENT_TYPE = ObjectEvent.content_type.__set__  # type: ignore[attr-defined]
_SET_EVENT_TIME = ObjectEvent.event_time.__set__  # type: ignore[attr-defined]
_SET_VERSION = ObjectEvent.version.__set__  # type: ignore[attr-defined]
_SET_ACCOUNT = ObjectEvent.account.__set__  # type: ignore[attr-defined]
_SET_EVENT_ID = ObjectEvent.event_id.__set__  # type: ignore[attr-defined]
_SET_METADATA = ObjectEvent.metadata.__set__  # type: ignore[attr-defined]
_SET_TAGS = ObjectEvent.tags.__set__  # type: ignore[attr-defined]


@dataclass
class Parsed:
    events: list[ObjectEvent] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    validation_code: str | None = None

    def extend(self, other: Parsed) -> None:
        self.events += other.events
        self.skipped += other.skipped
        self.validation_code = self.validation_code or other.validation_code


_HEX = frozenset("0123456789ABCDEF")


def pad_sequencer(seq: str) -> str:
    """S3/Azure sequencers compare as strings after right-padding the shorter with zeros."""
    if not isinstance(seq, str):
        raise EventFormatError(f"malformed sequencer {_short(seq)}")
    seq = seq.strip().upper()
    if not seq or not _HEX.issuperset(seq) or len(seq) > SEQUENCER_WIDTH:
        raise EventFormatError(f"malformed sequencer {_short(seq)}")
    return seq.ljust(SEQUENCER_WIDTH, "0")


def gcs_marker(generation: Any, metageneration: Any) -> str:
    """The ordering marker of a GCS object version: both numbers zero-padded to 20 digits
    (2**63-1 has 19), so string order is numeric order."""
    gen = _int(generation, "GCS generation")
    if gen is None:
        raise EventFormatError("missing GCS generation")
    meta = _int(metageneration, "GCS metageneration") or 1
    return f"{gen:020d}.{meta:020d}"


def _time(value: Any) -> datetime | None:
    if not value:
        return None
    if isinstance(value, str):
        # the events of one delivery mostly share a few times: parse each text once
        return _time_text(value)
    return _parse_time(value)


def _parse_time(value: Any) -> datetime:
    text = str(value).strip().replace("Z", "+00:00")
    # Event Grid sends 7 fractional digits; fromisoformat takes at most 6
    if "." in text:
        head, _, rest = text.partition(".")
        digits = "".join(c for c in rest if c.isdigit())
        tail = rest[len(digits) :]
        text = f"{head}.{digits[:6]}{tail}"
    try:
        parsed = datetime.fromisoformat(text)
        # a time at the very edge of the calendar overflows when moved to UTC
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError):
        raise EventFormatError(f"malformed event time {_short(value)}") from None


#: :func:`_parse_time` of a text, remembered (datetimes are immutable; errors are not cached)
_time_text = functools.lru_cache(maxsize=4096)(_parse_time)


def _short(value: Any) -> str:
    """``repr`` of a field for an error message, cut short (a hostile field can be huge)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _int(value: Any, what: str) -> int | None:
    """A size or generation: a JSON integer, or a string of ASCII digits (GCS sends those),
    from 0 to :data:`MAX_INT`; None if absent. Booleans, fractions, signs and other digit
    scripts are malformed, not coerced."""
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit():
        number = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        raise EventFormatError(f"malformed {what} {_short(value)}")
    if not 0 <= number <= MAX_INT:
        raise EventFormatError(f"{what} {_short(value)} is out of range (0 to 2**63-1)")
    return number


#: GCS's own limit on an object's custom metadata (names and values together): a notification
#: claiming more is not GCS's
MAX_METADATA_BYTES = 8 * 1024


def _metadata(value: Any) -> tuple[tuple[str, str], ...] | None:
    """An event's custom metadata (a JSON object of strings), checked as the other fields."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise EventFormatError(f"metadata must be a JSON object, not {type(value).__name__}")
    pairs = []
    for name, text in value.items():
        pairs.append((_text(name, "metadata name"), _opt_text(text, "metadata value") or ""))
    if sum(len(n.encode()) + len(v.encode()) for n, v in pairs) > MAX_METADATA_BYTES:
        raise EventFormatError(f"metadata is larger than GCS allows ({MAX_METADATA_BYTES} bytes)")
    return tuple(sorted(pairs))


def _opt_text(value: Any, what: str) -> str | None:
    """An optional text field: None if absent or empty, else a string that encodes to UTF-8."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise EventFormatError(f"{what} must be a string, not {type(value).__name__}")
    if not value.isascii():  # a flag of the string in CPython: no scan, and always encodable
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise EventFormatError(f"{what} is not valid Unicode (a lone surrogate)") from None
    if "\x00" in value:
        # PostgreSQL's text cannot hold it; sqlite refuses it too, so the two stores agree
        raise EventFormatError(f"{what} {_short(value)} holds a NUL byte: no catalog can hold it")
    return value


def _text(value: Any, what: str) -> str:
    """A required text field (a key, a bucket): a non-empty string that encodes to UTF-8."""
    text = _opt_text(value, what)
    if text is None:
        raise EventFormatError(f"empty {what}")
    return text


def _decoded(encoded: Any, what: str, *, plus: bool) -> str:
    """A URL-encoded key, decoded strictly: bytes that are not UTF-8 are malformed, never
    replaced by U+FFFD (which would name a different object)."""
    raw = _text(encoded, what)
    if "%" not in raw and (not plus or "+" not in raw):
        return raw  # nothing to decode (the common key): what unquote would return
    try:
        key = unquote_plus(raw, errors="strict") if plus else unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise EventFormatError(f"{what} {_short(raw)} does not decode to UTF-8") from None
    return _text(key, what)


def _key(key: str, provider: str) -> str:
    """``key`` (already decoded and checked by :func:`_text`) if it fits the provider's key
    limit; else ``EventFormatError``: no object has a longer name, so the event names none
    (an item made from it would be a phantom)."""
    if provider == "azure":
        # UTF-16 code units: a character outside the BMP counts twice, as Azure counts it
        size = len(key) if key.isascii() else len(key.encode("utf-16-le")) // 2
        if size > MAX_AZURE_KEY_CHARS:
            raise EventFormatError(
                f"blob name {_short(key)} is {size} characters long: Azure allows "
                f"{MAX_AZURE_KEY_CHARS:,}"
            )
        return key
    size = len(key) if key.isascii() else len(key.encode("utf-8"))
    if size > MAX_KEY_BYTES:
        name = "S3" if provider == "s3" else "GCS"
        raise EventFormatError(
            f"object key {_short(key)} is {size:,} bytes long: {name} allows "
            f"{MAX_KEY_BYTES:,} bytes of UTF-8"
        )
    return key


def _need(obj: Any, *path: str) -> Any:
    cur = obj
    for part in path:
        if not isinstance(cur, dict) or part not in cur:
            raise EventFormatError(f"missing field {'.'.join(path)}")
        cur = cur[part]
    return cur


def _json_text(text: Any, what: str) -> Any:
    if not isinstance(text, str):
        raise EventFormatError(f"{what} must be a JSON string")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise EventFormatError(f"{what} is not valid JSON: {exc.msg}") from None


# -- AWS -----------------------------------------------------------------------------------


def _s3_record(rec: dict[str, Any]) -> Parsed:
    name = str(_need(rec, "eventName"))
    obj = _need(rec, "s3", "object")
    bucket = _text(_need(rec, "s3", "bucket", "name"), "bucket name")
    key = _key(_decoded(_need(obj, "key"), "object key", plus=True), "s3")  # form-encoded
    if name.startswith("ObjectCreated:"):
        kind = EventKind.CREATED
    elif name.startswith("ObjectRemoved:"):
        kind = EventKind.DELETED
    else:
        return _skip(f"s3 event {name} for {key!r} is not a create or delete")
    seq = obj.get("sequencer")
    return Parsed(
        events=[
            ObjectEvent(
                kind=kind,
                provider="s3",
                bucket=bucket,
                key=key,
                marker=pad_sequencer(seq) if seq else None,
                size=_int(obj.get("size"), "size"),
                etag=_opt_text(obj.get("eTag") or obj.get("etag"), "eTag"),
                event_time=_time(rec.get("eventTime")),
                event_id=_opt_text(
                    (rec.get("responseElements") or {}).get("x-amz-request-id"), "request id"
                ),
            )
        ]
    )


def _s3_fast(rec: Any) -> ObjectEvent | None:
    """The event of a plain S3 record, the common case, with the checks of
    :func:`_s3_record` short-cut; None for anything else (another shape, a key to decode,
    non-ASCII or missing text, a size that is no plain number, an event id): the caller
    then parses it with :func:`_s3_record`, which decides (or refuses) it exactly as before.
    Each test below is one of that function's outcomes for the plain case, so both give
    equal events (tests/test_events_fastpath.py checks that on generated records).

    A text passes every check of :func:`_text` without a second look when it is a non-empty
    ASCII ``str`` (encodable, so never a lone surrogate) without a NUL: that test is written
    out for each text (a call per field was a tenth of parsing a record), and so is :func:`pad_sequencer` for a sequencer already in its
    form: upper-case hex (so ASCII, without space), at most :data:`SEQUENCER_WIDTH` long."""
    if type(rec) is not dict or "responseElements" in rec:
        return None
    try:  # the fields every plain record has, read by subscript (a missing one: not plain)
        s3, name = rec["s3"], rec["eventName"]
        if type(s3) is not dict or type(name) is not str:
            return None
        obj, bucket = s3["object"], s3["bucket"]
        if type(obj) is not dict or type(bucket) is not dict:
            return None
        bucket, key = bucket["name"], obj["key"]
    except KeyError:
        return None
    if (
        type(bucket) is not str
        or type(key) is not str
        or not bucket
        or not key
        or not bucket.isascii()
        or not key.isascii()
        or "\x00" in bucket
        or "\x00" in key
        or "%" in key
        or "+" in key
        or len(key) > MAX_KEY_BYTES
    ):
        return None
    if name.startswith("ObjectCreated:"):
        kind = _CREATED
    elif name.startswith("ObjectRemoved:"):
        kind = _DELETED
    else:
        return None
    size = obj.get("size")
    if size is not None and (type(size) is not int or not 0 <= size <= MAX_INT):
        return None
    etag = obj.get("eTag") or obj.get("etag")
    if etag is not None and (
        type(etag) is not str or not etag or not etag.isascii() or "\x00" in etag
    ):
        return None
    seq = obj.get("sequencer")
    if not seq:
        marker = None
    elif type(seq) is str and len(seq) <= SEQUENCER_WIDTH and _HEX.issuperset(seq):
        marker = seq.ljust(SEQUENCER_WIDTH, "0")
    else:
        marker = pad_sequencer(seq)  # to be cleaned up, or refused
    when = rec.get("eventTime")
    return ObjectEvent(
        kind,
        "s3",
        bucket,
        key,
        marker,
        size,
        etag,
        None,
        (_time_text(when) if type(when) is str else _time(when)) if when else None,
    )


_CREATED, _DELETED = EventKind.CREATED, EventKind.DELETED


def records(recs: list[Any]) -> Parsed:
    """:func:`parse_record` of each element of a ``Records`` list, as one :class:`Parsed`.
    Raises ``EventFormatError`` (and nothing else) if any record is malformed."""
    return _guarded(_records, recs)


def _records(recs: list[Any]) -> Parsed:
    """The plain S3 records through :func:`_s3_fast`, the rest one by one."""
    events: list[ObjectEvent] = []
    out = Parsed(events=events)
    for rec in recs:
        event = _s3_fast(rec)
        if event is not None:
            events.append(event)
        else:
            out.extend(_parse_record(rec))
    return out


def _eventbridge(payload: dict[str, Any]) -> Parsed:
    detail_type = payload.get("detail-type")
    detail = _need(payload, "detail")
    key = _key(_text(_need(detail, "object", "key"), "object key"), "s3")  # not form-encoded
    if detail_type == "Object Created":
        kind = EventKind.CREATED
    elif detail_type == "Object Deleted":
        kind = EventKind.DELETED
    else:
        return _skip(f"EventBridge {detail_type!r} for {key!r} is not a create or delete")
    obj = detail["object"]
    seq = obj.get("sequencer")
    return Parsed(
        events=[
            ObjectEvent(
                kind=kind,
                provider="s3",
                bucket=_text(_need(detail, "bucket", "name"), "bucket name"),
                key=key,
                marker=pad_sequencer(seq) if seq else None,
                size=_int(obj.get("size"), "size"),
                etag=_opt_text(obj.get("etag"), "etag"),
                event_time=_time(payload.get("time")),
                event_id=_opt_text(payload.get("id"), "event id"),
            )
        ]
    )


# -- GCS -----------------------------------------------------------------------------------

_GCS_CLOUDEVENT = {
    "google.cloud.storage.object.v1.finalized": EventKind.CREATED,
    "google.cloud.storage.object.v1.metadataUpdated": EventKind.CREATED,
    "google.cloud.storage.object.v1.deleted": EventKind.DELETED,
    # a live version became noncurrent: gone from the bucket's live listing
    "google.cloud.storage.object.v1.archived": EventKind.DELETED,
}
_GCS_LEGACY = {
    "google.storage.object.finalize": EventKind.CREATED,
    "google.storage.object.metadataUpdate": EventKind.CREATED,
    "google.storage.object.delete": EventKind.DELETED,
    "google.storage.object.archive": EventKind.DELETED,
}
_GCS_PUBSUB = {
    "OBJECT_FINALIZE": EventKind.CREATED,
    "OBJECT_METADATA_UPDATE": EventKind.CREATED,
    "OBJECT_DELETE": EventKind.DELETED,
    "OBJECT_ARCHIVE": EventKind.DELETED,
}


def _gcs_object(kind: EventKind, data: dict[str, Any], event_id: Any, time: Any) -> ObjectEvent:
    if not isinstance(data, dict):
        raise EventFormatError("GCS event data must be a JSON object")
    generation = _int(_need(data, "generation"), "GCS generation")
    metageneration = _int(data.get("metageneration"), "GCS metageneration") or 1
    if generation is None:
        raise EventFormatError("missing GCS generation")
    return ObjectEvent(
        kind=kind,
        provider="gcs",
        bucket=_text(_need(data, "bucket"), "bucket"),
        key=_key(_text(_need(data, "name"), "object name"), "gcs"),
        marker=gcs_marker(generation, metageneration),
        size=_int(data.get("size"), "size"),
        etag=_opt_text(data.get("etag") or data.get("md5Hash"), "etag"),
        content_type=_opt_text(data.get("contentType"), "contentType"),
        # the object resource names its custom metadata whenever it has some
        metadata=_metadata(data.get("metadata", {})),
        event_time=_time(time or data.get("updated")),
        version=f"{generation}.{metageneration}",
        # Pub/Sub message ids are strings; some senders give numbers
        event_id=_opt_text(str(event_id) if isinstance(event_id, int) else event_id, "event id"),
    )


def _gcs_cloudevent(payload: dict[str, Any]) -> Parsed:
    kind = _GCS_CLOUDEVENT.get(payload["type"])
    if kind is None:
        return _skip(f"GCS event type {payload['type']} is not handled")
    data = _need(payload, "data")
    return Parsed(events=[_gcs_object(kind, data, payload.get("id"), payload.get("time"))])


def _gcs_legacy(payload: dict[str, Any]) -> Parsed:
    context = payload["context"]
    event_type = context.get("eventType") or context.get("event_type")
    kind = _GCS_LEGACY.get(event_type)
    if kind is None:
        return _skip(f"GCS background event type {event_type!r} is not handled")
    data = _need(payload, "data")
    return Parsed(
        events=[_gcs_object(kind, data, context.get("eventId"), context.get("timestamp"))]
    )


def _gcs_pubsub(message: dict[str, Any]) -> Parsed:
    attrs = _need(message, "attributes")
    if not isinstance(attrs, dict):
        raise EventFormatError("Pub/Sub message attributes must be a JSON object")
    event_type = attrs.get("eventType")
    kind = _GCS_PUBSUB.get(event_type)
    if kind is None:
        return _skip(f"GCS notification type {event_type!r} is not handled")
    data: dict[str, Any] = {}
    if message.get("data") and attrs.get("payloadFormat", "JSON_API_V1") == "JSON_API_V1":
        try:
            data = json.loads(base64.b64decode(message["data"], validate=True))
        except (binascii.Error, ValueError):
            raise EventFormatError("Pub/Sub message data is not base64-encoded JSON") from None
        if not isinstance(data, dict):
            raise EventFormatError("Pub/Sub message data must be a JSON object")
    data.setdefault("bucket", attrs.get("bucketId"))
    data.setdefault("name", attrs.get("objectId"))
    data.setdefault("generation", attrs.get("objectGeneration"))
    if data.get("bucket") is None or data.get("name") is None or data.get("generation") is None:
        raise EventFormatError("GCS notification lacks bucketId/objectId/objectGeneration")
    event_id = message.get("messageId") or message.get("message_id")
    return Parsed(events=[_gcs_object(kind, data, event_id, attrs.get("eventTime"))])


# -- Azure ---------------------------------------------------------------------------------

_AZURE_TYPES = {
    "Microsoft.Storage.BlobCreated": EventKind.CREATED,
    "Microsoft.Storage.BlobDeleted": EventKind.DELETED,
}
VALIDATION_TYPE = "Microsoft.EventGrid.SubscriptionValidationEvent"


def _split_blob_url(url: str) -> tuple[str | None, str]:
    """(account, path after it) of a blob URL: the account is the first label of the host
    (``<account>.blob.core.windows.net``), or for an emulator on a loopback address (Azurite's
    path style, ``127.0.0.1:10000/<account>/<container>/<blob>``) the first path segment."""
    try:
        parts = urlsplit(url)
    except ValueError:  # a malformed IPv6 host
        raise EventFormatError(f"malformed blob URL {_short(url)}") from None
    path = parts.path.lstrip("/")
    if (parts.hostname or "") in ("127.0.0.1", "localhost", "::1"):
        account, _, path = path.partition("/")
        return account or None, path
    return (parts.hostname or "").split(".")[0] or None, path


def _azure_location(
    subject: str | None, url: str | None, source: str | None
) -> tuple[str | None, str, str]:
    """(account, container, key) from the subject, else the blob URL. The account comes from
    the topic (``source``) when it names one, else from the blob URL: an event without a topic
    must not reach a container of that name in another account."""
    account = None
    if source and "/storageAccounts/" in source:
        account = source.rsplit("/storageAccounts/", 1)[1].split("/")[0] or None
    # a topic names the account authoritatively; without one the blob URL does (split only
    # when needed: an event whose topic and subject say everything does not need its URL)
    split = _split_blob_url(url) if url and account is None else None
    if split is not None:
        account = split[0]
    if subject and "/containers/" in subject and "/blobs/" in subject:
        rest = subject.split("/containers/", 1)[1]
        container, _, key = rest.partition("/blobs/")
        if container and key:
            return account, container, key
    if url:
        url_account, url_path = split or _split_blob_url(url)
        account = account or url_account
        container, _, key = url_path.partition("/")
        if container and key:
            return account, container, _decoded(key, "blob URL", plus=False)
    raise EventFormatError("Azure event has neither a blob subject nor a blob URL")


def _azure(event: dict[str, Any], *, cloudevents: bool) -> Parsed:
    event_type = event.get("type" if cloudevents else "eventType")
    if event_type == VALIDATION_TYPE:
        code = _need(event, "data", "validationCode")
        return Parsed(validation_code=str(code), skipped=["Event Grid subscription validation"])
    kind = _AZURE_TYPES.get(str(event_type))
    if kind is None:
        return _skip(f"Azure event type {event_type!r} is not handled")
    data = _need(event, "data")
    source = event.get("source") if cloudevents else event.get("topic")
    subject, url = event.get("subject"), data.get("url")
    account, container, key = _azure_location(
        subject if isinstance(subject, str) else None,
        url if isinstance(url, str) else None,
        source if isinstance(source, str) else None,
    )
    seq = data.get("sequencer")
    etag = _opt_text(data.get("eTag") or data.get("etag"), "eTag")
    return Parsed(
        events=[
            ObjectEvent(
                kind=kind,
                provider="azure",
                bucket=_text(container, "container"),
                key=_key(_text(key, "blob name"), "azure"),
                marker=pad_sequencer(seq) if seq else None,
                size=_int(data.get("contentLength"), "contentLength"),
                etag=etag.strip('"') or None if etag else None,
                content_type=_opt_text(data.get("contentType"), "contentType"),
                event_time=_time(event.get("time" if cloudevents else "eventTime")),
                account=_opt_text(account, "storage account"),
                event_id=_opt_text(event.get("id"), "event id"),
            )
        ]
    )


# -- detection -----------------------------------------------------------------------------


def _skip(reason: str) -> Parsed:
    log.info("skipping event: %s", reason)
    return Parsed(skipped=[reason])


def parse(payload: Any) -> Parsed:
    """Parse one decoded payload (object or list) of any supported format.

    Raises ``EventFormatError`` and nothing else for a malformed payload, one whose embedded
    JSON text (an SQS body, an SNS message, Pub/Sub data) nests too deeply to decode included."""
    return _guarded(_parse_any, payload)


def parse_record(rec: Any) -> Parsed:
    """One element of a ``Records`` list: an S3 record, an SQS message or an SNS record.

    Raises ``EventFormatError`` and nothing else, as :func:`parse` does."""
    return _guarded(_parse_record, rec)


def _guarded(parser: Callable[[Any], Parsed], value: Any) -> Parsed:
    """``parser(value)``, any failure of it on a hostile value as ``EventFormatError``."""
    try:
        return parser(value)
    except EventFormatError:
        raise
    except RecursionError:
        raise EventFormatError("payload is nested too deeply to be an event") from None
    except (KeyError, TypeError, AttributeError, ValueError, OverflowError) as exc:
        # a shape no check above foresaw; the message names the exception, not a traceback
        raise EventFormatError(f"malformed event: {type(exc).__name__}: {exc}"[:300]) from None


def _parse_any(payload: Any) -> Parsed:
    if isinstance(payload, list):
        out = Parsed()
        for item in payload:
            out.extend(_parse_any(item))
        return out
    if not isinstance(payload, dict):
        raise EventFormatError(f"expected a JSON object or array, got {type(payload).__name__}")
    return _parse_object(payload)


def _parse_object(p: dict[str, Any]) -> Parsed:
    if p.get("Event") == "s3:TestEvent":
        return _skip("s3:TestEvent")
    if "Records" in p:
        records = p["Records"]
        if not isinstance(records, list):
            raise EventFormatError("Records must be a list")
        return _records(records)
    if p.get("Type") == "Notification" and "Message" in p:  # SNS envelope (SQS raw delivery off)
        return _parse_any(_json_text(p["Message"], "SNS Message"))
    if p.get("Type") in SNS_SUBSCRIPTION_TYPES and "TopicArn" in p:
        # the subscription is confirmed where it is made (SQS subscriptions by their owner,
        # webhooks by POST /api/v1/events); in a queue there is nothing to do but acknowledge
        return _skip(f"SNS {p['Type']} for topic {_short(p['TopicArn'])}")
    if p.get("source") == "aws.s3" and "detail-type" in p:
        return _eventbridge(p)
    if "specversion" in p and isinstance(p.get("type"), str):
        if p["type"].startswith("google.cloud.storage."):
            return _gcs_cloudevent(p)
        if p["type"].startswith("Microsoft."):
            return _azure(p, cloudevents=True)
        return _skip(f"CloudEvent type {p['type']} is not handled")
    if "eventType" in p and ("subject" in p or "topic" in p):
        return _azure(p, cloudevents=False)
    if "message" in p and isinstance(p["message"], dict) and "attributes" in p["message"]:
        return _gcs_pubsub(p["message"])  # Pub/Sub push envelope
    if "attributes" in p and isinstance(p["attributes"], dict) and "eventType" in p["attributes"]:
        return _gcs_pubsub(p)  # bare Pub/Sub message
    if isinstance(p.get("context"), dict) and isinstance(p.get("data"), dict):
        return _gcs_legacy(p)
    raise EventFormatError(
        "unrecognised event payload: expected S3/SQS/SNS/EventBridge, GCS CloudEvent/Pub/Sub, "
        "or Azure Event Grid JSON"
    )


def _parse_record(rec: Any) -> Parsed:
    if not isinstance(rec, dict):
        raise EventFormatError("each record must be a JSON object")
    if rec.get("eventSource") == "aws:s3" or "s3" in rec:
        return _s3_record(rec)
    if rec.get("eventSource") == "aws:sqs" or ("body" in rec and "messageId" in rec):
        return _parse_any(_json_text(rec.get("body"), "SQS body"))
    if rec.get("EventSource") == "aws:sns" or "Sns" in rec:
        return _parse_any(_json_text(_need(rec, "Sns", "Message"), "SNS Message"))
    raise EventFormatError("record is neither an S3 event, an SQS message nor an SNS record")


def parse_text(text: str | bytes) -> Parsed:
    """Parse raw JSON text: a single payload, or one payload per line (JSON lines).

    Raises ``EventFormatError`` for anything that is not a well-formed payload, a hostile one
    nested too deeply to decode included."""
    try:
        return _parse_text(text)
    except RecursionError:
        raise EventFormatError("payload is nested too deeply to be an event") from None


def _parse_text(text: str | bytes) -> Parsed:
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise EventFormatError("payload is not UTF-8 text") from None
    try:
        return parse(json.loads(text))
    except json.JSONDecodeError as first:
        lines = [line for line in text.splitlines() if line.strip()]
        if len(lines) < 2:
            raise EventFormatError(
                f"payload is not valid JSON: {first.msg} at line {first.lineno}"
            ) from None
        out = Parsed()
        for number, line in enumerate(lines, 1):
            try:
                out.extend(parse(json.loads(line)))
            except json.JSONDecodeError as exc:
                raise EventFormatError(f"line {number} is not valid JSON: {exc.msg}") from None
        return out
