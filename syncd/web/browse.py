"""The item browser's data: a dataset as folders, filtered by the query model, in pages.

Everything here runs on the daemon's catalog thread (``ctx.catalog.call``) and returns plain
values for the templates; nothing here renders or touches HTTP.

A page of the browser is one of two views of the dataset's items under a ``prefix`` (a key
prefix; the dataset's own driver path is the root):

* **folders** (no ``where`` expression, not ``flat``): the prefix's children one level down,
  folders and items in key order (:func:`syncd.store.folders.children`: one index seek per
  folder, never a read of what is inside it), each folder with its items and bytes counted
  *bounded* (:func:`counts`): exact up to a cap, else shown as "10,000+". The cap is the
  largest of :data:`COUNT_CAPS` (10,000, 1,000, 100) that keeps the rows a page reads to
  count within :data:`COUNT_BUDGET` (20,000: the cap 10,000 for one or two folders, 1,000
  for up to 20, 100 for a full page): counting every item below each folder of a level
  over a million items costs about 0.1 s per million on sqlite and 1.5 s on PostgreSQL,
  which a page cannot pay per request. The exact count of
  the current prefix is one click away (:func:`exact_count`, the query model's count);
* **flat** (any ``where`` expression, or ``flat``): the items under the prefix matching the
  query (:mod:`syncd.query`), at every depth, in key order, read a window of
  :data:`WINDOW` keys per catalog call (:func:`syncd.store.folders.query_window`): a filter
  that few items match is searched window by window (:func:`extend`, while the page's time
  lasts), never in one statement over the whole dataset, and a page that stops before it is
  full says up to which key it searched.

Both page by *keyset*: the next-page link carries the last entry (a folder's prefix or an
item's key; the query model's cursor in the flat view), so items added or removed while
someone pages never shift a later page (no entry twice, none that stayed skipped).

Bad input (a ``where`` expression, a cursor that is not one of this view's, a prefix with a
NUL) raises :class:`~syncd.query.QueryError` with one line for a 400 page.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from syncd.store import folders
from syncd.store.catalog import Dataset, Item

if TYPE_CHECKING:
    from syncd.store.catalog import Catalog

#: entries (folders and items) per page
PAGE = 100
#: the caps a child folder's items are counted to (past it the page says "10,000+"): the
#: largest one whose rows for all the page's folders stay within :data:`COUNT_BUDGET`
COUNT_CAPS = (10_000, 1_000, 100)
#: rows a page reads at most to count its folders (about 3 ms on sqlite, 30 ms on
#: PostgreSQL, which reads each row from the table's heap)
COUNT_BUDGET = 20_000
#: keys of the dataset a flat page's query reads per catalog call: the first window
#: :data:`FIRST_WINDOW` (a common filter fills a page from it: finding its end costs about
#: 1 ms per 5,000 keys on sqlite), each next one 4 times larger up to :data:`WINDOW`. A filter
#: that matches few items is searched a window at a time, the catalog serving others in
#: between, and the page says how far it searched when it stops before it is full
FIRST_WINDOW = 5_000
WINDOW = 50_000
#: image types a browser draws in an ``<img>``: the items shown with a thumbnail
THUMBNAIL_TYPES = frozenset(
    {
        "image/png",
        "image/jpeg",
        "image/gif",
        "image/webp",
        "image/avif",
        "image/bmp",
        "image/svg+xml",
        "image/x-icon",
        "image/vnd.microsoft.icon",
    }
)


def is_image(item: Item) -> bool:
    """Whether the browser shows ``item`` as a thumbnail (its content type is an image type
    browsers draw)."""
    ct = (item.content_type or "").split(";", 1)[0].strip().lower()
    return ct in THUMBNAIL_TYPES


def root_of(dataset: Dataset) -> str:
    """The key prefix the dataset's items live under: its driver's path (``""`` or ending
    in ``/``)."""
    return dataset.driver.path


@dataclass(frozen=True)
class Crumb:
    """One step of the breadcrumbs: the text shown and the prefix it leads to."""

    label: str
    prefix: str


def crumbs(dataset: Dataset, prefix: str) -> list[Crumb]:
    """The breadcrumbs from the dataset's root to ``prefix``: the root (``items``),
    then each folder down to the prefix; a prefix that does not end in ``/`` ends with its
    last partial name. A prefix outside the root starts from the bucket's top instead."""
    root = root_of(dataset)
    start = root if prefix.startswith(root) else ""
    out = [Crumb("items", start)]
    rest = prefix[len(start) :]
    at = start
    while rest:
        slash = rest.find("/")
        part = rest if slash < 0 else rest[: slash + 1]
        at += part
        out.append(Crumb(part, at))
        rest = rest[len(part) :]
    return out


@dataclass(frozen=True)
class FolderRow:
    """A child folder on a page: its prefix, its name (the prefix less the parent's, with
    the ``/``) and its bounded count (None until counted)."""

    prefix: str
    name: str
    count: folders.Count | None = None


@dataclass
class Page:
    """One page of the browser (see the module docstring)."""

    dataset: Dataset
    prefix: str
    where: list[str]
    flat: bool
    crumbs: list[Crumb]
    #: folders and items, in the view's order
    entries: list[FolderRow | Item] = field(default_factory=list)
    #: the ``cursor`` parameter of the next page (None on the last page)
    next_cursor: str | None = None
    #: this page's own cursor (None on the first page)
    cursor: str | None = None
    #: the count cap applied to this page's folders
    count_cap: int = COUNT_CAPS[0]
    #: the exact items and bytes under the prefix matching the query, when asked for
    total: tuple[int, int] | None = None
    #: the flat view: its query, the page's size, the windows of keys read so far, and the
    #: last key read when the page is not full yet but keys are left to search
    query: Any = None
    limit: int = PAGE
    windows: int = 0
    searched_to: str | None = None

    @property
    def filtered(self) -> bool:
        return bool(self.where)

    @property
    def has_folders(self) -> bool:
        return any(isinstance(e, FolderRow) for e in self.entries)

    def name_of(self, item: Item) -> str:
        """An item's name on this page: its key less the prefix in the folder view (a key equal
        to the prefix, a folder marker object, is shown whole), its key less the root in the
        flat view."""
        if not self.flat:
            return item.key[len(self.prefix) :] or item.key
        root = root_of(self.dataset)
        return item.key[len(root) :] if item.key.startswith(root) and item.key != root else item.key


def browse(
    catalog: Catalog,
    dataset: Dataset,
    *,
    prefix: str | None = None,
    where: list[str] | None = None,
    flat: bool = False,
    cursor: str | None = None,
    limit: int = PAGE,
    total: bool = False,
) -> Page:
    """A page of the browser (see the module docstring): ``prefix`` None is the dataset's
    root; ``cursor`` a :attr:`Page.next_cursor` of the same view; ``total``: also count every
    matching item under the prefix exactly (the query model's count: one read of them all).
    :class:`~syncd.query.QueryError` for anything a user typed wrong."""
    from syncd.query import QueryError, parse_where

    where = [w for w in (where or []) if w.strip()]
    if prefix is None:
        prefix = root_of(dataset)
    _check_text(prefix, "the prefix")
    for expression in where:
        _check_text(expression, "a where expression")
    query = parse_where(where, prefix=prefix)  # checks the prefix too (no NUL, not too long)
    flat = flat or bool(where)
    page = Page(dataset, prefix, where, flat, crumbs(dataset, prefix), cursor=cursor)
    if flat:
        from syncd.query import decode_cursor

        page.query = query
        page.limit = limit
        after = decode_cursor(query, cursor)[1] if cursor else None
        scan(catalog, page, after)
    else:
        after = _decode_level(cursor) if cursor else None
        try:
            level = folders.children(catalog, dataset.id, prefix, after=after, limit=limit)
        except ValueError:
            raise QueryError(_BAD_CURSOR) from None
        page.entries = [
            FolderRow(e.prefix, e.prefix[len(prefix) :]) if isinstance(e, folders.Folder) else e
            for e in level.entries
        ]
        page.next_cursor = _encode_level(level.last) if level.more and level.last else None
        page.count_cap, page.entries = counts(catalog, dataset.id, page.entries)
    if total:
        page.total = catalog.count_query(dataset.id, query)
    return page


def scan(catalog: Catalog, page: Page, after: str | None) -> None:
    """Read one more window of keys (:data:`FIRST_WINDOW`, growing to :data:`WINDOW`) of a
    flat page's query after ``after``,
    adding its matches to the page, and set where the page goes on: after the last entry
    shown once the page is full; else, while the query has keys left, after the window's
    end (:attr:`Page.searched_to`: :func:`extend` or the next page scans on from it)."""
    from syncd.query import encode_cursor

    assert page.query is not None
    want = page.limit + 1 - len(page.entries)  # one more than shown: is there a next page?
    window = min(WINDOW, FIRST_WINDOW * 4**page.windows)
    items, end = folders.query_window(
        catalog, page.dataset.id, page.query, after=after, limit=want, window=window
    )
    page.entries += items
    page.windows += 1
    if len(page.entries) > page.limit:
        page.entries = page.entries[: page.limit]
        last = page.entries[-1].key  # type: ignore[union-attr]
        page.searched_to, page.next_cursor = None, encode_cursor(page.query, last, last)
    elif end is not None:
        page.searched_to, page.next_cursor = end, encode_cursor(page.query, end, end)
    else:
        page.searched_to, page.next_cursor = None, None


def extend(catalog: Catalog, page: Page) -> Page:
    """Scan one more window of a flat page that is not full yet (see :func:`scan`)."""
    if page.searched_to is not None and len(page.entries) < page.limit:
        scan(catalog, page, page.searched_to)
    return page


def counts(
    catalog: Catalog, dataset_id: int, entries: list[FolderRow | Item]
) -> tuple[int, list[FolderRow | Item]]:
    """The entries with each folder's bounded count (see the module docstring), and the cap
    used."""
    prefixes = [e.prefix for e in entries if isinstance(e, FolderRow)]
    cap = count_cap(len(prefixes))
    found = iter(folders.bounded_counts(catalog, dataset_id, prefixes, cap) if prefixes else [])
    out: list[FolderRow | Item] = [
        FolderRow(e.prefix, e.name, next(found)) if isinstance(e, FolderRow) else e for e in entries
    ]
    return cap, out


def count_cap(folders: int) -> int:
    """The cap of each folder's count on a page of ``folders`` folders (see
    :data:`COUNT_CAPS`)."""
    for cap in COUNT_CAPS:
        if folders * cap <= COUNT_BUDGET:
            return cap
    return COUNT_CAPS[-1]


_BAD_CURSOR = "malformed cursor: follow the page's own next-page link"


def _encode_level(last: str) -> str:
    """A folder view's cursor: ``L`` then the last entry, base64url. The flat view's cursors
    are the query model's (base64 of a JSON array: they start with ``W``), so neither view
    takes the other's."""
    return "L" + base64.urlsafe_b64encode(last.encode()).decode().rstrip("=")


def _decode_level(cursor: str) -> str:
    from syncd.query import QueryError

    if not cursor.startswith("L") or len(cursor) > 16384:
        raise QueryError(_BAD_CURSOR)
    raw = cursor[1:]
    try:
        last = base64.b64decode(raw + "=" * (-len(raw) % 4), altchars=b"-_", validate=True)
        text = last.decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise QueryError(_BAD_CURSOR) from None
    if "\x00" in text:
        raise QueryError(_BAD_CURSOR)
    return text


def _check_text(text: str, what: str) -> None:
    """Refuse text no key can hold: a URL can carry bytes that decode to unpaired surrogates,
    which neither store can be asked about."""
    from syncd.query import QueryError

    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise QueryError(f"{what} is not valid UTF-8 text") from None


# -- one item ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ItemView:
    """An item as its page shows it: every field, and its metadata in parts."""

    item: Item
    #: every field of the public item but the metadata and tags, in order, as (name, value)
    fields: list[tuple[str, Any]]
    #: the provider's custom metadata and object tags (names to strings)
    provider: dict[str, Any]
    object_tags: dict[str, Any]
    #: any other member of the provider's part (``content_type_guessed``...)
    other: dict[str, Any]
    #: the user's metadata (any JSON) and tags
    user: dict[str, Any]
    tags: list[str]
    image: bool
    #: the whole public item as indented JSON (what ``syncd items ls --json`` prints)
    raw: str


def item_view(catalog: Catalog, dataset: Dataset, key: str) -> ItemView | None:
    """The page of the dataset's item ``key``; None when it has none."""
    _check_text(key, "the key")
    item = catalog.get_item(dataset.id, key)
    if item is None:
        return None
    public = item.public()
    meta = dict(public.pop("metadata"))
    tags = public.pop("tags")
    user = meta.pop("user", {})
    provider = meta.pop("provider", {})
    object_tags = meta.pop("object_tags", {})
    return ItemView(
        item=item,
        fields=list(public.items()),
        provider=provider if isinstance(provider, dict) else {"": provider},
        object_tags=object_tags if isinstance(object_tags, dict) else {"": object_tags},
        other=meta,
        user=user if isinstance(user, dict) else {"": user},
        tags=list(tags),
        image=is_image(item),
        raw=json.dumps(item.public(), indent=2, ensure_ascii=False, sort_keys=False),
    )
