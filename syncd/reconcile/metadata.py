"""What an item records of its object beyond key, size and ETag: content type and the
provider's part of ``metadata`` (see :class:`syncd.store.catalog.Item`), and the HEAD step of
a dataset synced with ``metadata = "head"``.

Modes, per dataset (``[datasets.X] metadata``, ``syncd sync --metadata``):

* ``listing`` (the default): what the listing states. GCS and Azure listings give the content
  type and custom metadata (Azure also index tags, with ``tags = true``); S3 listings and
  local folders give neither, so the content type is guessed from the key
  (:mod:`providers.content_types`, which also says how an item records that its type is a
  guess: by its source's rule, with the exceptions marked in its metadata).
* ``head``: as ``listing``, and every object the listing shows new or changed (its ETag, size
  or version differ from the item's: :func:`syncd.reconcile.march.diff_page`) is HEADed, at
  most :data:`HEAD_CONCURRENCY` at a time, each call retried like every provider call
  (:func:`providers.retry.call`): S3 ``x-amz-meta-*`` and the real Content-Type; with
  ``tags = true`` its tags too (S3 GetObjectTagging, Azure Get Blob Tags). An unchanged
  object is never HEADed again, so a re-sync costs requests only for what changed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import operator
from typing import Literal

from providers.base import Driver, ObjectInfo
from providers.content_types import GUESSED, UNKNOWN, guess, guessed_by_default, marker
from providers.errors import NotFound
from syncd.reconcile.march import PageDiff

log = logging.getLogger("syncd")
_CT, _META, _TAGS, _KEY = (
    operator.attrgetter(a) for a in ("content_type", "metadata", "tags", "key")
)
MetadataMode = Literal["listing", "head"]
MODES: tuple[str, ...] = ("listing", "head")
#: HEADs (and tag reads) in flight at once per sync: enough to hide a round trip of tens of
#: milliseconds, few enough that a throttling service sees a steady client
HEAD_CONCURRENCY = 16


def _jsonb_order(value: object) -> object:
    """``value`` with every object's members in PostgreSQL ``jsonb``'s order (shorter names
    first, then by their UTF-8 bytes), so the text written equals the text PostgreSQL reads
    back and both stores hold the same text for the same item."""
    if isinstance(value, dict):
        names = sorted(value, key=lambda n: (len(n.encode()), n.encode()))
        return {n: _jsonb_order(value[n]) for n in names}
    return value


def to_json(value: object) -> str:
    """JSON text as PostgreSQL's ``jsonb`` prints it (``{"a": 1, "bb": 2}``)."""
    return json.dumps(_jsonb_order(value), separators=(", ", ": "), ensure_ascii=False)


def provider_part(
    guessed: bool | None, metadata: dict[str, str] | None, tags: dict[str, str] | None
) -> str:
    """The JSON text of an item's ``metadata`` column: ``content_type_guessed`` (``guessed``
    where the item is the exception to its source's rule, :func:`providers.content_types.marker`;
    None: nothing to say), ``provider`` and ``object_tags``, each only when there is something
    to say (``{}`` for nothing)."""
    if not metadata and not tags:
        return _BARE[guessed]  # the common item: one of three texts, made once
    metadata, tags = _storable(metadata), _storable(tags)
    out: dict[str, object] = {}
    if guessed is not None:
        out["content_type_guessed"] = guessed
    if metadata:
        out["provider"] = metadata
    if tags:
        out["object_tags"] = tags
    return to_json(out)


#: :func:`provider_part` of an item with no metadata and no tags, per ``guessed``
_BARE: dict[bool | None, str] = {
    None: "{}",
    True: to_json({"content_type_guessed": True}),
    False: to_json({"content_type_guessed": False}),
}


def page_fields(driver: Driver, objs: list[ObjectInfo]) -> list[tuple[str, str]]:
    """:func:`item_fields` of each listed object, ``driver`` having listed them. Built for a
    page at a time: the common page (no custom metadata, no tags) costs a guess per key where
    the listing stated no type, and nothing else."""
    rule = guessed_by_default(driver.provider)
    if not any(map(_CT, objs)) and not any(map(_META, objs)) and not any(map(_TAGS, objs)):
        # an S3 or synthetic page: nothing stated but keys (C-level passes, one guess each)
        meta = "{}" if rule else GUESSED
        return [(t or UNKNOWN, meta) for t in map(guess, map(_KEY, objs))]
    guessed = driver.guesses_content_type
    out: list[tuple[str, str]] = []
    append = out.append
    stated = provider_part(marker(guessed, rule), None, None)
    unstated = provider_part(marker(True, rule), None, None)
    for o in objs:
        ct = o.content_type
        if o.metadata or o.tags:
            append(
                item_fields(o.key, ct, rule=rule, guessed=guessed, metadata=o.metadata, tags=o.tags)
            )
        elif ct:
            append((ct, stated))
        else:
            append((guess(o.key) or UNKNOWN, unstated))
    return out


def _storable(pairs: dict[str, str] | None) -> dict[str, str] | None:
    """``pairs`` without the entries PostgreSQL's ``jsonb`` cannot hold (a NUL character in
    the name or value; sqlite keeps the same, so both stores agree), each left out with a
    warning rather than failing the whole sync."""
    if not pairs or not any("\x00" in k or "\x00" in v for k, v in pairs.items()):
        return pairs
    kept = {k: v for k, v in pairs.items() if "\x00" not in k and "\x00" not in v}
    log.warning("left out %d metadata or tag entries holding a NUL", len(pairs) - len(kept))
    return kept


def item_fields(
    key: str,
    content_type: str | None,
    *,
    rule: bool,
    guessed: bool = False,
    metadata: dict[str, str] | None = None,
    tags: dict[str, str] | None = None,
) -> tuple[str, str]:
    """``(content_type, metadata JSON)`` of an item for an object named ``key`` whose source
    stated ``content_type`` (None: it stated none, so it is guessed from the key; ``guessed``:
    the stated one is itself a guess, as a local folder's). ``rule``: the source's types are
    guesses unless an item says otherwise (:func:`providers.content_types.guessed_by_default`)."""
    if not content_type:
        return guess(key) or UNKNOWN, provider_part(marker(True, rule), metadata, tags)
    return content_type, provider_part(marker(guessed, rule), metadata, tags)


async def head_objects(
    driver: Driver,
    objs: list[ObjectInfo],
    *,
    tags: bool = False,
    concurrency: int = HEAD_CONCURRENCY,
) -> list[ObjectInfo]:
    """``objs`` (listed records, to be written) with what a HEAD of each says: content type
    and custom metadata, and with ``tags`` the object's tags. Order kept.

    A record stays as listed when the object is gone by the time of the HEAD (the delete
    reaches the dataset by its event or the next sync) or was overwritten since it was
    listed (its HEAD's ETag differs: that metadata belongs to a newer object than the one
    this record describes, which the next sync lists as changed). Any other failure, after
    the retries every provider call gets, is raised: the sync stops as on a failed listing
    page, keeping what it wrote and deleting nothing."""
    gate = asyncio.Semaphore(concurrency)

    async def one(obj: ObjectInfo) -> ObjectInfo:
        async with gate:
            try:
                info = await driver.head(obj.key)
                if info.etag != obj.etag:
                    return obj
                found = await driver.object_tags(obj.key) if tags else obj.tags
            except NotFound:
                return obj
        return ObjectInfo(
            obj.key,
            obj.size,
            obj.etag,
            obj.last_modified,
            info.content_type or obj.content_type,
            obj.version,
            obj.md5,
            info.metadata if info.metadata is not None else obj.metadata,
            found,
        )

    # a TaskGroup: the first failure cancels the HEADs still waiting, instead of leaving them
    # running after the sync has stopped
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(one(o)) for o in objs]
    return [t.result() for t in tasks]


async def head_changed(driver: Driver, diff: PageDiff, *, tags: bool = False) -> int:
    """HEAD the objects ``diff`` creates or updates (:func:`head_objects`), in place; returns
    how many were HEADed (a run's ``heads``)."""
    if diff.creates:
        diff.creates = await head_objects(driver, diff.creates, tags=tags)
    if diff.updates:
        diff.updates = await head_objects(driver, diff.updates, tags=tags)
    return len(diff.creates) + len(diff.updates)
