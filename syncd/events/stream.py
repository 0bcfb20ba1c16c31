"""Read event payloads from a file as a stream, record by record: JSON lines one line at a time.

``syncd events apply FILE`` takes what :func:`syncd.events.parse.parse_text` takes: one JSON
payload (object or array, on one line or pretty-printed over many) or JSON lines. A JSON
document's first line is a complete JSON value only when the whole document is that one line
(a value followed by more than white space is not JSON), so the first non-empty line decides:

* it parses: the input is JSON lines (one line is the one-payload case), parsed and yielded
  line by line, so memory holds one line and its events, never the whole file;
* it does not: the input is one multi-line payload, read whole (one payload is one unit
  anyway). If that is not JSON either but some later line is a JSON object or array, the input
  is JSON lines whose first line is broken, read as such.

One bad record does not refuse the rest. Each *record* is parsed on its own: a line, and within
a line (or the one payload) each element of a top-level array and each element of a
``Records`` list. A record that is not an event payload is yielded as a :class:`Refused` naming
its position (``line 3``, ``line 3, record 2``, ``item 4``; lines count non-empty lines,
positions count from 1) and the reason; the records around it are yielded as usual. The
records of a ``Records`` list that are all good come as one :class:`Parsed`.

Only an input with no record to read raises :class:`~syncd.events.parse.EventFormatError`
(nothing but white space, one payload that is not JSON or not UTF-8, or one nested too deeply
to decode), with the messages ``parse_text`` gives; then nothing has been yielded.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from syncd.events.parse import EventFormatError, Parsed, parse, parse_record, parse_text
from syncd.events.parse import records as parse_records


@dataclass(frozen=True, slots=True)
class Refused:
    """A record of the input that is not an event payload: where it is, and why."""

    position: str
    reason: str

    def __str__(self) -> str:
        return f"{self.position}: {self.reason}"


def _text(line: bytes) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        raise EventFormatError("payload is not UTF-8 text") from None


def _records(payload: Any, where: str, *, top: bool = True) -> Iterator[Parsed | Refused]:
    """The parsed records of one decoded payload at position ``where``: each element of a
    top-level array and of a ``Records`` list on its own (a bad one refused, not the rest),
    anything else as one record. Arrays inside arrays are parsed whole (:func:`parse` guards
    against any depth; a recursion here would not)."""
    sep = ", " if where else ""
    if top and isinstance(payload, list):
        for number, item in enumerate(payload, 1):
            yield from _records(item, f"{where}{sep}item {number}", top=False)
        return
    records = payload.get("Records") if isinstance(payload, dict) else None
    if isinstance(records, list) and payload.get("Event") != "s3:TestEvent":
        # the common case, every record good: one Parsed for the list (no object per record);
        # else each record again on its own, to refuse the bad ones by position
        try:
            yield parse_records(records)
            return
        except EventFormatError:
            pass
        for number, record in enumerate(records, 1):
            yield _one(parse_record, record, f"{where}{sep}record {number}")
        return
    yield _one(parse, payload, where or "payload")


def _one(parser: Any, value: Any, where: str) -> Parsed | Refused:
    try:
        return parser(value)
    except EventFormatError as exc:
        return Refused(where, str(exc))


def _line(raw: bytes, number: int) -> Iterator[Parsed | Refused]:
    """The records of JSON line ``number``."""
    where = f"line {number}"
    try:
        payload = json.loads(_text(raw))
    except EventFormatError as exc:
        yield Refused(where, str(exc))
        return
    except json.JSONDecodeError as exc:
        yield Refused(where, f"not valid JSON: {exc.msg}")
        return
    except RecursionError:
        yield Refused(where, "payload is nested too deeply to be an event")
        return
    yield from _records(payload, where)


def _json_object_line(raw: bytes) -> bool:
    try:
        return isinstance(json.loads(raw), dict | list)
    except (ValueError, RecursionError):
        return False


def read_payloads(file: BinaryIO | Iterable[bytes]) -> Iterator[Parsed | Refused]:
    """The records of ``file`` (bytes, read lazily), parsed one by one: a :class:`Parsed`
    per good record, a :class:`Refused` per bad one (see the module docstring)."""
    lines = iter(file)
    head: list[bytes] = []
    for raw in lines:
        head.append(raw)
        if raw.strip():
            break
    else:
        # nothing but white space: parse_text's own error for it
        yield parse_text(b"".join(head))
        return
    try:
        first = json.loads(_text(head[-1]))
    except (json.JSONDecodeError, EventFormatError):
        yield from _whole(b"".join(head) + b"".join(lines))
        return
    except RecursionError:
        raise EventFormatError("payload is nested too deeply to be an event") from None
    yield from _records(first, "line 1")
    number = 1
    for raw in lines:
        if not raw.strip():
            continue
        number += 1
        yield from _line(raw, number)


def _whole(data: bytes) -> Iterator[Parsed | Refused]:
    """One multi-line payload, or JSON lines whose first line is broken."""
    try:
        text = _text(data)
        payload = json.loads(text)
    except (json.JSONDecodeError, EventFormatError) as exc:
        lines = [line for line in data.splitlines() if line.strip()]
        if not any(_json_object_line(line) for line in lines[1:]):
            if isinstance(exc, EventFormatError):
                raise  # not UTF-8, and not JSON lines either
            yield parse_text(text)  # raises: not JSON, and not JSON lines either
            return
        for number, raw in enumerate(lines, 1):
            yield from _line(raw, number)
        return
    except RecursionError:
        raise EventFormatError("payload is nested too deeply to be an event") from None
    yield from _records(payload, "")
