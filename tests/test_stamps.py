"""The catalog's one time format (syncd/store/stamps.py): round trips and text order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from syncd.store.stamps import parse, stamp, stamp_us, us_stamp

times = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(9998, 1, 1), timezones=st.just(UTC)
)


@given(times)
def test_a_stamp_reads_back_as_the_same_time(when: datetime) -> None:
    text = stamp(when)
    assert text.endswith("Z") and len(text) == len("2026-12-03T14:10:11.123456Z")
    assert parse(text) == when
    assert us_stamp(stamp_us(when)) == text
    assert stamp_us(text) == stamp_us(when)


@given(times, times)
def test_stamps_sort_as_text_in_time_order(a: datetime, b: datetime) -> None:
    """SQL compares stored times as text (lease expiry, run age)."""
    assert (stamp(a) < stamp(b)) == (a < b)


@given(times, st.integers(-14 * 60, 14 * 60))
def test_other_offsets_and_precisions_read_as_the_same_instant(
    when: datetime, minutes: int
) -> None:
    elsewhere = when.astimezone(timezone(timedelta(minutes=minutes)))
    assert parse(elsewhere.isoformat()) == when
    assert stamp(elsewhere) == stamp(when)
    whole = when.replace(microsecond=0)
    assert stamp_us(whole.isoformat().replace("+00:00", "Z")) == stamp_us(whole)


def test_a_time_without_offset_is_utc() -> None:
    assert parse("2026-01-01T00:00:00") == datetime(2026, 1, 1, tzinfo=UTC)
    assert stamp(datetime(2026, 1, 1)) == "2026-01-01T00:00:00.000000Z"
