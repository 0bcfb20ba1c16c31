"""Hypothesis strategies and payload mutators the fuzz suites share (issue 12).

* :data:`json_values`: any small JSON value; :data:`hostile_values`: the field values most
  likely to break a parser or what it feeds (sizes past sqlite's INTEGER, negative sizes,
  fractions, lone surrogates, very long strings, junk base64 and percent-encodings, calendar
  edges);
* :func:`positions` / :func:`mutated`: every place in a payload, the JSON text inside an SQS
  body or an SNS message and the base64 JSON of Pub/Sub data included, and the payload with
  one of them replaced or removed;
* :data:`keys`: bucket keys up to 1,024 bytes of UTF-8 built from the parts that make keys
  hostile (``..`` and ``.`` segments, empty segments, control characters, ``%``, ``_``, ``*``,
  ``?``, ``[``, ``+``, ``\\``, decomposed accents, trailing slashes); :data:`nfc_nfd_names`: a
  name and its other Unicode normalisation form (different strings, different keys);
  :data:`surrogate_keys`: keys holding a lone surrogate (no UTF-8 encoding exists).
"""

from __future__ import annotations

import base64
import json
import unicodedata
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

MAX_KEY_BYTES = 1024

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

_EDGE_TIMES = [
    "9999-12-31T23:59:59-12:00",  # past the end of the calendar once moved to UTC
    "0001-01-01T00:00:00+14:00",  # before its start
    "2026-02-30T00:00:00Z",
    "2026-11-20T10:00:00." + "9" * 5000 + "Z",
    "2026-11-20T10:00:00+99:00",
    "now",
]
hostile_values = st.one_of(
    st.sampled_from(
        [
            2**63,  # one past sqlite's INTEGER
            2**63 - 1,
            -1,
            -(2**63) - 1,
            1e308,
            -0.5,
            True,
            "",
            " 12 ",
            "١٢",  # Arabic-Indic digits: int() takes them, a size must not
            "-5",
            "1e3",
            "\ud800",  # lone surrogates: JSON can escape them, UTF-8 cannot hold them
            "a\udcffb",
            "%FF%FE",  # percent-encoded bytes that are not UTF-8
            "%ED%A0%80",  # an encoded surrogate
            "%",
            "!!not base64!!",
            "////",
            "\x00",
            "/".join(["..", "..", "etc", "passwd"]),  # built: no tracked path leaves the repo
            [],
            {},
            [[[[[]]]]],
            {"name": {"name": {}}},
            *_EDGE_TIMES,
        ]
    ),
    st.integers(2**63 - 2, 2**80),
    st.integers(-(2**80), -1),
    st.text(min_size=2000, max_size=70_000).map(lambda s: s * 2),
    st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode()),
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
)


class _Delete:
    def __repr__(self) -> str:
        return "DELETE"


#: :func:`mutated` with this removes the field (or list element) instead of replacing it
DELETE: Any = _Delete()


@dataclass(frozen=True)
class Embedded:
    """A step into a string that holds JSON: plain text (SQS body, SNS Message) or base64
    (Pub/Sub data)."""

    base64: bool


def _embedded(text: str) -> tuple[Embedded, Any] | None:
    try:
        return Embedded(False), json.loads(text)
    except ValueError:
        pass
    try:
        return Embedded(True), json.loads(base64.b64decode(text, validate=True))
    except ValueError:
        return None


def positions(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every position in a JSON value: dict keys, list indexes, and the inside of strings that
    hold a JSON object or array (an :class:`Embedded` step)."""
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += positions(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += positions(v, (*prefix, i))
    elif isinstance(value, str) and len(value) > 1:
        inner = _embedded(value)
        if inner is not None and isinstance(inner[1], dict | list):
            out += positions(inner[1], (*prefix, inner[0]))
    return out


def _encode(step: Embedded, value: Any) -> str:
    # no ASCII escaping, surrogates passed through: a mutated lone surrogate reaches the
    # parser as the bytes a careless sender would write
    text = json.dumps(value, ensure_ascii=False)
    if not step.base64:
        return text
    return base64.b64encode(text.encode("utf-8", "surrogatepass")).decode()


def mutated(value: Any, position: tuple[Any, ...], new: Any) -> Any:
    """``value`` with the part at ``position`` replaced by ``new`` (removed, for
    :data:`DELETE`); the original is not changed."""
    if not position:
        return new
    head, rest = position[0], position[1:]
    if isinstance(head, Embedded):
        inner = _embedded(value)
        assert inner is not None
        return _encode(head, mutated(inner[1], rest, new))
    if isinstance(value, dict):
        copy: Any = dict(value)
    else:
        copy = list(value)
    if not rest and new is DELETE:
        del copy[head]
    else:
        copy[head] = mutated(copy[head], rest, new)
    return copy


def deletable(position: tuple[Any, ...]) -> bool:
    """Whether :data:`DELETE` can apply at ``position`` (a field or an element, not the whole
    payload nor the whole of an embedded text)."""
    return bool(position) and not isinstance(position[-1], Embedded)


# -- keys ----------------------------------------------------------------------------------

_PARTS = [
    "a",
    "data",
    "..",
    ".",
    "",
    "%",
    "%2F",
    "%41",
    "_",
    "*",
    "?",
    "[",
    "]",
    "+",
    " ",
    "\\",
    "~",
    "#",
    "&",
    "=",
    ":",
    "C:",
    ".syncd-tmp",
    "\x00",
    "\n",
    "\t",
    "\x1b[31m",
    "\x7f",
    "\u202e",  # right-to-left override
    "\ufeff",
    "\ufffd",
    "é",  # NFC
    "e\u0301",  # the same letter, NFD
    "日本",
    "😀",
    "Ω",  # U+2126 OHM SIGN: NFC turns it into U+03A9
]


def _fits(key: str) -> bool:
    return 0 < len(key.encode("utf-8")) <= MAX_KEY_BYTES


_segment = st.lists(
    st.sampled_from(_PARTS) | st.text(st.characters(codec="utf-8"), max_size=8), max_size=4
).map("".join)
_built = st.tuples(
    st.lists(_segment, min_size=1, max_size=6).map("/".join), st.sampled_from(["", "/"])
).map("".join)
_long = st.tuples(st.sampled_from(["a", "é", "日", "😀", "/", "x/"]), st.integers(1, 1024)).map(
    lambda t: (t[0] * t[1]).encode("utf-8")[:MAX_KEY_BYTES].decode("utf-8", "ignore")
)

#: bucket keys: valid UTF-8, 1 to 1,024 bytes, built to be hostile
keys = st.one_of(_built, _long, st.text(st.characters(codec="utf-8"), min_size=1)).filter(_fits)


def _other_form(name: str) -> str:
    nfd = unicodedata.normalize("NFD", name)
    return nfd if nfd != name else unicodedata.normalize("NFC", name)


#: (name, the same name in the other normalisation form): two distinct keys
nfc_nfd_names = (
    st.lists(
        st.sampled_from(["é", "ü", "Å", "ñ", "ọ̃", "가", "a", "-", " "]), min_size=1, max_size=8
    )
    .map(lambda parts: unicodedata.normalize("NFC", "".join(parts)))
    .map(lambda s: (s, _other_form(s)))
    .filter(lambda pair: pair[0] != pair[1])
)

#: keys holding a lone surrogate: no UTF-8 (so no bucket, catalog or JSON) can hold them
surrogate_keys = st.tuples(
    keys, st.sampled_from(["\ud800", "\udfff", "\udc80", "\udbff"]), st.integers(0, 40)
).map(lambda t: t[0][: t[2]] + t[1] + t[0][t[2] :])
