"""Hostile and malformed event payloads (issue 8, #10): every input is either parsed or
rejected with ``EventFormatError``; never a ``TypeError``, ``KeyError``, ``RecursionError``...

Inputs: random JSON values, and each fixture payload with one part replaced by a random JSON
value (a wrong type where a string, a number or a list is expected), as text and as data.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from syncd.events.parse import EventFormatError, parse, parse_text

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "events"
PAYLOADS = {
    p.name: json.loads(p.read_text(encoding="utf-8")) for p in sorted(FIXTURES.glob("*.json"))
}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)


def paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every position in a JSON value (dict keys and list indexes)."""
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += paths(v, (*prefix, i))
    return out


def replaced(value: Any, path: tuple, new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: replaced(value[head], rest, new)}
    copy = list(value)
    copy[head] = replaced(copy[head], rest, new)
    return copy


def must_parse_or_reject(payload: Any) -> None:
    with contextlib.suppress(EventFormatError):
        parse(payload)
    with contextlib.suppress(EventFormatError):
        parse_text(json.dumps(payload))


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_random_json(value: Any) -> None:
    must_parse_or_reject(value)


@settings(max_examples=600, deadline=None)
@given(st.sampled_from(sorted(PAYLOADS)), st.data(), json_values)
def test_mutated_payloads(name: str, data: st.DataObject, new: Any) -> None:
    payload = PAYLOADS[name]
    path = data.draw(st.sampled_from(paths(payload)), label="path")
    must_parse_or_reject(replaced(payload, path, new))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200))
def test_random_bytes_and_text(raw: bytes | str) -> None:
    with contextlib.suppress(EventFormatError):
        parse_text(raw)


def test_deep_nesting_is_malformed() -> None:
    for text in ("[" * 100_000, '{"a":' * 50_000 + "1" + "}" * 50_000):
        try:
            parse_text(text)
        except EventFormatError:
            continue
        raise AssertionError("a deeply nested payload was accepted")
