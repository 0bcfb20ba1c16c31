"""TEMPORARY stand-in (replaced by the config-schema branch's module on merge)."""

from __future__ import annotations

from dataclasses import dataclass

import click


@dataclass(frozen=True)
class MaxDelete:
    count: int | None = None
    percent: float | None = None

    def limit(self, known_items: int) -> int:
        if self.count is not None:
            return self.count
        assert self.percent is not None
        return int(known_items * self.percent / 100)


def parse_max_delete(text: str) -> MaxDelete:
    text = text.strip()
    if text.endswith("%"):
        return MaxDelete(percent=float(text[:-1]))
    return MaxDelete(count=int(text))


class MaxDeleteType(click.ParamType):
    name = "N|P%"

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        if isinstance(value, MaxDelete):
            return value
        try:
            return parse_max_delete(value)
        except ValueError:
            self.fail(f"{value!r} is not a count or a percentage like 25%", param, ctx)
