"""The catalog: integrations, drivers, datasets and their items.

The catalog lives in a :class:`~syncd.store.sql.Database`: a sqlite file by default, a
PostgreSQL database for several workers (:mod:`syncd.store.pg`); nothing here depends on which.

An item is an *external reference* to one object: ``filename`` is ``/`` + the key relative to
the driver path (like a platform's ``external://`` item), ``uri`` the object's canonical URI.
The items of a dataset double as the per-key checkpoint (what was last seen for each key):
they are written in the same transaction as the run's progress, so the two cannot disagree.

No secret is ever stored: an integration is kept as its name, type and fields as written in
the config, where every secret field is a *reference* (``env:NAME`` or ``file:/path``; literal
secrets are refused by :class:`~providers.config.Integration`). The references are resolved
each time a driver opens, so a dataset synced later without the config file still uses its own
credentials, and a reference that cannot be resolved is an error, never a fallback.
"""

from __future__ import annotations

import json
import operator
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from providers import faults
from providers.config import PUBLIC_FIELDS, DriverConfig, Integration
from providers.content_types import guessed_by_default, public_metadata
from syncd import model
from syncd.errors import UsageError
from syncd.reconcile.filters import Filters
from syncd.reconcile.march import KnownRow
from syncd.store import lease, ranges
from syncd.store.checkpoint import Checkpoint, Run
from syncd.store.db import is_server, open_db, transaction
from syncd.store.ranges import KeyRange
from syncd.store.sql import ITEM_COLUMNS, MTIME, Database, Seen, item_rows, select_keys
from syncd.store.stamps import now, stamp_us

if TYPE_CHECKING:  # the query model loads pydantic: only commands that query pay for it
    import pyarrow as pa

    from syncd.query import Query

ITEM_FIELDS = (
    "filename",
    "key",
    "uri",
    "size",
    "etag",
    "content_type",
    "mtime",
    "version",
    "created_at",
    "updated_at",
    "metadata",
    "md5",
    "tags",
)


@dataclass(frozen=True)
class Item:
    """One row of ``items``: what the dataset knows about one object.

    The metadata columns hold JSON text (on both stores):

    * ``metadata``: what the provider says, replaced whenever the object is (a listing, a HEAD,
      an event): an object with the optional members ``provider`` (the object's custom
      metadata: S3 ``x-amz-meta-*``, GCS custom metadata, Azure metadata; names to strings),
      ``object_tags`` (S3 object tags, Azure index tags; names to strings) and
      ``content_type_guessed`` (``true`` when ``content_type`` was guessed from the key's
      extension, so a HEAD or an event may correct it);
    * ``user_metadata``: an object the user edits (``metadata.user`` in the public item);
    * ``tags``: the user's tags, a sorted array of distinct strings.

    The user's two are never written by a sync or an event, so they survive every re-sync and
    update of the object, and vanish with the item when the object is deleted.
    """

    key: str
    filename: str
    uri: str
    size: int
    etag: str
    content_type: str | None
    mtime: str
    version: str | None
    created_at: str
    updated_at: str
    metadata: str = "{}"
    md5: str | None = None
    user_metadata: str = "{}"
    tags: str = "[]"

    def public(self) -> dict[str, Any]:
        """The item as printed by ``syncd items ls --json``: ``metadata`` is the provider's
        part with the user's under ``user``; ``tags`` a list."""
        out = {f: getattr(self, f) for f in ITEM_FIELDS}
        out["metadata"] = {**json.loads(self.metadata), "user": json.loads(self.user_metadata)}
        out["tags"] = json.loads(self.tags)
        return out

    def value(self) -> model.Item:
        """The item as Python values (:class:`syncd.model.Item`), for the Python API."""
        return model.Item.from_public(self.public())


@dataclass(frozen=True)
class DatasetSettings:
    """The run-time settings of a dataset created over the HTTP API (table
    ``dataset_settings``): its row makes every daemon on the catalog schedule it.
    ``interval`` None: the daemon's ``[daemon] interval``; ``max_delete`` as written
    (``"25%"``, ``"100"``) or None; ``updated_at`` changes with every write."""

    interval: int | None = None
    max_delete: str | None = None
    watch: bool = True
    updated_at: str = ""
    #: what items record of the provider's metadata, ``listing`` or ``head``, and whether
    #: they record the objects' tags (:mod:`syncd.reconcile.metadata`)
    metadata: str = "listing"
    tags: bool = False

    def public(self) -> dict[str, Any]:
        return {
            "interval": self.interval,
            "max_delete": self.max_delete,
            "watch": self.watch,
            "metadata": self.metadata,
            "tags": self.tags,
        }


#: the columns of ``dataset_settings s`` that :func:`_settings_from_row` reads
_SETTINGS = "s.interval_seconds, s.max_delete, s.watch, s.updated_at, s.metadata, s.tags"


def _settings_from_row(row: Sequence[Any]) -> DatasetSettings:
    interval, max_delete, watch, updated_at, metadata, tags = row
    return DatasetSettings(interval, max_delete, bool(watch), updated_at, metadata, bool(tags))


@dataclass(frozen=True)
class Dataset:
    id: int
    name: str
    source: str
    driver: DriverConfig
    filters: Filters
    created_at: str


class Catalog:
    """Library API over the catalog database. Not thread-safe: one per task/thread."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._queries_ready = False  # prepare_queries ran on this connection
        self._guessing: dict[int, bool] = {}  # guesses_content_types, per dataset id

    @classmethod
    def open(cls, path: str, *, create: bool = True) -> Catalog:
        """Open the catalog at ``path`` (a file path or a catalog URL, see
        :func:`syncd.store.db.open_db`) for writing, creating it unless ``create`` is False.
        ``UsageError`` if it is missing (with ``create=False``) or read-only."""
        return cls(open_db(path, create=create))

    @classmethod
    def open_reader(cls, path: str) -> Catalog:
        """Open an existing catalog only to read it (a read-only file is fine)."""
        return cls(open_db(path, create=False, write=False))

    @classmethod
    def open_preview(cls, path: str) -> Catalog:
        """The catalog at ``path`` for a dry run, which must write nothing: the catalog itself
        if it exists, else an empty catalog in memory (nothing is created)."""
        if is_server(path):
            try:
                return cls(open_db(path, create=False, write=False))
            except UsageError:  # a database without syncd's tables yet
                return cls(open_db(":memory:"))
        if os.path.exists(path.removeprefix("sqlite://")):
            return cls(open_db(path, create=False, write=False))
        return cls(open_db(":memory:"))

    def close(self) -> None:
        self.db.close()

    # -- integrations and drivers -----------------------------------------------------

    def _ensure_integration(self, integ: Integration) -> None:
        """Record the integration (fields: references and plain values only)."""
        fields = json.dumps(integ.fields, sort_keys=True)
        row = self.db.execute(
            "SELECT type FROM integrations WHERE name = ?", [integ.name]
        ).fetchone()
        if row is None:
            self.db.execute(
                "INSERT INTO integrations (name, type, fields, created_at) VALUES (?, ?, ?, ?)",
                [integ.name, integ.type, fields, now()],
            )
        elif row[0] != integ.type:
            raise UsageError(
                f"integration {integ.name!r} is recorded as type {row[0]}, not {integ.type}"
            )
        else:
            self.db.execute(
                "UPDATE integrations SET fields = ? WHERE name = ?", [fields, integ.name]
            )

    def _ensure_driver(self, name: str, cfg: DriverConfig) -> int:
        """Insert or update the driver row called ``name``; return its id."""
        if cfg.integration is not None:
            self._ensure_integration(cfg.integration)
        values = cfg.public()
        values["allow_external_delete"] = int(values["allow_external_delete"])
        values["versioned"] = int(values["versioned"])
        row = self.db.execute("SELECT id FROM drivers WHERE name = ?", [name]).fetchone()
        if row is None:
            cur = self.db.execute(
                f"INSERT INTO drivers (name, {', '.join(_DRIVER_COLUMNS)}, created_at)"
                f" VALUES ({', '.join('?' * (len(_DRIVER_COLUMNS) + 2))}) RETURNING id",
                [name, *(values[k] for k in _DRIVER_COLUMNS), now()],
            )
            return int(cur.fetchone()[0])
        sets = ", ".join(f"{k} = ?" for k in _DRIVER_COLUMNS)
        self.db.execute(
            f"UPDATE drivers SET {sets} WHERE id = ?",
            [*(values[k] for k in _DRIVER_COLUMNS), row[0]],
        )
        return int(row[0])

    # -- datasets ----------------------------------------------------------------------

    def create_dataset(
        self,
        name: str,
        source: str,
        driver: DriverConfig,
        filters: Filters,
        *,
        settings: DatasetSettings | None = None,
    ) -> Dataset:
        """Create dataset ``name`` bound to ``driver``. Raises ``UsageError`` if it exists.

        The existence check and the insert share one write transaction, taken exclusively
        (:meth:`~syncd.store.sql.Database.lock_writes`: PostgreSQL would otherwise let two
        transactions both find no dataset), so of two processes creating the same dataset one
        succeeds and the other gets the ``UsageError``.

        ``settings``: the dataset's run-time settings (a dataset created over the HTTP API),
        written in the same transaction.
        """
        check_dataset_name(name)
        with transaction(self.db):
            self.db.lock_writes(exclusive=True)
            if self.find_dataset(name) is not None:
                raise UsageError(f"dataset {name!r} already exists")
            driver_id = self._ensure_driver(driver.name or f"{name}-driver", driver)
            columns, values = "name, driver_id, source, filters, created_at", [
                name, driver_id, source, filters.to_json(), now()
            ]  # fmt: skip
            if self.db.dialect == "sqlite":
                # never an id a removed dataset had (sqlite reuses the largest rowid once
                # it is deleted): the change log names datasets by id
                columns, values = "id, " + columns, [self._next_dataset_id(), *values]
            self.db.execute(
                f"INSERT INTO datasets ({columns}) VALUES ({', '.join('?' * len(values))})",
                values,
            )
            if settings is not None:
                found = self.db.execute("SELECT id FROM datasets WHERE name = ?", [name])
                self._write_settings(int(found.fetchone()[0]), settings)
        return self.get_dataset(name)

    def _next_dataset_id(self) -> int:
        """The next sqlite dataset id: above every id the catalog ever gave (``counters``
        row ``dataset_id``) and every id in use. The caller holds the transaction."""
        return int(
            self.db.execute(
                "UPDATE counters SET value = max(value, (SELECT coalesce(max(id), 0)"
                " FROM datasets)) + 1 WHERE name = 'dataset_id' RETURNING value"
            ).fetchone()[0]
        )

    def update_dataset(
        self,
        dataset: Dataset,
        driver: DriverConfig,
        filters: Filters,
        *,
        settings: DatasetSettings | None = None,
    ) -> Dataset:
        """Record a changed driver setting or filter set (declared in a config file, or
        patched over the HTTP API with its ``settings``, written in the same transaction).
        Taken exclusively, as :meth:`create_dataset`: two workers may apply one config at
        once. ``UsageError`` if the dataset was removed meanwhile."""
        with transaction(self.db):
            self.db.lock_writes(exclusive=True)
            driver_id = self._ensure_driver(driver.name or f"{dataset.name}-driver", driver)
            updated = self.db.execute(
                "UPDATE datasets SET driver_id = ?, filters = ? WHERE id = ?",
                [driver_id, filters.to_json(), dataset.id],
            ).rowcount
            if updated == 0:
                raise UsageError(f"dataset {dataset.name!r} was removed meanwhile")
            if settings is not None:
                self._write_settings(dataset.id, settings)
        return self.get_dataset(dataset.name)

    def _write_settings(self, dataset_id: int, settings: DatasetSettings) -> None:
        """Insert or replace a dataset's run-time settings. The caller holds the transaction."""
        self.db.execute(
            "INSERT INTO dataset_settings (dataset_id, interval_seconds, max_delete, watch,"
            " metadata, tags, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (dataset_id) DO UPDATE SET"
            " interval_seconds = excluded.interval_seconds, max_delete = excluded.max_delete,"
            " watch = excluded.watch, metadata = excluded.metadata, tags = excluded.tags,"
            " updated_at = excluded.updated_at",
            [
                dataset_id,
                settings.interval,
                settings.max_delete,
                int(settings.watch),
                settings.metadata,
                int(settings.tags),
                now(),
            ],
        )

    def dataset_settings(self, dataset_id: int) -> DatasetSettings | None:
        """A dataset's run-time settings, None for one no API call created or patched."""
        row = self.db.execute(
            f"SELECT {_SETTINGS} FROM dataset_settings s WHERE dataset_id = ?", [dataset_id]
        ).fetchone()
        return None if row is None else _settings_from_row(row)

    def runtime_datasets(self) -> list[tuple[Dataset, DatasetSettings]]:
        """Every dataset with run-time settings, by name: what a daemon polls (one query,
        cheap: a dataset row and its settings each)."""
        rows = self.db.execute(
            _DATASET_SELECT.replace("SELECT ", f"SELECT {_SETTINGS}, ", 1)
            + " JOIN dataset_settings s ON s.dataset_id = ds.id ORDER BY ds.name"
        ).fetchall()
        n = _SETTINGS.count(",") + 1
        return [(_dataset_from_row(r[n:]), _settings_from_row(r[:n])) for r in rows]

    # -- integrations created over the HTTP API --------------------------------------------

    def create_integration(self, integ: Integration) -> None:
        """Record a new integration (references and plain values only, as
        :class:`~providers.config.Integration` guarantees). ``UsageError`` if one of that name
        exists."""
        with transaction(self.db):
            self.db.lock_writes(exclusive=True)
            if self.find_integration(integ.name) is not None:
                raise UsageError(f"integration {integ.name!r} already exists")
            self._ensure_integration(integ)

    def find_integration(self, name: str) -> Integration | None:
        if "\x00" in name:
            return None
        row = self.db.execute(
            "SELECT type, fields FROM integrations WHERE name = ?", [name]
        ).fetchone()
        return None if row is None else Integration(name, row[0], json.loads(row[1] or "{}"))

    def list_integrations(self) -> list[tuple[Integration, str]]:
        """Every recorded integration with its creation time, by name."""
        rows = self.db.execute(
            "SELECT name, type, fields, created_at FROM integrations ORDER BY name"
        ).fetchall()
        return [(Integration(r[0], r[1], json.loads(r[2] or "{}")), r[3]) for r in rows]

    def drop_dataset(
        self, dataset: Dataset, *, source: str = "admin", with_snapshots: bool = False
    ) -> None:
        """Remove a dataset with its items and runs (and its driver if nothing else uses it),
        recorded in the change log as one ``dataset_removed`` record. ``UsageError`` while it
        has snapshots, unless ``with_snapshots`` (they go with it)."""
        from syncd.store import snapshots

        with transaction(self.db):
            snapshots.check_drop(self.db, dataset, with_snapshots=with_snapshots)
            # one record in the change log, not one per item (a follower drops the dataset)
            self.db.record_changes("dataset_removed", source, now(), [(dataset.id, dataset.name)])
            ranges.clear(self.db, "SELECT id FROM runs WHERE dataset_id = ?", [dataset.id])
            for table in ("pending_deletes", "run_attempts"):
                self.db.execute(
                    f"DELETE FROM {table} WHERE run_id IN"
                    " (SELECT id FROM runs WHERE dataset_id = ?)",
                    [dataset.id],
                )
            for table in ("runs", "items", "key_markers", "local_copies", "dataset_settings"):
                self.db.execute(f"DELETE FROM {table} WHERE dataset_id = ?", [dataset.id])
            self.db.execute("DELETE FROM leases WHERE name = ?", [f"dataset:{dataset.id}"])
            driver_id = self.db.execute(
                "SELECT driver_id FROM datasets WHERE id = ?", [dataset.id]
            ).fetchone()[0]
            self.db.execute("DELETE FROM datasets WHERE id = ?", [dataset.id])
            self.db.execute(
                "DELETE FROM drivers WHERE id = ? AND id NOT IN (SELECT driver_id FROM datasets)",
                [driver_id],
            )

    def find_dataset(self, name: str) -> Dataset | None:
        if "\x00" in name:
            return None  # no dataset has one (and PostgreSQL text cannot hold it)
        row = self.db.execute(_DATASET_SELECT + " WHERE ds.name = ?", [name]).fetchone()
        return _dataset_from_row(row) if row else None

    def get_dataset(self, name: str) -> Dataset:
        """The dataset called ``name``; ``UsageError`` naming the known ones if there is none."""
        found = self.find_dataset(name)
        if found is None:
            names = [d.name for d in self.list_datasets()]
            known = (
                f"; known datasets: {', '.join(names)}" if names else "; the catalog has none yet"
            )
            raise UsageError(f"unknown dataset {name!r}{known}")
        return found

    def list_datasets(self) -> list[Dataset]:
        rows = self.db.execute(_DATASET_SELECT + " ORDER BY ds.name").fetchall()
        return [_dataset_from_row(r) for r in rows]

    def count_items(self, dataset_id: int, *, prefix: str = "") -> int:
        """How many items the dataset has (whose key starts with ``prefix``)."""
        return int(self._aggregate("count(*)", dataset_id, prefix))

    def total_size(self, dataset_id: int, *, prefix: str = "") -> int:
        """The bytes of the dataset's objects (whose key starts with ``prefix``)."""
        return int(self._aggregate("coalesce(sum(size), 0)", dataset_id, prefix))

    def _aggregate(self, what: str, dataset_id: int, prefix: str) -> Any:
        if "\x00" in prefix:
            return 0  # no key holds a NUL byte
        where, args = key_range(None, prefix)
        sql = f"SELECT {what} FROM items WHERE dataset_id = ?{where}"
        return self.db.execute(sql, [dataset_id, *args]).fetchone()[0]

    # -- items ---------------------------------------------------------------------------

    def sample_keys(
        self, dataset_id: int, parts: int, *, prefix: str = "", after: str | None = None
    ) -> list[str]:
        """``parts - 1`` evenly spaced item keys (after ``after``, under ``prefix``), in order:
        boundaries that split a listing like the last one into ranges of similar size. ``[]``
        when the dataset has too few items to split. One ordered scan of the key index."""
        total = self.count_items(dataset_id, prefix=prefix)
        if parts <= 1 or total < 2 * parts:
            return []
        step = total // parts
        where, args = key_range(after, prefix)
        sql = (
            "SELECT key, row_number() OVER (ORDER BY key) AS n FROM items"
            f" WHERE dataset_id = ?{where}"
        )
        rows = self.db.execute(
            f"SELECT key FROM ({sql}) AS numbered WHERE n % ? = 0 ORDER BY n LIMIT ?",
            [dataset_id, *args, step, parts - 1],
        ).fetchall()
        return [r[0] for r in rows]

    def _keyset_pages(
        self,
        dataset_id: int,
        cols: str,
        *,
        after: str | None = None,
        prefix: str = "",
        since: str | None = None,
        before: str | None = None,
        page: int,
        limit: int | None = None,
    ) -> Iterator[list[tuple[Any, ...]]]:
        """The raw rows (``cols``, the first ``key``) of the dataset's items after ``after``,
        under ``prefix`` and in ``[since, before)`` where given, in key order, in lists of at
        most ``page`` rows, at most ``limit`` rows in all. Keyset pages: each page is a fresh
        query starting after the last key returned, so memory stays bounded on both stores,
        and rows written behind the cursor (the reconciler writes only keys it has already
        passed) are never returned twice and never skipped."""
        if "\x00" in prefix or (after is not None and "\x00" in after):
            return  # no key holds a NUL byte (listings skip such keys, events refuse them)
        cursor = after
        left = limit
        while left is None or left > 0:
            size = page if left is None else min(page, left)
            sql, args = page_query(cols, dataset_id, cursor, prefix, size, since, before)
            rows = self.db.execute(sql, args).fetchall()
            if rows:
                yield rows
            if left is not None:
                left -= len(rows)
            if len(rows) < size:
                return
            cursor = rows[-1][0]

    def iter_known_rows(
        self,
        dataset_id: int,
        *,
        after: str | None = None,
        page: int = 5000,
        since: str | None = None,
        before: str | None = None,
    ) -> Iterator[list[KnownRow]]:
        """The rows of :meth:`known_range` for every key after ``after`` (and, when given, at
        least ``since`` and below ``before``: one key range of a split run), in pages of at
        most ``page`` (memory stays bounded)."""
        return self._keyset_pages(
            dataset_id,
            "key, size, etag, version",
            after=after,
            since=since,
            before=before,
            page=page,
        )

    def iter_items(
        self,
        dataset_id: int,
        *,
        after: str | None = None,
        prefix: str = "",
        page: int = 1000,
        limit: int | None = None,
    ) -> Iterator[Item]:
        """Items in key order (at most ``limit``), read in keyset pages (:meth:`_keyset_pages`):
        memory stays bounded, no row returned twice or skipped."""
        cols = ", ".join(Item.__dataclass_fields__)
        for rows in self._keyset_pages(
            dataset_id, cols, after=after, prefix=prefix, page=page, limit=limit
        ):
            yield from self._items(dataset_id, rows)

    def iter_item_pages(
        self, dataset_id: int, columns: Sequence[str], *, prefix: str = "", page: int = 1000
    ) -> Iterator[list[tuple[Any, ...]]]:
        """The raw stored ``columns`` (names of ``items`` columns, the first ``key``) of the
        dataset's items under ``prefix``, in key order, in lists of at most ``page`` rows:
        what a bulk reader (``syncd items export``) transforms a column at a time instead of
        making an :class:`Item` per row. ``metadata`` is the *stored* text, not the public
        one (:meth:`item_maker`). Keyset pages (:meth:`_keyset_pages`)."""
        if columns[0] != "key" or not set(columns) <= _READABLE:
            raise ValueError(f"not a key-first list of items columns: {columns!r}")
        return self._keyset_pages(dataset_id, ", ".join(columns), prefix=prefix, page=page)

    def item_batches(
        self, dataset_id: int, columns: Sequence[str], *, prefix: str = "", page: int = 16384
    ) -> Iterator[pa.RecordBatch] | None:
        """What :meth:`iter_item_pages` reads, as Arrow record batches filled without a
        Python object per value (:mod:`syncd.store.arrow_read`), in the same keyset pages;
        or None where that reader is not to be had: a PostgreSQL or in-memory catalog, one
        opened to write (the reader's own copy of SQLite must not share a process with a
        writer of the file), no ``adbc-driver-sqlite``, a file it cannot open. Then the
        caller reads pages."""
        from syncd.store import arrow_read

        path = getattr(self.db, "path", ":memory:")
        if (
            self.db.dialect != "sqlite"
            or path == ":memory:"
            or getattr(self.db, "writes", True)
            or not arrow_read.available()
        ):
            return None
        if columns[0] != "key" or not set(columns) <= _READABLE:
            raise ValueError(f"not a key-first list of items columns: {columns!r}")
        if "\x00" in prefix:
            return iter(())  # no key holds a NUL byte
        return arrow_read.sqlite_item_batches(path, dataset_id, columns, prefix=prefix, page=page)

    def get_item(self, dataset_id: int, key: str) -> Item | None:
        """The dataset's item ``key``, or None (also for a key no item can have: a NUL byte,
        or an unpaired surrogate that a URL path or JSON body can smuggle in, which neither
        store could even be asked about)."""
        if "\x00" in key:
            return None
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            return None
        cols = ", ".join(Item.__dataclass_fields__)
        row = self.db.execute(
            f"SELECT {cols} FROM items WHERE dataset_id = ? AND key = ?", [dataset_id, key]
        ).fetchone()
        return None if row is None else self._items(dataset_id, [row])[0]

    # -- item queries (syncd.query; SQL in syncd.store.query_sql) -----------------------

    def query_page(
        self, dataset_id: int, query: Query, *, cursor: str | None = None, limit: int = 100
    ) -> tuple[list[Item], str | None]:
        """One page of the items matching ``query``, in its order: at most ``limit`` items
        after ``cursor`` (a ``next_cursor`` of the previous page, for the same query's sort),
        and the cursor of the next page (None on the last page).

        Keyset pagination: the cursor holds the last item's sort value and key, and the next
        page starts right after them, so an item that matches throughout is returned exactly
        once however many items are added or removed between pages. ``QueryError`` for a
        cursor that is not one of this query's."""
        from syncd.query import decode_cursor, encode_cursor, sort_value

        after = decode_cursor(query, cursor) if cursor else None
        items = self._query_rows(dataset_id, query, after=after, limit=limit + 1)
        more = len(items) > limit
        items = items[:limit]
        nxt = None
        if more:
            last = items[-1]
            nxt = encode_cursor(query, sort_value(query, last), last.key)
        return items, nxt

    def iter_query(
        self, dataset_id: int, query: Query, *, page: int = 1000, limit: int | None = None
    ) -> Iterator[Item]:
        """Every item matching ``query`` (at most ``limit``), in its order, read in pages of
        ``page`` (bounded memory; keyset pagination as :meth:`query_page`)."""
        from syncd.query import sort_value

        after: tuple[Any, str] | None = None
        left = limit
        while left is None or left > 0:
            size = page if left is None else min(page, left)
            items = self._query_rows(dataset_id, query, after=after, limit=size)
            yield from items
            if left is not None:
                left -= len(items)
            if len(items) < size:
                return
            after = (sort_value(query, items[-1]), items[-1].key)

    def query_keys(self, dataset_id: int, query: Query, *, page: int = 1000) -> Iterator[list[str]]:
        """The keys of the items matching ``query``, in key order, in lists of at most
        ``page``: each a fresh query after the last key of the one before, so a caller may
        change the items of one list (a bulk edit) before asking for the next, holding one
        list at a time. The query's sort is ignored (key order)."""
        from syncd.store import query_sql

        query = query.model_copy(update={"sort": "key", "order": "asc"})
        after: tuple[Any, str] | None = None
        while True:
            self.prepare_queries()
            sql, args = query_sql.page(
                query,
                self.db.dialect,
                dataset_id,
                "key",
                after=after,
                limit=page,
                guesses=self.guesses_content_types(dataset_id),
            )
            keys = [r[0] for r in self.db.execute(sql, args).fetchall()]
            if keys:
                yield keys
            if len(keys) < page:
                return
            after = (keys[-1], keys[-1])

    def count_query(self, dataset_id: int, query: Query) -> tuple[int, int]:
        """``(items, total bytes)`` of the items matching ``query``."""
        from syncd.store import query_sql

        self.prepare_queries()
        sql, args = query_sql.count(
            query, self.db.dialect, dataset_id, self.guesses_content_types(dataset_id)
        )
        n, total = self.db.execute(sql, args).fetchone()
        return int(n), int(total)

    def summarize(
        self, dataset_id: int, query: Query, *, by: str, limit: int = 10000
    ) -> dict[str, Any]:
        """Items and bytes of the items matching ``query``, in total and per group ``by``
        ``content_type`` or ``folder`` (the key below the query's prefix up to its next
        ``/``; ``None`` groups the items directly under the prefix, or without a content
        type), like ``aws s3 ls --summarize``: ``{"items", "bytes", "by", "groups":
        [{"group", "items", "bytes"}, ...], "truncated"}``, groups in code point order, at
        most ``limit`` of them (``truncated`` when there were more)."""
        from syncd.query import GROUPS, QueryError
        from syncd.store import query_sql

        if by not in GROUPS:
            raise QueryError(f"cannot summarize by {by!r}; use one of {', '.join(GROUPS)}")
        n, total = self.count_query(dataset_id, query)
        sql, args = query_sql.summary(
            query,
            self.db.dialect,
            dataset_id,
            by,
            limit + 1,
            self.guesses_content_types(dataset_id),
        )
        rows = self.db.execute(sql, args).fetchall()
        groups = [{"group": g, "items": int(c), "bytes": int(b)} for g, c, b in rows[:limit]]
        return {
            "items": n,
            "bytes": total,
            "by": by,
            "groups": groups,
            "truncated": len(rows) > limit,
        }

    def _query_rows(
        self, dataset_id: int, query: Query, *, after: tuple[Any, str] | None, limit: int
    ) -> list[Item]:
        from syncd.store import query_sql

        self.prepare_queries()
        cols = ", ".join(Item.__dataclass_fields__)
        sql, args = query_sql.page(
            query,
            self.db.dialect,
            dataset_id,
            cols,
            after=after,
            limit=limit,
            guesses=self.guesses_content_types(dataset_id),
        )
        return self._items(dataset_id, self.db.execute(sql, args).fetchall())

    def _items(self, dataset_id: int, rows: Sequence[Sequence[Any]]) -> list[Item]:
        """``items`` rows (the :class:`Item` columns) of one dataset as Items
        (:meth:`item_maker`)."""
        make = self.item_maker(dataset_id)
        return [make(*r) for r in rows]

    def item_maker(self, dataset_id: int) -> Callable[..., Item]:
        """A function making an :class:`Item` of the dataset from its stored columns (those of
        ``items``, in :class:`Item` order), its provider metadata in the public form
        (:func:`providers.content_types.public_metadata`: a guessed type is marked by its
        source's rule, not in every row)."""
        rule = self.guesses_content_types(dataset_id)

        def make(*r: Any) -> Item:
            return Item(*r[:10], public_metadata(r[10], rule), *r[11:])

        return make

    def guesses_content_types(self, dataset_id: int) -> bool:
        """Whether the content types of the dataset's items are guesses unless an item says
        otherwise (:func:`providers.content_types.guessed_by_default` of its provider; True
        for a dataset that is gone). Looked up once per dataset and catalog."""
        found = self._guessing.get(dataset_id)
        if found is None:
            row = self.db.execute(
                "SELECT d.type FROM datasets ds JOIN drivers d ON d.id = ds.driver_id"
                " WHERE ds.id = ?",
                [dataset_id],
            ).fetchone()
            found = self._guessing[dataset_id] = guessed_by_default(row[0] if row else "")
        return found

    def prepare_queries(self) -> None:
        """Make the query functions known to this connection (sqlite: ``syncd_glob``)."""
        if not self._queries_ready:
            from syncd.store import query_sql

            query_sql.register(getattr(self.db, "conn", None))
            self._queries_ready = True

    def known_range(
        self, dataset_id: int, after: str | None, upto: str, *, since: str | None = None
    ) -> list[KnownRow]:
        """``(key, size, etag, version)`` of the items with ``after < key <= upto`` (no lower
        bound when ``after`` is None; ``since <= key`` instead when ``since`` is given: the
        start of a split run's key range), in key order, as plain tuples: the catalog side of
        one listing page for :func:`syncd.reconcile.march.diff_page`. One range scan of the
        key index."""
        if after is None and since is not None:
            return self.db.execute(_KNOWN_SINCE, (dataset_id, since, upto)).fetchall()
        if after is None:
            return self.db.execute(_KNOWN_UPTO, (dataset_id, upto)).fetchall()
        return self.db.execute(_KNOWN_RANGE, (dataset_id, after, upto)).fetchall()

    def write_items(
        self, dataset_id: int, items: Iterable[Item], *, source: str | None = None
    ) -> None:
        """Upsert items (see :meth:`write_rows`). The caller holds the transaction."""
        values = _ITEM_VALUES  # one C call per item, not one getattr per field
        self.write_rows(dataset_id, [(dataset_id, *values(i)) for i in items], source=source)

    def write_rows(
        self,
        dataset_id: int,
        rows: list[tuple[Any, ...]],
        *,
        seen_seq: Iterable[int] | None = None,
        source: str | None = None,
        kinds: str | list[str] | None = None,
    ) -> None:
        """Upsert items given as plain tuples of the ``items`` columns: ``dataset_id`` (equal
        to ``dataset_id``), then the :class:`Item` fields in order, in one bulk write
        (:meth:`~syncd.store.sql.Database.upsert_items`); an update keeps the stored
        ``created_at``. The caller holds the transaction.

        With ``seen_seq`` (one value per row: the event sequence read before the listing
        page that showed the item), an item is written only if no event touched its key since
        (:data:`~syncd.store.sql.NEWER_EVENT`): a listing that saw a key before an event
        changed it must not undo the event. The guard is decided here, on the markers of the
        batch's keys, so exactly the rows written are known; the caller's transaction holds
        :meth:`~syncd.store.sql.Database.lock_writes` (no event commits in between).

        With ``source``, each row written is recorded in the change log (:mod:`.changes`) as
        ``created`` or ``updated``: ``kinds`` (one per row, or one for all) when the caller
        knows, else by which keys exist now.
        """
        if not rows:
            return
        if seen_seq is not None:
            seen_seq = list(seen_seq)
            # the common case, no event since the oldest page of the batch: every row is
            # written (the guard costs a marker lookup per key)
            since = self.db.execute(_EVENT_SINCE, (dataset_id, min(seen_seq, default=0)))
            if seen_seq and since.fetchone()[0]:
                if isinstance(kinds, str):
                    kinds = [kinds] * len(rows)
                rows, kinds = self._unguarded(dataset_id, rows, seen_seq, kinds)
                if not rows:
                    return
        if source is not None and kinds is None:
            there = self._existing(dataset_id, [r[1] for r in rows])
            kinds = ["updated" if r[1] in there else "created" for r in rows]
        if source is not None:  # first: it keeps what the rows replace for snapshots
            assert kinds is not None
            self.db.record_changes(kinds, source, now(), rows)
        self.db.upsert_items(rows)

    def _unguarded(
        self,
        dataset_id: int,
        rows: list[tuple[Any, ...]],
        seen_seq: list[int],
        kinds: list[str] | None,
    ) -> tuple[list[tuple[Any, ...]], list[str] | None]:
        """The rows (and their kinds) that no newer event holds back: a row is held back when
        its key has a marker with a later sequence than the row's page and a time not before
        the listed version's (:data:`~syncd.store.sql.NEWER_EVENT`). A kept row whose key an
        event touched is created or updated by what exists now, not by what the page saw."""
        markers: dict[str, tuple[int, int | None]] = {
            key: (int(seq), event_us)
            for key, seq, event_us in select_keys(
                self.db, "t.key, t.seq, t.event_us", "key_markers", dataset_id,
                [r[1] for r in rows], where=" AND t.seq > ?", args=[min(seen_seq)],
            )
        }  # fmt: skip
        if not markers:
            return rows, kinds
        kept: list[tuple[Any, ...]] = []
        kept_kinds: list[str] = []
        touched: list[str] = []
        for n, (row, seq) in enumerate(zip(rows, seen_seq, strict=True)):
            marker = markers.get(row[1])
            if marker is not None and marker[0] > seq:
                if marker[1] is None or marker[1] >= stamp_us(row[MTIME]):
                    continue  # a newer event changed the key after the page saw it
                touched.append(row[1])
            kept.append(row)
            kept_kinds.append(kinds[n] if kinds is not None else "")
        if kinds is None:
            return kept, None
        there = self._existing(dataset_id, touched) if touched else set()
        touched_set = set(touched)
        for n, row in enumerate(kept):
            if row[1] in touched_set:
                kept_kinds[n] = "updated" if row[1] in there else "created"
        return kept, kept_kinds

    def _existing(self, dataset_id: int, keys: list[str]) -> set[str]:
        """Which of ``keys`` the dataset has an item for."""
        return {r[0] for r in select_keys(self.db, "t.key", "items", dataset_id, keys)}

    def item_rows(self, dataset_id: int, keys: list[str]) -> list[tuple[Any, ...]]:
        """The ``items`` rows of those of ``keys`` that exist, in key order
        (:func:`syncd.store.sql.item_rows`)."""
        return item_rows(self.db, dataset_id, keys)

    def commit_batch(self, batch: Batch) -> bool:
        """Commit one batch of a sync in one transaction: check the run's owner still holds
        the dataset's lease (a split run's range: the range's lease), upsert the batch's items (event-guarded, see :meth:`write_rows`),
        park its deletes, and save the run's progress (``resume_key`` and counters). Returns
        False, having written nothing, when the lease was lost.

        The one store call a sync makes per batch: both stores commit a batch as one unit."""
        part = batch.key_range
        name = part.lease if part is not None else lease.for_dataset(batch.dataset_id)
        with transaction(self.db):
            # first: an event batch on another connection must not commit between this
            # batch's guard reads and its writes (see syncd.store.pg)
            self.db.lock_writes(exclusive=False)
            # checked in the same transaction as the writes: a process whose lease was taken
            # over (it stalled past the expiry) never writes beside the new holder
            if not lease.renew(self.db, name, batch.owner):
                return False
            self.write_rows(
                batch.dataset_id,
                batch.rows,
                seen_seq=batch.row_seqs,
                source="listing",
                kinds=batch.row_kinds or None,  # empty: looked up
            )
            checkpoint = Checkpoint(self.db)
            if batch.deletes:
                checkpoint.park_deletes(batch.run, batch.deletes, batch.delete_seen)
            if part is not None:
                ranges.save_progress(self.db, part)
            else:
                checkpoint.save_progress(batch.run)
            faults.pause_point("batch-commit")
        return True

    def event_seq(self) -> int:
        """The catalog-wide sequence of applied event batches (see :meth:`write_items`)."""
        return int(
            self.db.execute("SELECT value FROM counters WHERE name = 'event_seq'").fetchone()[0]
        )

    def delete_items(
        self, dataset_id: int, keys: Iterable[str], *, source: str | None = None
    ) -> int:
        """Delete items by key; return how many existed. With ``source``, each item deleted
        is recorded in the change log as it was. The caller holds the transaction."""
        keys = list(keys)
        if source is not None and keys:
            self.db.record_changes("deleted", source, now(), self.item_rows(dataset_id, keys))
        return self.db.executemany(
            "DELETE FROM items WHERE dataset_id = ? AND key = ?", [(dataset_id, k) for k in keys]
        )

    def snapshot_items(
        self,
        dataset: str,
        tag: str,
        *,
        after_key: str | None = None,
        limit: int | None = None,
        prefix: str = "",
    ) -> Iterator[Item]:
        """The items of snapshot ``tag`` of dataset ``dataset`` (a name), as :meth:`iter_items`
        gives live ones: :class:`Item` s in key order after ``after_key`` (under ``prefix``),
        at most ``limit``, in constant memory (:func:`syncd.store.snapshots.iter_items`).
        ``UsageError`` for an unknown dataset or a bad tag, ``NotFound`` for an unknown tag
        (raised by the call, before any item)."""
        from syncd.store import snapshots

        found = self.get_dataset(dataset)
        snap = snapshots.get(self, found, tag)
        return snapshots.items_at(
            self, found.id, snap.cursor, after_key=after_key, limit=limit, prefix=prefix
        )


#: an Item as the row a sync writes: the user's metadata and tags are not part of it (a sync
#: never writes them)
_ITEM_VALUES = operator.attrgetter(*ITEM_COLUMNS[1:])
#: the columns :meth:`Catalog.iter_item_pages` may read (never one spliced into SQL unchecked)
_READABLE = frozenset(Item.__dataclass_fields__)
_ITEM_ROW = ("dataset_id", *Item.__dataclass_fields__)[: len(ITEM_COLUMNS)]
assert _ITEM_ROW == ITEM_COLUMNS, "items columns drifted"
_EVENT_SINCE = "SELECT EXISTS (SELECT 1 FROM key_markers WHERE dataset_id = ? AND seq > ?)"
_KNOWN_RANGE = (
    "SELECT key, size, etag, version FROM items WHERE dataset_id = ? AND key > ? AND key <= ?"
    " ORDER BY key"
)
_KNOWN_SINCE = (
    "SELECT key, size, etag, version FROM items WHERE dataset_id = ? AND key >= ? AND key <= ?"
    " ORDER BY key"
)
_KNOWN_UPTO = (
    "SELECT key, size, etag, version FROM items WHERE dataset_id = ? AND key <= ? ORDER BY key"
)


@dataclass
class Batch:
    """One batch of a sync, committed by :meth:`Catalog.commit_batch`: item rows (plain
    tuples, see :meth:`Catalog.write_rows`) with the event sequence each was decided under,
    keys to park for deletion with what their listing page knew (:class:`~syncd.store.sql.Seen`),
    and the run whose progress (``resume_key``, counters) is saved with them; ``owner`` must
    hold the dataset's lease. For one key range of a split run, ``key_range`` is that range:
    ``owner`` must hold the range's lease, the range's progress is saved instead of the run's,
    and the deletes are parked under the run."""

    dataset_id: int
    run: Run
    owner: str
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    row_seqs: list[int] = field(default_factory=list)
    #: ``created`` or ``updated`` per row, as the listing decided (for the change log); empty
    #: when not known (then looked up by which keys exist)
    row_kinds: list[str] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)
    delete_seen: list[Seen] = field(default_factory=list)
    key_range: KeyRange | None = None


#: the longest dataset name (characters): names travel in URL paths, metric labels and lines
MAX_NAME = 200


def check_dataset_name(name: str) -> None:
    """Refuse (``UsageError``) a name no dataset may have: empty, surrounding spaces, longer
    than :data:`MAX_NAME`, a ``/`` or ``\\`` (a name is one segment of an API path), or a
    control character (it would break lines and logs)."""
    what = None
    if not name or name != name.strip():
        what = "must be non-empty with no surrounding spaces"
    elif len(name) > MAX_NAME:
        what = f"must be at most {MAX_NAME} characters (got {len(name)})"
    elif "/" in name or "\\" in name:
        what = "must not contain '/' or '\\'"
    elif any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or c in "\u2028\u2029" for c in name):
        what = "must not contain control characters"
    elif not name.isprintable() and any(0xD800 <= ord(c) <= 0xDFFF for c in name):
        what = "must be valid Unicode text"
    if what is not None:
        raise UsageError(f"dataset name {name!r}: {what}; pick a name like 'raw-images'")


def page_query(
    cols: str,
    dataset_id: int,
    after: str | None,
    prefix: str,
    size: int,
    since: str | None = None,
    before: str | None = None,
) -> tuple[str, list[Any]]:
    """One keyset page's ``SELECT`` of ``cols`` and its arguments: the dataset's first
    ``size`` items in key order after ``after``, under ``prefix`` and in ``[since, before)``
    where given (every keyset reader of items pages with it: ``Catalog._keyset_pages``,
    :mod:`syncd.store.arrow_read`)."""
    where, args = key_range(after, prefix)
    if since is not None:
        where, args = where + " AND key >= ?", [*args, since]
    if before is not None:
        where, args = where + " AND key < ?", [*args, before]
    sql = f"SELECT {cols} FROM items WHERE dataset_id = ?{where} ORDER BY key LIMIT ?"
    return sql, [dataset_id, *args, size]


def key_range(after: str | None, prefix: str) -> tuple[str, list[str]]:
    """The ``WHERE`` terms (each starting `` AND``) and their arguments for keys after
    ``after`` that start with ``prefix``: a range scan of the key index, not ``LIKE``, which
    would treat ``%`` and ``_`` in keys as wildcards."""
    sql, args = "", []
    if after is not None:
        sql += " AND key > ?"
        args.append(after)
    if prefix:
        sql += " AND key >= ?"
        args.append(prefix)
        upper = prefix_upper_bound(prefix)
        if upper is not None:
            sql += " AND key < ?"
            args.append(upper)
    return sql, args


def prefix_upper_bound(prefix: str) -> str | None:
    """The smallest string greater than every string that starts with ``prefix`` (in code
    point order, which is sqlite's BINARY order for UTF-8), or None if there is none.

    ``prefix + "\U0010ffff"`` is *not* such a bound: a key continuing with U+10FFFF and more
    sorts above it. Instead the last character that can be is incremented (skipping the
    surrogate range, which UTF-8 cannot hold); trailing U+10FFFF characters are dropped.
    """
    chars = list(prefix)
    while chars:
        last = ord(chars.pop())
        if last < 0x10FFFF:
            nxt = last + 1
            if 0xD800 <= nxt <= 0xDFFF:
                nxt = 0xE000
            return "".join(chars) + chr(nxt)
    return None


_DRIVER_COLUMNS = PUBLIC_FIELDS

_DATASET_SELECT = (
    "SELECT ds.id, ds.name, ds.source, ds.filters, ds.created_at, d.name, "
    + ", ".join(f"d.{c}" for c in _DRIVER_COLUMNS)
    + ", i.type, i.fields FROM datasets ds JOIN drivers d ON d.id = ds.driver_id"
    " LEFT JOIN integrations i ON i.name = d.integration"
)


def _dataset_from_row(row: tuple[Any, ...]) -> Dataset:
    ds_id, name, source, filters, created_at, driver_name, *driver_values = row
    *driver_values, integ_type, integ_fields = driver_values
    values = dict(zip(_DRIVER_COLUMNS, driver_values, strict=True))
    integ_name = values.pop("integration")
    values["allow_external_delete"] = bool(values["allow_external_delete"])
    values["versioned"] = bool(values["versioned"])
    # references and plain values only: the secrets are read when the driver opens
    integration = (
        Integration(integ_name, integ_type, json.loads(integ_fields or "{}"))
        if integ_name
        else None
    )
    driver = DriverConfig(**values, integration=integration, name=driver_name)
    return Dataset(ds_id, name, source, driver, Filters.from_json(filters), created_at)
