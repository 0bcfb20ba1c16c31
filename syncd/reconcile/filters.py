"""Which objects under a driver's path belong in a dataset."""

from __future__ import annotations

import json
from dataclasses import dataclass
from fnmatch import fnmatchcase


@dataclass(frozen=True)
class Filters:
    """Include/exclude globs and a size limit, applied to keys *relative to the driver path*.

    Globs use :func:`fnmatch.fnmatchcase` rules: ``*`` matches any run of characters including
    ``/`` (so ``*.jpg`` matches ``a/b/c.jpg``), ``?`` one character, ``[...]`` a set. With no
    ``include`` everything is included; an object matching any ``exclude`` is left out; objects
    larger than ``max_size`` bytes are left out.
    """

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    max_size: int | None = None

    def __post_init__(self) -> None:
        if self.max_size is not None and self.max_size < 0:
            raise ValueError("max_size must not be negative")

    @property
    def accepts_all(self) -> bool:
        """True when no filter is set (every object is accepted: no per-object check)."""
        return not self.include and not self.exclude and self.max_size is None

    def accepts(self, relative_key: str, size: int) -> bool:
        if self.max_size is not None and size > self.max_size:
            return False
        if self.include and not any(fnmatchcase(relative_key, g) for g in self.include):
            return False
        return not any(fnmatchcase(relative_key, g) for g in self.exclude)

    def to_json(self) -> str:
        return json.dumps(
            {
                "include": list(self.include),
                "exclude": list(self.exclude),
                "max_size": self.max_size,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> Filters:
        raw = json.loads(text or "{}")
        return cls(
            include=tuple(raw.get("include") or ()),
            exclude=tuple(raw.get("exclude") or ()),
            max_size=raw.get("max_size"),
        )
