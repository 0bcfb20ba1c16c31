"""The catalog's one time format, and its conversions.

Every time the catalog writes (runs, leases, workers, markers, items' ``created_at``) is
ISO-8601 UTC text with microseconds and a ``Z``: ``2026-12-03T14:10:11.123456Z``. Text in
this one shape sorts in time order, so SQL compares it as text (a lease's expiry, a run's
age). Times that come from elsewhere (a listing's modification time, an event's) keep the
precision their source gave; :func:`parse` and :func:`stamp_us` read any precision, and the
write guards compare microseconds (:func:`stamp_us`), never text of mixed precision.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def stamp(when: datetime) -> str:
    """An aware datetime as the catalog's text (a naive one is taken as UTC)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def now() -> str:
    """The current time as the catalog's text."""
    return stamp(datetime.now(UTC))


def parse(text: str) -> datetime:
    """ISO text (``...Z`` or an offset, any precision) as an aware datetime; a time without
    an offset is UTC. Raises ``ValueError`` for anything else."""
    when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def stamp_us(when: str | datetime) -> int:
    """ISO text (any precision) or a datetime as microseconds since the epoch: times that
    compare as numbers, whatever precision their text had."""
    if isinstance(when, str):
        when = parse(when)
    elif when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (when - _EPOCH) // _US


def us_stamp(us: int) -> str:
    """Microseconds since the epoch as the catalog's text: :func:`stamp_us` reversed."""
    return stamp(_EPOCH + us * _US)
