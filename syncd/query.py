"""The one query model over a dataset's items, and the ``--where`` syntax that builds it.

The HTTP API (repeated ``where=`` parameters), the CLI (``syncd items ls|count|summary
--where ...``) and the Python API (``syncd.items(dataset, where=...)``) all parse the same
expressions with :func:`parse_where` into a :class:`Query`; the store compiles a query to SQL
(:mod:`syncd.store.query_sql`). Nothing here touches a store.

An expression is ``FIELD OP VALUE`` (spaces around the operator allowed); every expression
of a query must hold (AND):

===========================  ==================================================================
``prefix=raw/2026/``          the key starts with ``raw/2026/``
``key=raw/**/*.jpg``          the key matches a glob: ``*`` any run of characters but ``/``,
                              ``?`` one character but ``/``, ``**`` any run including ``/``
                              (``**/`` also none: ``raw/**/*.jpg`` matches ``raw/a.jpg``),
                              ``\\`` makes the next character literal; no wildcard: the exact key
``content_type=image/jpeg``   the content type is exactly that; ``image/*``: any ``image/`` type
``size>1MB``                  size compared with ``=``, ``<``, ``<=``, ``>``, ``>=``; units as
                              ``--max-size`` (:mod:`syncd.units`)
``mtime>=2026-01-01``         the object's modification time (a date or an ISO time, UTC
                              unless it says otherwise), same operators
``updated>=2026-03-01T12:00``  changed in the catalog since (``updated_at``), same operators
``metadata.user.site=berlin``  a metadata field equals the value; ``=a,b``: any of them;
                              ``metadata.user.site`` alone: the field exists.
                              ``metadata.user.X``: the user's metadata; ``metadata.X``: the
                              provider's part (``metadata.provider.X``,
                              ``metadata.object_tags.X``). A name with a dot or other
                              characters beyond ``A-Z a-z 0-9 _ -`` is written in double quotes:
                              ``metadata.user."a.b"``
``tags~review``, ``tags~a,b``  has the tag (any of them); ``tags=a,b``: has all of them
===========================  ==================================================================

Metadata values: ``true``, ``false``, ``null`` and numbers are JSON values, and a number also
matches the same text as a string (``metadata.provider.year=2026`` matches ``"2026"``, which
is how providers store it, and the number ``2026``); a value in double quotes is exactly
that string (JSON escapes); anything else is a string.

A bad expression raises :class:`QueryError` (a ``ValueError``) with one line saying what is
wrong and how it should look.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, date, datetime, time
from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from syncd.units import parse_size

#: at most this many ``where`` expressions in one query, values in one list, characters in one
#: expression, segments in a metadata path, characters in one segment
MAX_TERMS = 32
MAX_VALUES = 100
MAX_EXPRESSION = 4096
MAX_DEPTH = 16
MAX_SEGMENT = 256
#: the largest number a metadata value may be compared with (beyond it JSON numbers lose
#: precision in one store or the other)
MAX_NUMBER = 2**53
#: the largest size (bytes) a query may name
MAX_SIZE = 2**63 - 1
#: at most this many wildcards (``*``, ``**``, ``?``) in one key pattern
MAX_WILDCARDS = 16

SORTS = ("key", "size", "mtime")
ORDERS = ("asc", "desc")
GROUPS = ("content_type", "folder")


class QueryError(ValueError):
    """A query that cannot be run: the message is one line for the user."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _check_text(value: str, what: str) -> str:
    if "\x00" in value:
        raise ValueError(f"{what} cannot contain a NUL character")
    return value


class KeyGlob(_Model):
    """The key matches ``pattern`` (see the module docstring)."""

    kind: Literal["glob"] = "glob"
    pattern: str

    _text = field_validator("pattern")(lambda v: _check_text(v, "a key pattern"))

    @property
    def literal_prefix(self) -> str:
        """The characters before the first wildcard: every matching key starts with them."""
        out = []
        chars = iter(self.pattern)
        for ch in chars:
            if ch in "*?":
                break
            if ch == "\\":
                ch = next(chars, "\\")
            out.append(ch)
        return "".join(out)

    @property
    def is_exact(self) -> bool:
        """True when the pattern has no wildcard: it names one key."""
        return not _has_wildcard(self.pattern)

    def regex(self) -> str:
        """The pattern as an anchored regular expression both Python's ``re`` and
        PostgreSQL's ``~`` read the same way: every literal character other than a letter or
        digit is escaped with ``\\``, which both take as that character."""
        return glob_regex(self.pattern)


class ContentType(_Model):
    """The content type is ``value``, or starts with ``value`` less its ``*`` (``image/*``)."""

    kind: Literal["content_type"] = "content_type"
    value: str

    _text = field_validator("value")(lambda v: _check_text(v, "a content type"))

    @property
    def prefix(self) -> str | None:
        """``image/`` for ``image/*``; None for an exact type."""
        return self.value[:-1] if self.value.endswith("/*") else None


class Compare(_Model):
    """``field op value``: size in bytes, ``mtime`` and ``updated_at`` as the catalog's time
    text (see :func:`time_bound`)."""

    kind: Literal["compare"] = "compare"
    field: Literal["size", "mtime", "updated_at"]
    op: Literal["=", "<", "<=", ">", ">="]
    value: int | str


class Meta(_Model):
    """A metadata field at ``path`` in ``column`` (``user_metadata`` or ``metadata``) exists
    (``values`` empty) or equals one of ``values`` (each a JSON scalar as text: the type counts,
    ``"5"`` is not ``5``)."""

    kind: Literal["meta"] = "meta"
    column: Literal["user_metadata", "metadata"]
    path: tuple[str, ...] = Field(min_length=1, max_length=MAX_DEPTH)
    values: tuple[str, ...] = Field(default=(), max_length=2 * MAX_VALUES)

    @field_validator("path")
    @classmethod
    def _segments(cls, path: tuple[str, ...]) -> tuple[str, ...]:
        for segment in path:
            check_segment(segment)
        return path

    @field_validator("values")
    @classmethod
    def _scalars(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        for v in values:
            parsed = json.loads(v)
            if isinstance(parsed, (dict, list)):
                raise ValueError("metadata values must be JSON scalars")
        return values

    def scalars(self) -> list[Any]:
        return [json.loads(v) for v in self.values]


class Tags(_Model):
    """The item has any / all of ``tags``."""

    kind: Literal["tags"] = "tags"
    mode: Literal["any", "all"]
    tags: tuple[str, ...] = Field(min_length=1, max_length=MAX_VALUES)


Condition = Annotated[KeyGlob | ContentType | Compare | Meta | Tags, Field(discriminator="kind")]


class Query(_Model):
    """What to select (``prefix`` and every condition of ``where``) and in which order: by
    ``sort`` (``key``, ``size`` or ``mtime``; ties by key) ``order`` (``asc``/``desc``)."""

    prefix: str = ""
    where: tuple[Condition, ...] = Field(default=(), max_length=MAX_TERMS)
    sort: Literal["key", "size", "mtime"] = "key"
    order: Literal["asc", "desc"] = "asc"

    _text = field_validator("prefix")(lambda v: _check_text(v, "a prefix"))


# -- the --where syntax ------------------------------------------------------------------

_FIELD = re.compile(
    r"""\s*(?P<field>[A-Za-z_]+(?:\.(?:[A-Za-z0-9_\-]+|"(?:[^"\\]|\\.)*"))*)\s*"""
    r"(?P<op><=|>=|=|<|>|~)?"
)
_SEGMENT = re.compile(r"""\.(?:(?P<bare>[A-Za-z0-9_\-]+)|(?P<quoted>"(?:[^"\\]|\\.)*"))""")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_DATE_HELP = "a date like 2026-01-31 or a time like 2026-01-31T12:00:00Z"
_FIELDS_HELP = (
    "prefix=, key=, content_type=, size, mtime, updated, metadata.user.NAME, metadata.NAME, tags"
)


def parse_where(
    expressions: Iterable[str],
    *,
    prefix: str = "",
    sort: str = "key",
    order: str = "asc",
) -> Query:
    """The :class:`Query` of ``expressions`` (each one ``FIELD OP VALUE``, see the module
    docstring), under ``prefix``, sorted by ``sort`` ``order``. Raises :class:`QueryError`."""
    if sort not in SORTS:
        raise QueryError(f"cannot sort by {sort!r}; sort by one of {', '.join(SORTS)}")
    if order not in ORDERS:
        raise QueryError(f"order {order!r}: use asc or desc")
    _check_prefix(prefix)
    conditions: list[Any] = []
    expressions = list(expressions)
    if len(expressions) > MAX_TERMS:
        raise QueryError(f"at most {MAX_TERMS} where expressions in one query")
    for text in expressions:
        found = parse_expression(text)
        if isinstance(found, str):
            if not prefix:
                prefix = found
            elif found:  # a second prefix: the same as a glob of it followed by **
                conditions.append(KeyGlob(pattern=escape_glob(found) + "**"))
        else:
            conditions.append(found)
    try:
        return Query(prefix=prefix, where=tuple(conditions), sort=sort, order=order)  # type: ignore[arg-type]
    except ValueError as exc:  # pydantic's ValidationError is one
        raise QueryError(_one_line(exc)) from None


def parse_expression(text: str) -> Any:
    """One ``--where`` expression as a condition, or as a ``str`` for ``prefix=...``."""
    if not isinstance(text, str):
        raise QueryError("a where expression must be text like size>1MB")
    if len(text) > MAX_EXPRESSION:
        raise QueryError(f"a where expression is at most {MAX_EXPRESSION} characters")
    if "\x00" in text:
        raise QueryError("a where expression cannot contain a NUL character")
    match = _FIELD.match(text)
    if match is None or not match["field"]:
        raise QueryError(
            f"{_show(text)}: expected FIELD OP VALUE, like size>1MB; fields: {_FIELDS_HELP}"
        )
    field, op = match["field"], match["op"]
    value = text[match.end() :].strip() if op else ""
    if op is None and text[match.end() :].strip():
        raise QueryError(
            f"{_show(text)}: unknown operator after {field!r}; use =, <, <=, >, >= or ~"
        )
    head = field.split(".", 1)[0]
    try:
        if head == "metadata":
            return _meta(field, op, value)
        if op is None:
            raise QueryError(
                f"{_show(text)}: {field!r} needs an operator and a value, like size>1MB"
            )
        if field == "prefix":
            _need(op, ("=",), field)
            _check_prefix(value)
            return value
        if field == "key":
            _need(op, ("=",), field)
            if not value:
                raise QueryError("key= needs a key or a pattern, like key=raw/**/*.jpg")
            if _wildcards(value) > MAX_WILDCARDS:
                raise QueryError(
                    f"key={_show(value)}: at most {MAX_WILDCARDS} wildcards in a pattern"
                )
            return KeyGlob(pattern=value)
        if field == "content_type":
            _need(op, ("=",), field)
            if not value or "*" in value.removesuffix("/*"):
                raise QueryError(
                    f"content_type={value}: give a type like image/jpeg, or image/* for any image type"
                )
            return ContentType(value=value)
        if field == "size":
            _need(op, ("=", "<", "<=", ">", ">="), field)
            n = parse_size(value)
            if n > MAX_SIZE:
                raise QueryError(f"size {value!r} is larger than any object can be")
            return Compare(field="size", op=op, value=n)  # type: ignore[arg-type]
        if field in ("mtime", "updated", "updated_at"):
            _need(op, ("=", "<", "<=", ">", ">="), field)
            column = "mtime" if field == "mtime" else "updated_at"
            return Compare(field=column, op=op, value=time_bound(value, column))  # type: ignore[arg-type]
        if field == "tags":
            _need(op, ("~", "="), field)
            tags = [json.loads(v) for v in _values(value, typed=False)]
            return Tags(mode="any" if op == "~" else "all", tags=tuple(tags))
    except QueryError:
        raise
    except ValueError as exc:
        raise QueryError(f"{_show(text)}: {_one_line(exc)}") from None
    raise QueryError(f"{_show(text)}: unknown field {field!r}; fields: {_FIELDS_HELP}")


def _meta(field: str, op: str | None, value: str) -> Meta:
    segments = []
    for m in _SEGMENT.finditer(field, len("metadata")):
        if m["bare"] is not None:
            segments.append(m["bare"])
        else:
            try:
                segments.append(json.loads(m["quoted"]))
            except ValueError:
                raise QueryError(f"{field}: a quoted name must be a JSON string") from None
    if not segments:
        raise QueryError("metadata needs a field: metadata.user.NAME or metadata.provider.NAME")
    column = "metadata"
    if segments[0] == "user" and field.startswith("metadata.user"):
        column, segments = "user_metadata", segments[1:]
        if not segments:
            raise QueryError("metadata.user needs a field: metadata.user.NAME")
    if len(segments) > MAX_DEPTH:
        raise QueryError(f"{field}: a metadata path has at most {MAX_DEPTH} names")
    for segment in segments:
        check_segment(segment)
    if op is None:
        return Meta(column=column, path=tuple(segments))  # type: ignore[arg-type]
    _need(op, ("=",), field)
    values = _values(value, typed=True)
    return Meta(column=column, path=tuple(segments), values=tuple(values))  # type: ignore[arg-type]


def check_segment(segment: str) -> str:
    """Refuse a metadata path name a query cannot address safely: empty, longer than
    :data:`MAX_SEGMENT`, or with a double quote, a backslash or a control character (sqlite's
    JSON paths have no escape for a quote)."""
    if not segment:
        raise QueryError("a metadata name in a query cannot be empty")
    if len(segment) > MAX_SEGMENT:
        raise QueryError(f"a metadata name in a query is at most {MAX_SEGMENT} characters")
    if '"' in segment or "\\" in segment or any(ord(c) < 0x20 or ord(c) == 0x7F for c in segment):
        raise QueryError(
            f"metadata name {segment!r}: names with quotes, backslashes or control characters"
            " cannot be queried"
        )
    return segment


def _values(text: str, *, typed: bool) -> list[str]:
    """A comma-separated list of values (each bare, or a JSON string in double quotes), as
    JSON texts; with ``typed``, bare ``true``/``false``/``null`` and numbers are JSON values
    and a number is also listed as its text (a string)."""
    out: list[str] = []
    rest = text
    count = 0
    while True:
        count += 1
        if count > MAX_VALUES:
            raise QueryError(f"at most {MAX_VALUES} values in one expression")
        rest = rest.lstrip()
        if rest.startswith('"'):
            try:
                value, end = json.JSONDecoder().raw_decode(rest)
            except ValueError:
                raise QueryError(
                    f"{_show(text)}: an unterminated or malformed quoted value"
                ) from None
            out.append(json.dumps(value))
            rest = rest[end:].lstrip()
        else:
            cut = rest.find(",")
            word = (rest if cut < 0 else rest[:cut]).strip()
            rest = "" if cut < 0 else rest[cut:]
            if not word:
                raise QueryError(f'{_show(text)}: an empty value; quote an empty string as ""')
            if typed and word in ("true", "false", "null"):
                out.append(word)
            elif typed and _NUMBER.fullmatch(word):
                number = float(word) if any(c in word for c in ".eE") else int(word)
                if not math.isfinite(number) or abs(number) > MAX_NUMBER:
                    raise QueryError(f"{word}: numbers in a query must be within ±2**53")
                out.extend([json.dumps(number), json.dumps(word)])
            else:
                out.append(json.dumps(word))
        if not rest:
            break
        if not rest.startswith(","):
            raise QueryError(f"{_show(text)}: separate values with commas")
        rest = rest[1:]
    return list(dict.fromkeys(out))


def time_bound(text: str, column: str) -> str:
    """``text`` (a date or an ISO time; UTC unless it has an offset) as the text the
    catalog's ``column`` compares in time order: ``updated_at`` is the catalog's own
    fixed format (:func:`syncd.store.stamps.stamp`); ``mtime`` keeps its source's form
    (``...:05Z`` or ``...:05.123456Z``), compared by :func:`mtime_order`."""
    text = text.strip()
    try:
        if re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", text):
            when = datetime.combine(date.fromisoformat(text), time(), UTC)
        else:
            when = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
        when = when.astimezone(UTC)
    except (ValueError, OverflowError):
        raise QueryError(f"{text!r} is not a time: use {_DATE_HELP}") from None
    if column == "updated_at":
        return when.isoformat(timespec="microseconds").replace("+00:00", "Z")
    return mtime_order(when.isoformat().replace("+00:00", "Z"))


def mtime_order(mtime: str) -> str:
    """The form of an item's ``mtime`` text that sorts in time order: without its ``Z``.

    Items keep the modification time as their source wrote it, ``isoformat`` style: whole
    seconds as ``...:05Z``, else ``...:05.123456Z``; as text ``...:05Z`` sorts *after*
    ``...:05.5Z`` ('Z' > '.'), without the ``Z`` it sorts before, as it should."""
    return mtime.removesuffix("Z")


# -- globs -------------------------------------------------------------------------------


def escape_glob(text: str) -> str:
    """``text`` as a glob that matches exactly it."""
    return re.sub(r"([*?\\])", r"\\\1", text)


def _has_wildcard(pattern: str) -> bool:
    escaped = False
    for ch in pattern:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch in "*?":
            return True
    return False


@lru_cache(maxsize=256)
def glob_regex(pattern: str) -> str:
    """``pattern`` as an anchored regular expression (see :class:`KeyGlob`)."""
    out = ["^"]
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "\\" and i + 1 < n:
            out.append(_literal(pattern[i + 1]))
            i += 2
            continue
        if pattern.startswith("**/", i):
            out.append("(.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif ch == "*":
            out.append("[^/]*")
            i += 1
        elif ch == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(_literal(ch))
            i += 1
    out.append("$")
    return "".join(out)


def _literal(ch: str) -> str:
    # ASCII letters and digits stand for themselves; every other character is escaped, and a
    # backslash before a non-alphanumeric character is that character in both dialects.
    # Non-ASCII characters stand for themselves too (neither dialect gives them a meaning).
    if ch.isascii() and ch.isalnum():
        return ch
    if not ch.isascii():
        return ch
    return "\\" + ch


@lru_cache(maxsize=256)
def compiled_glob(pattern: str) -> re.Pattern[str]:
    """The compiled :func:`glob_regex` (``.`` matches a newline too, as in PostgreSQL)."""
    return re.compile(glob_regex(pattern), re.DOTALL)


@lru_cache(maxsize=256)
def glob_matcher(pattern: str) -> Callable[[str], bool]:
    """A function telling whether a key matches ``pattern``, in time bounded by the key's
    length times the pattern's: Python's backtracking ``re`` for a pattern with at most two
    stars (a quadratic worst case), else :class:`_GlobNFA`. A pattern like ``*a*a*a*a*b``
    would otherwise make ``re`` try every way to place the ``a``s in a long key of ``a``s."""
    if sum(1 for t in _tokens(pattern) if t[0] in ("star", "dstar", "dskip")) <= 2:
        match = compiled_glob(pattern).match
        return lambda key: match(key) is not None
    return _GlobNFA(pattern).matches


def _tokens(pattern: str) -> list[tuple[str, str]]:
    """The pattern as tokens: ``("lit", c)``, ``("any", "")`` for ``?``, ``("star", "")``,
    ``("dstar", "")`` for ``**``, and for ``**/`` (none, or any run ending in ``/``) two:
    ``("dskip", "")`` (may skip the run) then ``("dloop", "")`` (the run, left on a ``/``)."""
    out: list[tuple[str, str]] = []
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "\\" and i + 1 < n:
            out.append(("lit", pattern[i + 1]))
            i += 2
        elif pattern.startswith("**/", i):
            out += [("dskip", ""), ("dloop", "")]
            i += 3
        elif pattern.startswith("**", i):
            out.append(("dstar", ""))
            i += 2
        elif ch == "*":
            out.append(("star", ""))
            i += 1
        elif ch == "?":
            out.append(("any", ""))
            i += 1
        else:
            out.append(("lit", ch))
            i += 1
    return out


class _GlobNFA:
    """The glob as a nondeterministic automaton run over the key one character at a time,
    all states at once as the bits of an int (bit ``i``: the first ``i`` tokens matched):
    linear in the key's length whatever the pattern."""

    def __init__(self, pattern: str) -> None:
        tokens = _tokens(pattern)
        self.final = 1 << len(tokens)
        self.lit: dict[str, int] = {}
        self.any = 0  # "?" tokens: any character but "/"
        self.star = 0  # "*": stays on any character but "/"; may match nothing
        self.dstar = 0  # "**": stays on any character; may match nothing
        self.dskip = 0  # "**/", entry: into its run, or past it (matching nothing)
        self.dloop = 0  # "**/", run: stays on any character, leaves on "/"
        for i, (kind, ch) in enumerate(tokens):
            bit = 1 << i
            if kind == "lit":
                self.lit[ch] = self.lit.get(ch, 0) | bit
            else:
                setattr(self, kind, getattr(self, kind) | bit)
        self.empty = self.star | self.dstar | self.dskip

    def _close(self, state: int) -> int:
        while True:
            more = state | ((state & self.empty) << 1) | ((state & self.dskip) << 2)
            if more == state:
                return state
            state = more

    def matches(self, key: str) -> bool:
        state = self._close(1)
        for ch in key:
            if ch == "/":
                step = ((state & (self.lit.get(ch, 0) | self.dloop)) << 1) | (
                    state & (self.dstar | self.dloop)
                )
            else:
                step = ((state & (self.lit.get(ch, 0) | self.any)) << 1) | (
                    state & (self.star | self.dstar | self.dloop)
                )
            state = self._close(step)
            if not state:
                return False
        return bool(state & self.final)


def _wildcards(pattern: str) -> int:
    return sum(1 for kind, _ in _tokens(pattern) if kind not in ("lit", "dloop"))


# -- cursors -----------------------------------------------------------------------------


def encode_cursor(query: Query, sort_value: Any, key: str) -> str:
    """An opaque cursor after the item with ``key`` (and ``sort_value`` in the query's sort):
    the next page starts right after it, whatever was added or removed in between."""
    raw = json.dumps([query.sort, query.order, sort_value, key], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(query: Query, cursor: str) -> tuple[Any, str]:
    """``(sort value, key)`` of a cursor from :func:`encode_cursor` for this query's sort and
    order. Raises :class:`QueryError` for anything else."""
    bad = QueryError("malformed cursor: pass back next_cursor unchanged, with the same sort")
    if not isinstance(cursor, str) or len(cursor) > 8192:
        raise bad
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        value = json.loads(base64.b64decode(padded, altchars=b"-_", validate=True).decode())
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise bad from None
    if not (isinstance(value, list) and len(value) == 4):
        raise bad
    sort, order, sort_value, key = value
    if sort != query.sort or order != query.order or not isinstance(key, str) or "\x00" in key:
        raise bad
    if sort == "key":
        sort_value = key
    elif sort == "size":
        if not isinstance(sort_value, int) or isinstance(sort_value, bool):
            raise bad
    elif not isinstance(sort_value, str) or "\x00" in sort_value:
        raise bad
    return sort_value, key


def sort_value(query: Query, item: Any) -> Any:
    """The value of ``item`` (an :class:`~syncd.store.catalog.Item`) the query sorts by."""
    if query.sort == "size":
        return item.size
    if query.sort == "mtime":
        return mtime_order(item.mtime)
    return item.key


# -- helpers -----------------------------------------------------------------------------


def _need(op: str, allowed: Sequence[str], field: str) -> None:
    if op not in allowed:
        raise QueryError(f"{field} takes {' or '.join(allowed)}, not {op}")


def _check_prefix(prefix: str) -> None:
    if not isinstance(prefix, str) or "\x00" in prefix:
        raise QueryError("a prefix must be text without NUL characters")
    if len(prefix) > MAX_EXPRESSION:
        raise QueryError(f"a prefix is at most {MAX_EXPRESSION} characters")


def _show(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:77] + "...")


def _one_line(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
    return str(exc).splitlines()[0]
