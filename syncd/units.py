"""Sizes with units, for ``--max-size`` and ``max_size`` in the config file.

The rule, in one place (the ``--help`` text and the README repeat it):

* a plain number is bytes: ``1048576``;
* decimal units are powers of 1000: ``kB``, ``MB``, ``GB``, ``TB``, and the shorthand ``k``,
  ``M``, ``G``, ``T`` means the same (``500k`` = 500,000 bytes);
* binary units are powers of 1024: ``KiB``, ``MiB``, ``GiB``, ``TiB``;
* units are case-insensitive (``10mb`` = ``10MB``), ``B`` alone is bytes, a space between the
  number and the unit is allowed, and a decimal number is allowed (``1.5GiB``); a fraction of
  a byte left over is rounded down.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import click

#: multiplier per unit, keyed by the unit in lower case
UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    **{p: 1000**n for n, p in enumerate("kmgt", start=1)},
    **{f"{p}b": 1000**n for n, p in enumerate("kmgt", start=1)},
    **{f"{p}ib": 1024**n for n, p in enumerate("kmgt", start=1)},
}
UNITS_HELP = (
    "kB, MB, GB, TB or k, M, G, T = powers of 1000; KiB, MiB, GiB, TiB = powers of 1024; any case"
)

_SIZE = re.compile(r"(?P<number>[0-9]+(?:\.[0-9]+)?|\.[0-9]+)\s*(?P<unit>[A-Za-z]*)")


def parse_size(text: str) -> int:
    """The number of bytes ``text`` names, by the rule in this module's docstring.

    Raises ``ValueError`` with a one-line message saying what is wrong (a negative number, an
    unknown unit, no number at all).
    """
    stripped = text.strip()
    match = _SIZE.fullmatch(stripped)
    if match is None:
        why = "sizes cannot be negative" if stripped.startswith("-") else "expected a number"
        raise ValueError(f"{text!r} is not a size: {why} (like 1048576, 10MB or 1.5GiB)")
    unit = match["unit"]
    factor = UNITS.get(unit.lower())
    if factor is None:
        raise ValueError(f"{text!r} is not a size: unknown unit {unit!r} (use B or {UNITS_HELP})")
    # Decimal, not float: 1.1 * 1000 must be 1100, not 1100.0000000000002
    return int(Decimal(match["number"]) * factor)


class SizeType(click.ParamType):
    """A click option type for sizes: ``--max-size 10MB``. The value is an ``int`` of bytes."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        try:
            return parse_size(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
