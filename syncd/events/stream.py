"""Read event payloads from a file as a stream: JSON lines one line at a time.

``syncd events apply FILE`` takes what :func:`syncd.events.parse.parse_text` takes: one JSON
payload (object or array, on one line or pretty-printed over many) or JSON lines. A JSON
document's first line is a complete JSON value only when the whole document is that one line
(a value followed by more than white space is not JSON), so the first non-empty line decides:

* it parses: the input is JSON lines (one line is the one-payload case), parsed and yielded
  line by line, so memory holds one line and its events, never the whole file;
* it does not: the input is one multi-line payload (or not JSON at all), read whole and given
  to ``parse_text``, which parses it or says what is wrong. One payload is one unit anyway.

Errors are :class:`~syncd.events.parse.EventFormatError` with the messages ``parse_text``
gives (``line N`` counts non-empty lines), raised when the bad line is reached: what came
before it has been yielded.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from syncd.events.parse import EventFormatError, Parsed, parse, parse_text


def _text(line: bytes) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        raise EventFormatError("payload is not UTF-8 text") from None


def read_payloads(file: BinaryIO | Iterable[bytes]) -> Iterator[Parsed]:
    """The parsed events of ``file`` (bytes, read lazily), one :class:`Parsed` per JSON line,
    or one for a single multi-line payload."""
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
    except json.JSONDecodeError:
        yield parse_text(b"".join(head) + b"".join(lines))
        return
    except RecursionError:
        raise EventFormatError("payload is nested too deeply to be an event") from None
    yield parse(first)
    number = 1
    for raw in lines:
        if not raw.strip():
            continue
        number += 1
        try:
            payload = json.loads(_text(raw))
        except json.JSONDecodeError as exc:
            raise EventFormatError(f"line {number} is not valid JSON: {exc.msg}") from None
        except RecursionError:
            raise EventFormatError("payload is nested too deeply to be an event") from None
        yield parse(payload)
