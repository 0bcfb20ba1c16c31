"""``max_delete``: how many deletes one sync may apply, as a count or a share of the dataset.

Written ``100`` (items) or ``"25%"`` / ``"2.5%"`` (of the items the dataset holds when the
sync starts) in the config file, and ``--max-delete 100`` / ``--max-delete 25%`` on the CLI.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import click

_COUNT = re.compile(r"[0-9]+")
_PERCENT = re.compile(r"([0-9]+(?:\.[0-9]+)?|\.[0-9]+)\s*%")
_FORMS = "a whole number of items (like 100) or a percentage (like 25%)"


@dataclass(frozen=True)
class MaxDelete:
    """A delete limit: exactly one of ``count`` (items, >= 0) and ``percent`` (0..100) is set.

    Construction with neither, both, or an out-of-range value raises ``ValueError``.
    """

    count: int | None = None
    percent: float | None = None

    def __post_init__(self) -> None:
        if (self.count is None) == (self.percent is None):
            raise ValueError("a delete limit is either a count or a percentage")
        if self.count is not None and (isinstance(self.count, bool) or self.count < 0):
            raise ValueError(f"a delete limit cannot be negative (got {self.count})")
        if self.percent is not None and not 0 <= self.percent <= 100:
            raise ValueError(f"a delete limit must be between 0% and 100% (got {self.percent:g}%)")

    def limit(self, known_items: int) -> int:
        """How many deletes are allowed for a dataset of ``known_items`` items: the count, or
        ``percent`` of ``known_items`` rounded down (so ``"10%"`` of 5 items allows 0)."""
        if self.count is not None:
            return self.count
        assert self.percent is not None
        # Decimal of the float's shortest repr: 0.29% of 10000 is 29, where float math says 28
        return math.floor(Decimal(repr(self.percent)) * known_items / 100)

    def __str__(self) -> str:
        if self.count is not None:
            return str(self.count)
        return f"{self.percent:g}%"


def parse_max_delete(text: str) -> MaxDelete:
    """``"100"`` -> ``MaxDelete(count=100)``, ``"25%"`` / ``"2.5%"`` -> ``MaxDelete(percent=...)``.

    Raises ``ValueError`` with a one-line message for anything else (negative, over 100%, a
    fractional count, not a number).
    """
    stripped = text.strip()
    if _COUNT.fullmatch(stripped):
        return MaxDelete(count=int(stripped))
    match = _PERCENT.fullmatch(stripped)
    if match is None:
        raise ValueError(f"{text!r} is not a delete limit: expected {_FORMS}")
    return MaxDelete(percent=float(match[1]))


class MaxDeleteType(click.ParamType):
    """A click option type for ``--max-delete N|P%``; the value is a :class:`MaxDelete`."""

    name = "N|P%"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> MaxDelete:
        if isinstance(value, MaxDelete):
            return value
        try:
            return parse_max_delete(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
