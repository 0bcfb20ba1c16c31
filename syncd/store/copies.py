"""What ``syncd pull`` and ``syncd push`` know about local files (table ``local_copies``).

A record says: the file ``root/path``, as long as its local ETag (size and modification time,
see :func:`providers.local.local_etag`) is still ``local_etag``, holds the bytes of the object
whose ETag is ``etag`` and size ``size``. A record is written only once that is *proven*: the
file was just downloaded or uploaded, or its MD5 matched the object's. So the next pull or push
compares a file by a ``stat`` and a row, without reading it.

Records are per dataset and per root folder (its real path), read in ``path`` order so a pull
or push can walk them beside the dataset's items and the folder listing.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from syncd.store.catalog import prefix_upper_bound
from syncd.store.sql import Database


@dataclass(frozen=True, slots=True)
class Copy:
    path: str
    local_etag: str
    etag: str
    size: int


class LocalCopies:
    """The records of one dataset in one local folder. Not thread-safe."""

    def __init__(self, db: Database, dataset_id: int, root: str) -> None:
        self.db, self.dataset_id, self.root = db, dataset_id, root

    def iter(self, prefix: str = "", page: int = 1000) -> Iterator[Copy]:
        """Records in ``path`` order (whose path starts with ``prefix``), a page at a time; each
        page is a fresh query after the last path, so writes between pages are safe."""
        after: str | None = None
        upper = prefix_upper_bound(prefix) if prefix else None
        while True:
            sql = (
                "SELECT path, local_etag, etag, size FROM local_copies"
                " WHERE dataset_id = ? AND root = ? AND path >= ?"
            )
            args: list[object] = [self.dataset_id, self.root, prefix]
            if after is not None:
                sql += " AND path > ?"
                args.append(after)
            if upper is not None:
                sql += " AND path < ?"
                args.append(upper)
            rows = self.db.execute(sql + " ORDER BY path LIMIT ?", [*args, page]).fetchall()
            yield from (Copy(*row) for row in rows)
            if len(rows) < page:
                return
            after = rows[-1][0]

    def save(self, record: Iterable[Copy], forget: Iterable[str] = ()) -> None:
        """Write records and drop those of ``forget`` paths. The caller holds the transaction
        (a push writes the items it uploaded in the same one)."""
        self.db.executemany(
            "INSERT INTO local_copies (dataset_id, root, path, local_etag, etag, size)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (dataset_id, root, path) DO UPDATE SET"
            " local_etag = excluded.local_etag, etag = excluded.etag, size = excluded.size",
            [(self.dataset_id, self.root, c.path, c.local_etag, c.etag, c.size) for c in record],
        )
        self.db.executemany(
            "DELETE FROM local_copies WHERE dataset_id = ? AND root = ? AND path = ?",
            [(self.dataset_id, self.root, p) for p in forget],
        )
