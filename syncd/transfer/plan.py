"""Pure decisions of pull and push: line up three sorted streams, then judge each file.

:func:`align` walks, by relative path and all in one order (``str`` order = UTF-8 byte order =
sqlite BINARY), the dataset's items, the local folder's files and the records of earlier
transfers (:mod:`syncd.store.copies`), holding one of each at a time: memory does not grow
with the dataset. :func:`judge` says whether a file present on both sides needs moving.
"""

from __future__ import annotations

import enum
import re
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass

from providers.base import ObjectInfo
from syncd.store.catalog import Item
from syncd.store.copies import Copy

_MD5 = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True, slots=True)
class Row:
    """One relative path and what each side knows of it (``None``: nothing)."""

    rel: str
    item: Item | None
    local: ObjectInfo | None
    copy: Copy | None


async def align(
    items: Iterable[tuple[str, Item]],
    local: AsyncIterable[ObjectInfo],
    copies: Iterable[Copy],
) -> AsyncIterator[Row]:
    """Merge ``(rel, item)`` pairs, local files (``key`` = rel) and copy records (``path`` =
    rel), each sorted by rel, into one sorted stream of :class:`Row` over their union."""
    item_it, copy_it, local_it = iter(items), iter(copies), aiter(local)
    item = next(item_it, None)
    copy = next(copy_it, None)
    obj = await anext(local_it, None)
    while item is not None or obj is not None or copy is not None:
        rel = min(
            k
            for k in (
                None if item is None else item[0],
                None if obj is None else obj.key,
                None if copy is None else copy.path,
            )
            if k is not None
        )
        row = Row(
            rel,
            item[1] if item is not None and item[0] == rel else None,
            obj if obj is not None and obj.key == rel else None,
            copy if copy is not None and copy.path == rel else None,
        )
        if row.item is not None:
            item = next(item_it, None)
        if row.local is not None:
            obj = await anext(local_it, None)
        if row.copy is not None:
            copy = next(copy_it, None)
        yield row


def expected_md5(item: Item, provider: str) -> str | None:
    """The object's content MD5 if its provider stated one (an S3 single-part ETag is one)."""
    if item.md5:
        return item.md5
    if provider == "s3" and _MD5.fullmatch(item.etag):
        return item.etag
    return None


class Verdict(enum.StrEnum):
    SAME = "same"  # nothing to move
    MOVE = "move"  # transfer the file
    HASH = "hash"  # same size: compare the local file's MD5 with ``expected_md5``


def judge(
    item: Item,
    local: ObjectInfo,
    copy: Copy | None,
    md5: str | None,
    *,
    unproven: Verdict,
) -> Verdict:
    """Whether the local file and the object hold the same bytes, by the cheapest proof.

    * a record of an earlier transfer that still matches both sides: the same;
    * sizes differ: move;
    * same size and the provider states an MD5: hash the local file;
    * same size, no MD5, and a record that no longer matches one side: move;
    * same size, no MD5, no record: ``unproven`` (a pull takes the file as the same: it has
      nothing better to compare; a push moves it rather than leave the bucket stale).
    """
    if (
        copy is not None
        and copy.local_etag == local.etag
        and copy.etag == item.etag
        and copy.size == item.size
    ):
        return Verdict.SAME
    if local.size != item.size:
        return Verdict.MOVE
    if md5 is not None:
        return Verdict.HASH
    return Verdict.MOVE if copy is not None else unproven
