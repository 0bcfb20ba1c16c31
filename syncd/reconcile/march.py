"""The reconciler's core: a pure merge ("march") of two key-sorted streams.

``march(listing, known)`` walks the bucket listing and the dataset's items side by side, both in
key order, and says for every key whether it is new (``CREATE``), changed (``UPDATE``), the same
(``UNCHANGED``) or gone (``DELETE``). It holds one record of each stream at a time, so memory
does not grow with the bucket. It does no I/O of its own and decides nothing about *when* to
apply a change: that is :mod:`syncd.reconcile.sync`'s job (deletes wait for a complete listing).

An out-of-order listing raises :class:`~syncd.errors.ListingOrderError` instead of producing a
wrong plan.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Protocol

from providers.base import ObjectInfo
from syncd.errors import ListingOrderError


class Known(Protocol):
    """What the reconciler needs of a catalog item."""

    key: str
    size: int
    etag: str
    version: str | None


class Action(enum.StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    UNCHANGED = "unchanged"


@dataclass(frozen=True, slots=True)
class Change:
    action: Action
    key: str
    obj: ObjectInfo | None = None  # the listing's record (absent for DELETE)
    known: Known | None = None  # the catalog's record (absent for CREATE)


def is_changed(obj: ObjectInfo, known: Known) -> bool:
    """An object changed if its ETag or size differ, or its version marker when it has one."""
    if obj.etag != known.etag or obj.size != known.size:
        return True
    return obj.version is not None and obj.version != known.version


_END = object()


async def march(
    listing: AsyncIterable[ObjectInfo], known: Iterable[Known]
) -> AsyncIterator[Change]:
    """Merge a sorted listing with sorted catalog items into one sorted stream of changes."""
    known_it = iter(known)
    k = next(known_it, _END)
    last_key: str | None = None
    async for obj in listing:
        if last_key is not None and obj.key <= last_key:
            raise ListingOrderError(
                f"listing returned {obj.key!r} after {last_key!r}: keys must be strictly "
                "increasing; refusing to reconcile (nothing deleted)"
            )
        last_key = obj.key
        while k is not _END and k.key < obj.key:
            yield Change(Action.DELETE, k.key, known=k)
            k = next(known_it, _END)
        if k is not _END and k.key == obj.key:
            action = Action.UPDATE if is_changed(obj, k) else Action.UNCHANGED
            yield Change(action, obj.key, obj=obj, known=k)
            k = next(known_it, _END)
        else:
            yield Change(Action.CREATE, obj.key, obj=obj)
    while k is not _END:
        yield Change(Action.DELETE, k.key, known=k)
        k = next(known_it, _END)
