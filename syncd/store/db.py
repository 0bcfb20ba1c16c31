"""Opening the catalog (a sqlite file or a PostgreSQL database) and applying named,
transactional migrations.

Each engine has its list of migrations, each a name and a list of SQL statements: sqlite's is
:data:`MIGRATIONS` below, PostgreSQL's ``PG_MIGRATIONS`` in :mod:`syncd.store.pg`. Their
first migrations (sqlite's 0001-0007, PostgreSQL's consolidated ``0007_schema``) are each
engine's own; from ``0008`` on a migration is declared once for both, with the dialects'
differences in one place (:mod:`syncd.store.schema`), and a new one is added there.
:func:`migrate` applies, in order, those not yet recorded in ``_syncd_migrations``, in one
transaction together with the rows that record them, so a crash leaves them applied or not at
all. Migrations are append-only: never edit one that has shipped, add a new one.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from syncd.errors import CatalogUnavailable, UsageError
from syncd.store import schema
from syncd.store.stamps import now

if TYPE_CHECKING:
    from syncd.store.sql import Database

#: seconds a statement waits for another process's write lock before giving up
DEFAULT_BUSY_TIMEOUT = 30.0

MIGRATIONS: list[tuple[str, list[str]]] = [
    (
        "0001_catalog",
        [
            """CREATE TABLE integrations (
                name TEXT PRIMARY KEY,
                type TEXT NOT NULL,
                created_at TEXT NOT NULL
            )""",
            """CREATE TABLE drivers (
                id INTEGER PRIMARY KEY,
                name TEXT NOT NULL UNIQUE,
                type TEXT NOT NULL,
                bucket TEXT NOT NULL,
                path TEXT NOT NULL DEFAULT '',
                region TEXT,
                endpoint TEXT,
                storage_class TEXT,
                account TEXT,
                allow_external_delete INTEGER NOT NULL DEFAULT 0,
                integration TEXT REFERENCES integrations(name),
                created_at TEXT NOT NULL
            )""",
            """CREATE TABLE datasets (
                id INTEGER PRIMARY KEY,
                name TEXT NOT NULL UNIQUE,
                driver_id INTEGER NOT NULL REFERENCES drivers(id),
                source TEXT NOT NULL,
                filters TEXT NOT NULL DEFAULT '{}',
                created_at TEXT NOT NULL
            )""",
            # WITHOUT ROWID: the (dataset, key) primary key *is* the storage order, so the
            # reconciler's ordered scan of a dataset is one sequential b-tree walk
            """CREATE TABLE items (
                dataset_id INTEGER NOT NULL REFERENCES datasets(id),
                key TEXT NOT NULL,
                filename TEXT NOT NULL,
                uri TEXT NOT NULL,
                size INTEGER NOT NULL,
                etag TEXT NOT NULL,
                content_type TEXT,
                mtime TEXT NOT NULL,
                version TEXT,
                created_at TEXT NOT NULL,
                updated_at TEXT NOT NULL,
                metadata TEXT NOT NULL DEFAULT '{}',
                PRIMARY KEY (dataset_id, key)
            ) WITHOUT ROWID""",
        ],
    ),
    (
        "0002_checkpoint",
        [
            """CREATE TABLE runs (
                id INTEGER PRIMARY KEY,
                dataset_id INTEGER NOT NULL REFERENCES datasets(id),
                fingerprint TEXT NOT NULL,
                status TEXT NOT NULL,
                started_at TEXT NOT NULL,
                ended_at TEXT,
                attempts INTEGER NOT NULL DEFAULT 1,
                resume_key TEXT,
                listed INTEGER NOT NULL DEFAULT 0,
                created INTEGER NOT NULL DEFAULT 0,
                updated INTEGER NOT NULL DEFAULT 0,
                deleted INTEGER NOT NULL DEFAULT 0,
                unchanged INTEGER NOT NULL DEFAULT 0,
                error TEXT
            )""",
            "CREATE INDEX runs_dataset ON runs (dataset_id, id)",
            """CREATE TABLE pending_deletes (
                run_id INTEGER NOT NULL REFERENCES runs(id),
                key TEXT NOT NULL,
                PRIMARY KEY (run_id, key)
            ) WITHOUT ROWID""",
        ],
    ),
    (
        "0003_event_markers",
        [
            # the newest ordering marker applied per key, deletes included (tombstones), so a
            # late or duplicate bucket event can be recognised and ignored
            """CREATE TABLE key_markers (
                dataset_id INTEGER NOT NULL REFERENCES datasets(id),
                key TEXT NOT NULL,
                marker TEXT NOT NULL,
                deleted INTEGER NOT NULL,
                updated_at TEXT NOT NULL,
                PRIMARY KEY (dataset_id, key)
            ) WITHOUT ROWID""",
        ],
    ),
    (
        "0004_runs_leases_integrations",
        [
            # an integration's fields as written in the config: plain values and secret
            # *references* (env:NAME / file:/path); Integration refuses literal secrets, so no
            # secret can reach this column. Resolved again on every run.
            "ALTER TABLE integrations ADD COLUMN fields TEXT NOT NULL DEFAULT '{}'",
            # who runs a dataset's sync ("dataset:<id>"), which daemon owns the catalog
            # ("daemon"): one row per lease while it is held. A holder is gone when its lease
            # expired or (same host) its process no longer exists.
            """CREATE TABLE leases (
                name TEXT PRIMARY KEY,
                owner TEXT NOT NULL,
                host TEXT NOT NULL,
                pid INTEGER NOT NULL,
                acquired_at TEXT NOT NULL,
                expires_at TEXT NOT NULL
            )""",
            "ALTER TABLE runs ADD COLUMN owner TEXT",
            "ALTER TABLE runs ADD COLUMN filtered INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE runs ADD COLUMN skipped INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE runs ADD COLUMN held_deletes INTEGER NOT NULL DEFAULT 0",
            # events never lose to a stale listing: every applied event batch takes the next
            # value of a catalog-wide sequence and stamps the keys it touched with it; a sync
            # reads the sequence before each listing page and writes (or deletes) a key only if
            # no event touched it since (see syncd.reconcile.sync and syncd.events.apply)
            "CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
            "INSERT INTO counters (name, value) VALUES ('event_seq', 0)",
            "ALTER TABLE key_markers ADD COLUMN seq INTEGER NOT NULL DEFAULT 0",
            # the provider's time of the newest event applied per key (tombstones included):
            # orders events that carry no marker (moto, local folder watches)
            "ALTER TABLE key_markers ADD COLUMN event_time TEXT",
            "ALTER TABLE pending_deletes ADD COLUMN seen_seq INTEGER NOT NULL DEFAULT 0",
            # every attempt of a run (a resumed run has several): when, how far, what error
            """CREATE TABLE run_attempts (
                run_id INTEGER NOT NULL REFERENCES runs(id),
                attempt INTEGER NOT NULL,
                owner TEXT NOT NULL,
                started_at TEXT NOT NULL,
                ended_at TEXT,
                status TEXT NOT NULL,
                resumed_after TEXT,
                last_key TEXT,
                error TEXT,
                PRIMARY KEY (run_id, attempt)
            ) WITHOUT ROWID""",
        ],
    ),
    (
        "0005_unrouted_events",
        [
            # events no dataset took: a notification configured for a bucket (or prefix) no
            # driver covers. Counted so they are visible (syncd events unrouted), not silent.
            """CREATE TABLE unrouted_events (
                provider TEXT NOT NULL,
                bucket TEXT NOT NULL,
                account TEXT NOT NULL DEFAULT '',
                count INTEGER NOT NULL,
                first_seen TEXT NOT NULL,
                last_seen TEXT NOT NULL,
                last_key TEXT NOT NULL,
                PRIMARY KEY (provider, bucket, account)
            ) WITHOUT ROWID""",
        ],
    ),
    (
        "0006_pull_push",
        [
            # the content MD5 a provider states (see providers.base.ObjectInfo.md5), so a pull
            # can tell a local file it did not write is already the object's bytes
            "ALTER TABLE items ADD COLUMN md5 TEXT",
            # what pull and push wrote: the local file at root/path, as it was right after
            # (local_etag: size and mtime, see providers.local), holds the bytes of the object
            # with this ETag and size. A file still matching needs no hashing and no transfer.
            """CREATE TABLE local_copies (
                dataset_id INTEGER NOT NULL REFERENCES datasets(id),
                root TEXT NOT NULL,
                path TEXT NOT NULL,
                local_etag TEXT NOT NULL,
                etag TEXT NOT NULL,
                size INTEGER NOT NULL,
                PRIMARY KEY (dataset_id, root, path)
            ) WITHOUT ROWID""",
        ],
    ),
    (
        "0007_key_markers_by_seq",
        [
            # "did any event touch this dataset since sequence N?" in one index probe: a
            # listing batch then writes with a plain upsert instead of a lookup per row
            "CREATE INDEX key_markers_seq ON key_markers (dataset_id, seq)",
        ],
    ),
    # 0008 on: tables declared once for both stores
    *schema.migrations("sqlite"),
]


@contextmanager
def transaction(db: Database) -> Iterator[None]:
    """One explicit write transaction on ``db``: all of the block's statements land, or none
    do (see :meth:`syncd.store.sql.Database.transaction`)."""
    with db.transaction():
        yield


def busy_timeout() -> float:
    """``$SYNCD_DB_BUSY_TIMEOUT`` (seconds) if set, else :data:`DEFAULT_BUSY_TIMEOUT`: how long
    a catalog write waits for another process's lock before failing with one line."""
    raw = os.environ.get("SYNCD_DB_BUSY_TIMEOUT")
    if not raw:
        return DEFAULT_BUSY_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        raise UsageError(
            f"SYNCD_DB_BUSY_TIMEOUT must be a number of seconds, got {raw!r}"
        ) from None
    if not 0 <= value <= 3600:
        raise UsageError(f"SYNCD_DB_BUSY_TIMEOUT must be 0 to 3600 seconds, got {raw!r}")
    return value


#: what sqlite says when the file cannot grow: ENOSPC is "full", EFBIG and EIO "I/O error"
_CANNOT_WRITE = ("database or disk is full", "disk i/o error")


def catalog_error(exc: Exception, path: str | os.PathLike[str] | None = None) -> Exception:
    """The one-line error for a catalog failure the user can act on (a lock held too long, a
    file that cannot grow, a database server gone), else ``exc`` itself (a bug: the CLI
    reports it as internal)."""
    if type(exc).__module__.startswith("psycopg"):
        from syncd.store.pg import server_error

        return server_error(exc, str(path) if path is not None else None)
    if not isinstance(exc, sqlite3.Error):
        return exc
    where = f"catalog {str(path)!r}" if path is not None else "the catalog"
    text = str(exc)
    if "database is locked" in text or "database table is locked" in text:
        return CatalogUnavailable(
            f"{where} is locked by another process (waited {busy_timeout():g}s); let it "
            "finish, or pass --db with another catalog (SYNCD_DB_BUSY_TIMEOUT sets the wait)"
        )
    if any(marker in text.lower() for marker in _CANNOT_WRITE):
        return CatalogUnavailable(
            f"{where} could not be written ({text}): free space on its disk or raise the "
            "file-size limit; it keeps its last committed state, run the command again"
        )
    return exc


def is_server(url: str) -> bool:
    """Whether the catalog ``url`` names a PostgreSQL server rather than a sqlite file."""
    return url.startswith(("postgresql://", "postgres://"))


def default_db_path(configured: str | None = None) -> str:
    """The catalog when no ``--db`` is given: ``$SYNCD_DB`` if set, else ``configured`` (a
    config file's ``[catalog] url``), else ``./syncd.db``."""
    return os.environ.get("SYNCD_DB") or configured or "syncd.db"


def open_db(url: str | os.PathLike[str], *, create: bool = True, write: bool = True) -> Database:
    """Open (and if needed create and migrate) the catalog at ``url``.

    ``url`` is ``postgresql://[user@]host[:port]/dbname`` (a PostgreSQL server: the database
    must exist, its tables are created by the migrations), ``sqlite:///path`` or a plain path
    (a sqlite file in WAL mode), or ``":memory:"`` (an empty in-memory catalog).

    ``create=False``: a missing sqlite file, or a PostgreSQL database without syncd's tables,
    is a ``UsageError`` (nothing is created). ``write=True`` checks up front that the catalog
    can be written, so a read-only catalog is one clear line before any work starts rather
    than a failure half-way.
    """
    text = str(url)
    if is_server(text):
        try:
            from syncd.store.pg import open_postgres
        except ImportError as exc:
            from providers.config import MissingExtra

            raise UsageError(str(MissingExtra("postgres", "a PostgreSQL catalog", exc))) from None

        db: Database = open_postgres(text, create=create, write=write)
    else:
        from syncd.store.sqlite import open_sqlite

        db = _open_sqlite(open_sqlite, text.removeprefix("sqlite://"), create, write)
    return db


def _open_sqlite(opener: Any, path: str, create: bool, write: bool) -> Database:
    if not create and path != ":memory:":
        _refuse_empty_file(path)
    try:
        db = opener(path, create=create, write=write, busy_timeout=busy_timeout())
        if path == ":memory:":
            migrate(db)
            return db
        try:
            done = applied_migrations(db)
            if done is None and not create:
                raise UsageError(
                    f"{path!r} is not a syncd catalog (it has no syncd tables); pass --db with "
                    "the catalog's path, or run `syncd sync` to create a new one"
                )
            check_schema(db, done, write=write)
            if write or _pending(db):
                migrate(db)
            if write:
                db.check_writable()
        except BaseException:
            db.close()
            raise
    except sqlite3.DatabaseError as exc:
        if "readonly" in str(exc):
            raise UsageError(
                f"catalog {path!r} is read-only ({exc}); make the file and its folder "
                "writable, or pass --db with another catalog"
            ) from None
        known = catalog_error(exc, path)
        if known is not exc:
            raise known from None
        raise UsageError(f"cannot open catalog {path!r}: {exc}") from exc
    return db


def _refuse_empty_file(path: str) -> None:
    """An existing file of 0 bytes is not a catalog (sqlite would take it for an empty one and
    a command that must not create a catalog would write a fresh schema into it, or answer
    events into nothing): refuse it in one line."""
    try:
        size = os.stat(path).st_size
    except OSError:
        return  # missing: open_sqlite says so
    if size == 0:
        raise UsageError(
            f"catalog {path!r} is an empty file, not a syncd catalog; pass --db with the "
            "catalog's path (or remove the file and run `syncd sync` to create a new one)"
        )


class CatalogTooNew(UsageError):
    """The catalog was migrated by a newer syncd: this one does not know its schema."""


def check_schema(db: Database, done: set[str] | None = None, *, write: bool = True) -> None:
    """Refuse (``CatalogTooNew``) a catalog that records a migration this syncd does not know:
    a newer syncd migrated it, and writing with older code could break what the newer code
    relies on. ``done``: the applied migrations if already read. Reading such a catalog is
    allowed (``write=False``): it only logs a warning."""
    if done is None:
        done = applied_migrations(db)
    known = {name for name, _ in db.migrations}
    unknown = sorted((done or set()) - known)
    if not unknown:
        return
    from syncd import __version__

    by = _written_by(db)
    message = (
        f"catalog {db.url!r} was migrated by a newer syncd"
        + (f" ({by})" if by else "")
        + f" to schema {unknown[-1]!r}; this is syncd {__version__} (schema "
        f"{db.migrations[-1][0]!r}): upgrade syncd to use this catalog"
    )
    if write:
        raise CatalogTooNew(message)
    import logging

    logging.getLogger("syncd").warning("%s (reading it anyway)", message)


def _written_by(db: Database) -> str | None:
    """The syncd version that last migrated the catalog (``catalog_info``), if recorded."""
    try:
        row = db.execute("SELECT value FROM catalog_info WHERE key = 'syncd_version'").fetchone()
    except Exception as exc:
        if "no such table" in str(exc) or getattr(exc, "sqlstate", None) == "42P01":
            return None
        raise
    return f"syncd {row[0]}" if row else None


def _pending(db: Database) -> bool:
    """Whether any migration is not applied yet (a reader must migrate an old catalog)."""
    done = applied_migrations(db)
    return done is None or any(name not in done for name, _ in db.migrations)


def applied_migrations(db: Database) -> set[str] | None:
    """The names of the migrations applied to ``db``; None for a catalog with no tables."""
    try:
        return {r[0] for r in db.execute("SELECT name FROM _syncd_migrations").fetchall()}
    except Exception as exc:
        # sqlite: OperationalError "no such table"; PostgreSQL: UndefinedTable (SQLSTATE
        # 42P01), after which its connection must roll the failed statement back
        if "no such table" in str(exc) or getattr(exc, "sqlstate", None) == "42P01":
            return None
        raise


def migrate(db: Database) -> list[str]:
    """Apply pending migrations in order, all in one transaction; return the names applied.

    The transaction starts with :meth:`~syncd.store.sql.Database.lock_writes` (exclusive), so
    of several workers starting at once on one PostgreSQL catalog one migrates and the others
    find the work done.
    """
    with transaction(db):
        db.lock_writes(exclusive=True)
        db.execute(
            "CREATE TABLE IF NOT EXISTS _syncd_migrations"
            " (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        done = {row[0] for row in db.execute("SELECT name FROM _syncd_migrations").fetchall()}
        applied = []
        for name, statements in db.migrations:
            if name in done:
                continue
            for statement in statements:
                db.execute(statement)
            db.execute(
                "INSERT INTO _syncd_migrations (name, applied_at) VALUES (?, ?)", [name, now()]
            )
            applied.append(name)
        if applied:
            from syncd import __version__

            # who migrated last: an older syncd that meets a newer schema names it
            db.execute(
                "INSERT INTO catalog_info (key, value) VALUES ('syncd_version', ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [__version__],
            )
    return applied
