"""The reconciler's core: a pure merge ("march") of two key-sorted streams.

``march(listing, known)`` walks the bucket listing and the dataset's items side by side, both in
key order, and says for every key whether it is new (``CREATE``), changed (``UPDATE``), the same
(``UNCHANGED``) or gone (``DELETE``). It holds one record of each stream at a time, so memory
does not grow with the bucket. It does no I/O of its own and decides nothing about *when* to
apply a change: that is :mod:`syncd.reconcile.sync`'s job (deletes wait for a complete listing).

:func:`diff_page` is the same merge for one listing page at a time against the items of the
key range that page covers, with the common cases (a page of new keys, a page equal to the
catalog) decided in bulk by C-level list operations instead of a Python step per object: the
path :mod:`syncd.reconcile.sync` takes. Fed the pages of a listing and the items of their
ranges in order, it decides exactly what :func:`march` decides (``tests/test_page_diff.py``).

An out-of-order listing raises :class:`~syncd.errors.ListingOrderError` instead of producing a
wrong plan.
"""

from __future__ import annotations

import enum
import itertools
import operator
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
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


@dataclass(slots=True)
class PageDiff:
    """What one listing page changes: the listed objects to write (new, changed), the known
    items of the page's key range the page no longer has, and how many keys are the same. Each
    list is in key order."""

    creates: list[ObjectInfo] = field(default_factory=list)
    updates: list[ObjectInfo] = field(default_factory=list)
    deletes: list[KnownRow] = field(default_factory=list)
    unchanged: int = 0

    def changes(self) -> list[Change]:
        """The non-UNCHANGED changes as :func:`march` yields them, in key order (for a dry
        run's plan: one object per change, which the bulk path avoids)."""
        out = [Change(Action.CREATE, o.key, obj=o) for o in self.creates]
        out += [Change(Action.UPDATE, o.key, obj=o) for o in self.updates]
        out += [Change(Action.DELETE, k[0], known=_Row(*k)) for k in self.deletes]
        out.sort(key=_CHANGE_KEY)
        return out


#: a known item as the catalog reads it for :func:`diff_page`: a plain tuple
#: ``(key, size, etag, version)``, no object per row
KnownRow = tuple[str, int, str, "str | None"]


@dataclass(frozen=True, slots=True)
class _Row:
    key: str
    size: int
    etag: str
    version: str | None


_CHANGE_KEY = operator.attrgetter("key")
_KEY = operator.attrgetter("key")
_COMPARED = operator.attrgetter("key", "size", "etag", "version")


def check_order(page: Sequence[ObjectInfo], after: str | None) -> None:
    """Raise :class:`ListingOrderError` unless the page's keys are strictly increasing and
    all above ``after`` (the previous page's last key)."""
    keys = list(map(_KEY, page))
    if after is not None and keys and keys[0] <= after:
        bad = (after, keys[0])
    elif all(map(operator.lt, keys, keys[1:])):
        return
    else:
        bad = next((a, b) for a, b in itertools.pairwise(keys) if not a < b)
    raise ListingOrderError(
        f"listing returned {bad[1]!r} after {bad[0]!r}: keys must be strictly "
        "increasing; refusing to reconcile (nothing deleted)"
    )


def diff_page(page: Sequence[ObjectInfo], known: list[KnownRow]) -> PageDiff:
    """Merge one listing page with the known items of the key range it covers, which is
    ``(previous page's last key, this page's last key]``: every item in it is either listed
    on this page or gone. Both in strictly increasing key order (see :func:`check_order`).

    Pure, like :func:`march`: the same decisions, two bulk shortcuts. With no known items
    every object is new; when the page's (key, size, ETag, version) equal the items', nothing
    changed (the version equal too is stricter than :func:`is_changed`, so this never calls a
    changed object unchanged; any difference falls through to the plain merge)."""
    if not known:
        return PageDiff(creates=list(page))
    if len(known) == len(page) and list(map(_COMPARED, page)) == known:
        return PageDiff(unchanged=len(page))
    diff = PageDiff()
    creates, updates, deletes = diff.creates, diff.updates, diff.deletes
    unchanged = 0
    j, n = 0, len(known)
    for obj in page:
        key = obj.key
        while j < n and known[j][0] < key:
            deletes.append(known[j])
            j += 1
        if j < n and known[j][0] == key:
            _, size, etag, version = known[j]
            if (
                obj.etag != etag
                or obj.size != size
                or (obj.version is not None and obj.version != version)
            ):  # is_changed() on a row
                updates.append(obj)
            else:
                unchanged += 1
            j += 1
        else:
            creates.append(obj)
    deletes.extend(known[j:])
    diff.unchanged = unchanged
    return diff
