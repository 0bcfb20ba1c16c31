"""The user's part of an item: its metadata object (``metadata.user``) and its tags; their
limits, the checks that enforce them, and the JSON merge patch that edits the metadata.

Nothing here touches the catalog (:mod:`syncd.store.edits` writes edits): the CLI, the HTTP
API and the Python API check input with the same functions and refuse it the same way, a
one-line :class:`~syncd.errors.UsageError` (HTTP 400, exit 2) before anything is written.

The limits, and why:

* :data:`MAX_METADATA_BYTES`: an item's user metadata, serialized compactly as UTF-8, is at
  most 16 KiB. It is read with every item (listings, the change feed, webhooks): a few
  labels per item, not documents; a bigger record belongs in an object of its own.
* :data:`MAX_DEPTH`: objects and arrays nest at most 8 deep (the top object is level 1).
  Deeper structures are not what labels look like, and recursion over hostile input (parse,
  merge, PostgreSQL's jsonb) must stay shallow.
* Member names (:func:`check_name`): 1 to :data:`MAX_NAME` (128) characters, each a letter or
  digit (any script), ``_`` or ``-``. A query names a member by its path
  (``metadata.user.camera.site``), so a name must be one path segment that needs no quoting:
  a ``.`` would make ``a.b`` mean two things, and quotes, spaces, ``=``, ``,`` or control
  characters would collide with the query syntax or break a line of output. Such names are
  refused, not escaped.
* Values: JSON strings, numbers, booleans, null (only in a patch: it removes the member),
  arrays and objects. Strings may not hold U+0000 (PostgreSQL's ``jsonb`` cannot store it) or
  unpaired surrogates (not text: they cannot be stored as UTF-8); numbers must be finite.
* Tags (:func:`check_tag`): at most :data:`MAX_TAGS` (100) per item, each 1 to
  :data:`MAX_TAG` (64) characters, each a letter or digit, ``_``, ``-``, ``.``, ``:``, ``/``
  or ``@``: a tag is written in command lines, URLs and comma-separated query lists without
  quoting (no spaces, commas, quotes or ``=``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from syncd.errors import UsageError

#: an item's user metadata, serialized compactly (UTF-8 bytes)
MAX_METADATA_BYTES = 16 * 1024
#: how deep objects and arrays nest (the metadata object itself is level 1)
MAX_DEPTH = 8
#: a member name's length (characters)
MAX_NAME = 128
#: tags per item
MAX_TAGS = 100
#: a tag's length (characters)
MAX_TAG = 64
#: characters besides letters and digits that a member name may hold
NAME_PUNCTUATION = "_-"
#: characters besides letters and digits that a tag may hold
TAG_PUNCTUATION = "_-.:/@"
#: a patch may remove as much as an item holds: it may be twice the size of one
MAX_PATCH_BYTES = 2 * MAX_METADATA_BYTES

_compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, sort_keys=True).encode


def dumps(value: Any) -> str:
    """The canonical JSON text of a checked value: compact, members sorted (what is stored,
    and what "did an edit change anything" compares)."""
    return _compact(value)


def size_of(value: Any) -> int:
    """The stored size of a checked value in bytes (:data:`MAX_METADATA_BYTES` applies)."""
    return len(dumps(value).encode("utf-8"))


def check_name(name: str, where: str = "") -> None:
    """Refuse (``UsageError``) a member name a query path could not address (see above)."""
    what = None
    if not name:
        what = "is empty"
    elif len(name) > MAX_NAME:
        what = f"is {len(name)} characters long (at most {MAX_NAME})"
    elif "." in name:
        what = "holds '.', which separates the parts of a query path (metadata.user.a.b)"
    elif not all(ch.isalnum() or ch in NAME_PUNCTUATION for ch in name):
        what = "holds characters other than letters, digits, '_' and '-'"
    if what is not None:
        raise UsageError(
            f"metadata member name {_show(name)}{where} {what}; use a name like 'camera_site'"
        )


def check_tag(tag: Any) -> str:
    """``tag`` if it is a valid tag, else ``UsageError`` (see above)."""
    if not isinstance(tag, str):
        raise UsageError(f"a tag must be a string, got {_kind(tag)}")
    what = None
    if not tag:
        what = "is empty"
    elif len(tag) > MAX_TAG:
        what = f"is {len(tag)} characters long (at most {MAX_TAG})"
    elif not all(ch.isalnum() or ch in TAG_PUNCTUATION for ch in tag):
        what = f"holds characters other than letters, digits and {' '.join(TAG_PUNCTUATION)}"
    if what is not None:
        raise UsageError(f"tag {_show(tag)} {what}; use tags like 'review' or 'site:berlin'")
    return tag


def check_tags(tags: Any, field: str) -> tuple[str, ...]:
    """A list of tags as a tuple of distinct valid tags, else ``UsageError``."""
    if isinstance(tags, str) or not isinstance(tags, list | tuple | set | frozenset):
        raise UsageError(f"{field} must be a list of tags, got {_kind(tags)}")
    if len(tags) > MAX_TAGS:
        raise UsageError(f"{field} has {len(tags)} tags; an item holds at most {MAX_TAGS}")
    return tuple(dict.fromkeys(check_tag(t) for t in tags))


def check_patch(patch: Any) -> dict[str, Any]:
    """A metadata patch (a JSON object; ``null`` members remove) checked against every limit
    that does not depend on the item: names, values, depth, its own size. Returns it."""
    if not isinstance(patch, Mapping):
        raise UsageError(
            f"metadata must be a JSON object (members to set, null to remove one), "
            f"got {_kind(patch)}"
        )
    _check_value(patch, 1, "", allow_null=True)
    size = size_of(patch)
    if size > MAX_PATCH_BYTES:
        raise UsageError(
            f"the metadata patch is {size:,} bytes; an item's metadata may be at most "
            f"{MAX_METADATA_BYTES:,} bytes (a patch at most {MAX_PATCH_BYTES:,})"
        )
    return dict(patch)


def check_result(metadata: dict[str, Any], tags: list[str], key: str) -> None:
    """Refuse an item's user part that an edit would take past the limits."""
    size = size_of(metadata)
    if size > MAX_METADATA_BYTES:
        raise UsageError(
            f"item {_show(key)}: its metadata would be {size:,} bytes, over the limit of "
            f"{MAX_METADATA_BYTES:,}; remove members (null) or set smaller values"
        )
    if len(tags) > MAX_TAGS:
        raise UsageError(
            f"item {_show(key)} would have {len(tags)} tags, over the limit of {MAX_TAGS}; "
            "remove some first"
        )


def _check_value(value: Any, depth: int, path: str, *, allow_null: bool = False) -> None:
    where = f" (at {path})" if path else ""
    if depth > MAX_DEPTH:
        raise UsageError(f"metadata nests deeper than {MAX_DEPTH} levels{where}")
    if isinstance(value, Mapping):
        for name, member in value.items():
            if not isinstance(name, str):
                raise UsageError(f"metadata member names must be strings{where}")
            check_name(name, where)
            child = f"{path}.{name}" if path else name
            # null inside a patch removes a member at any depth (RFC 7386)
            _check_value(member, depth + 1, child, allow_null=allow_null)
    elif isinstance(value, list):
        for i, member in enumerate(value):
            # an array is a value as it is (a patch replaces it whole): null is a value there
            _check_value(member, depth + 1, f"{path}[{i}]", allow_null=True)
    elif isinstance(value, str):
        _check_text(value, where)
    elif value is None:
        if not allow_null:  # pragma: no cover - stored values are never None members
            raise UsageError(f"metadata value null is not allowed{where}")
    elif isinstance(value, bool | int):
        pass
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise UsageError(f"metadata numbers must be finite{where}")
    else:
        raise UsageError(f"metadata values must be JSON values, got {_kind(value)}{where}")


def _check_text(text: str, where: str) -> None:
    if "\x00" in text:
        raise UsageError(f"metadata text may not hold U+0000{where}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"metadata text holds an unpaired surrogate (not text){where}") from None


def merge_patch(target: dict[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """RFC 7386 JSON merge patch of an object by an object: each member of ``patch`` replaces
    the target's (objects are merged member by member, recursively), ``null`` removes it;
    arrays and other values are replaced whole. Returns a new object (``target`` is kept)."""
    out = dict(target)
    for name, value in patch.items():
        if value is None:
            out.pop(name, None)
        elif isinstance(value, Mapping):
            current = out.get(name)
            out[name] = merge_patch(current if isinstance(current, dict) else {}, value)
        else:
            out[name] = value
    return out


def parse_json(text: str | bytes, what: str) -> Any:
    """JSON text as a value; ``UsageError`` for malformed JSON, nesting too deep to parse,
    or the non-standard ``NaN``/``Infinity`` Python's json accepts."""

    def refuse(constant: str) -> Any:
        raise UsageError(f"{what}: {constant} is not JSON; give a number")

    try:
        return json.loads(text, parse_constant=refuse)
    except RecursionError:
        raise UsageError(f"{what} nests too deep (at most {MAX_DEPTH} levels)") from None
    except UnicodeDecodeError:
        raise UsageError(f"{what} is not UTF-8 text") from None
    except ValueError as exc:
        raise UsageError(f"{what} is not valid JSON ({exc})") from None


def apply_tags(tags: Iterable[str], add: Iterable[str], remove: Iterable[str]) -> list[str]:
    """The sorted, distinct tags after removing ``remove`` and adding ``add``."""
    gone = set(remove)
    return sorted({t for t in tags if t not in gone} | set(add))


def _show(text: str) -> str:
    """``text`` quoted for a one-line message, shortened and with control characters
    escaped (``repr`` escapes them)."""
    return repr(text if len(text) <= 80 else text[:77] + "...")


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    for t, name in names.items():
        if isinstance(value, t):
            return name
    if isinstance(value, int | float):
        return "a number"
    return type(value).__name__
