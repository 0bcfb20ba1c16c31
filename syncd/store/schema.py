"""Tables declared once for both stores: SQL written with a few placeholders that each
dialect fills in.

The first migrations (sqlite's ``0001``-``0007``, PostgreSQL's consolidated ``0007_schema``)
are each store's own (:data:`syncd.store.db.MIGRATIONS`, :data:`syncd.store.pg.PG_MIGRATIONS`);
every migration from ``0008`` on is written here once, and :func:`render` turns a statement into each store's SQL. The few
differences between the dialects live in :data:`TYPES`:

* ``{bigint}``: a 64-bit integer (sqlite's INTEGER is 64-bit already);
* ``{key}``: a column compared in code point order, like object keys (PostgreSQL's default
  collation is the database's locale; ``COLLATE "C"`` sorts by code point as sqlite does);
* ``{rowid}``: an integer primary key that is the storage order (sqlite's rowid alias);
* ``{json}``: a JSON document (sqlite keeps the text and queries it with its JSON functions;
  PostgreSQL's ``jsonb`` can carry a GIN index). Both read back as JSON *text*: the PostgreSQL
  store loads ``jsonb`` as text (:mod:`syncd.store.pg`), so code above the store parses it the
  same way on both.

A statement that only one dialect needs is written as ``{dialect: sql}``; the other dialect
skips it.
"""

from __future__ import annotations

from syncd.store.sql import CATALOG_INFO

TYPES: dict[str, dict[str, str]] = {
    "sqlite": {
        "bigint": "INTEGER",
        "key": "TEXT",
        "rowid": "INTEGER PRIMARY KEY",
        "json": "TEXT",
        "without_rowid": " WITHOUT ROWID",
    },
    "postgresql": {
        "bigint": "BIGINT",
        "key": 'TEXT COLLATE "C"',
        "rowid": "BIGINT PRIMARY KEY",
        "json": "JSONB",
        "without_rowid": "",
    },
}

#: a statement of a shared migration: SQL for both dialects, or ``{dialect: sql}`` for the
#: dialects that need it
Statement = str | dict[str, str]


def render(statement: str, dialect: str) -> str:
    """``statement`` with its ``{placeholders}`` filled in for ``dialect``."""
    return statement.format(**TYPES[dialect])


def migrations(dialect: str) -> list[tuple[str, list[str]]]:
    """The migrations declared once (here), in order, as ``dialect``'s SQL."""
    out = []
    for name, statements in SHARED:
        sql = []
        for s in statements:
            if isinstance(s, dict):
                if dialect not in s:
                    continue
                s = s[dialect]
            sql.append(render(s, dialect))
        out.append((name, sql))
    return out


#: the change log (see :mod:`syncd.store.changes`), one row per *group* of changes written
#: together (a reconcile batch, an event chunk of one dataset, a push flush): a first sync
#: records a change per object, and one row per change doubled the rows such a sync writes
#: (measured: +54% on a first sync), where a packed group costs one row per batch.
#: The group's changes have the consecutive cursors ``cursor`` .. ``last``; ``source`` (listing,
#: event, watch, push, edit, admin) and ``at`` are the group's; ``kinds`` is one letter for all
#: (``c`` created, ``u`` updated, ``d`` deleted, ``r`` dataset_removed) or one per change;
#: ``entries`` is a JSON array with one array per change: the item's key, size, etag,
#: content_type, mtime, version, md5 and metadata after the change (for a delete, as they
#: were). An item's filename and uri follow from its dataset's binding and are derived when
#: read. ``dataset`` (the name) is kept only on a removal, whose group has no entries.
CHANGES = """CREATE TABLE changes (
    cursor {rowid},
    last {bigint} NOT NULL,
    source TEXT NOT NULL,
    at TEXT NOT NULL,
    dataset_id {bigint} NOT NULL,
    dataset TEXT,
    kinds TEXT NOT NULL,
    entries TEXT NOT NULL
)"""

#: where each consumer of the change log (a webhook, a queue sink) is: every change up to
#: ``cursor`` is delivered; ``batch_end``, when set, is the end of the batch in flight (sent,
#: not yet acknowledged: it is sent again, as the same batch, after a crash); ``failing_since``
#: and ``last_error`` say why it is behind; ``paused`` stops it (a 4xx it must not retry)
DELIVERIES = """CREATE TABLE deliveries (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    cursor {bigint} NOT NULL,
    batch_end {bigint},
    attempts INTEGER NOT NULL DEFAULT 0,
    failing_since TEXT,
    last_error TEXT,
    paused INTEGER NOT NULL DEFAULT 0,
    updated_at TEXT NOT NULL
)"""

#: a dataset frozen at change-log cursor ``cursor`` (:mod:`syncd.store.snapshots`), with the
#: count and bytes of its items then
SNAPSHOTS = """CREATE TABLE snapshots (
    dataset_id {bigint} NOT NULL,
    tag TEXT NOT NULL,
    message TEXT,
    created_at TEXT NOT NULL,
    cursor {bigint} NOT NULL,
    items {bigint} NOT NULL,
    bytes {bigint} NOT NULL,
    PRIMARY KEY (dataset_id, tag)
)"""

#: what item writes replaced while the dataset had snapshots: the key's state before the
#: change at ``cursor`` (``present`` 0: the key did not exist; the other columns are null);
#: the columns are the ``items`` columns of the same names (:mod:`syncd.store.snapshots`)
ITEM_UNDO = """CREATE TABLE item_undo (
    dataset_id {bigint} NOT NULL,
    key {key} NOT NULL,
    cursor {bigint} NOT NULL,
    present INTEGER NOT NULL,
    filename TEXT,
    uri TEXT,
    size {bigint},
    etag TEXT,
    content_type TEXT,
    mtime TEXT,
    version TEXT,
    created_at TEXT,
    updated_at TEXT,
    metadata {json},
    md5 TEXT,
    user_metadata {json},
    tags {json},
    PRIMARY KEY (dataset_id, key, cursor)
){without_rowid}"""

SHARED: list[tuple[str, list[Statement]]] = [
    (
        "0008_run_ranges",
        [
            # a split run (syncd.store.ranges): one large dataset's run cut into key ranges
            # [lo, hi), each leased ("range:<run>:<idx>"), listed and resumed on its own; the
            # run's parked deletes are applied once every range is completed. ``runs.ranges``
            # is how many (0: a run that is not split)
            "ALTER TABLE runs ADD COLUMN ranges INTEGER NOT NULL DEFAULT 0",
            """CREATE TABLE run_ranges (
                run_id {bigint} NOT NULL REFERENCES runs(id),
                idx INTEGER NOT NULL,
                lo {key},
                hi {key},
                status TEXT NOT NULL,
                resume_key {key},
                owner TEXT,
                attempts INTEGER NOT NULL DEFAULT 0,
                started_at TEXT,
                ended_at TEXT,
                error TEXT,
                listed {bigint} NOT NULL DEFAULT 0,
                created {bigint} NOT NULL DEFAULT 0,
                updated {bigint} NOT NULL DEFAULT 0,
                deleted {bigint} NOT NULL DEFAULT 0,
                unchanged {bigint} NOT NULL DEFAULT 0,
                filtered {bigint} NOT NULL DEFAULT 0,
                skipped {bigint} NOT NULL DEFAULT 0,
                PRIMARY KEY (run_id, idx)
            )""",
            # every attempt at a range: who, when, from where, how far (no two attempts of one
            # range may overlap in time; tests check it)
            """CREATE TABLE range_attempts (
                run_id {bigint} NOT NULL REFERENCES runs(id),
                idx INTEGER NOT NULL,
                attempt INTEGER NOT NULL,
                owner TEXT NOT NULL,
                started_at TEXT NOT NULL,
                ended_at TEXT,
                status TEXT NOT NULL,
                resumed_after {key},
                last_key {key},
                error TEXT,
                PRIMARY KEY (run_id, idx, attempt)
            )""",
        ],
    ),
    (
        "0009_workers",
        [
            # the `syncd run` processes sharing this catalog (syncd.store.workers): one row per
            # worker while it runs, its expiry renewed by its heartbeat; deleted on a clean
            # stop, so a row whose expiry passed (or whose process is gone, same host) is a
            # worker that died. Its dataset leases are the ones owned by "<id>/...".
            """CREATE TABLE workers (
                id TEXT PRIMARY KEY,
                host TEXT NOT NULL,
                pid {bigint} NOT NULL,
                started_at TEXT NOT NULL,
                heartbeat_at TEXT NOT NULL,
                expires_at TEXT NOT NULL,
                api TEXT
            )""",
            # the catalog-wide daemon lease is gone: several workers share a catalog
            "DELETE FROM leases WHERE name = 'daemon'",
        ],
    ),
    (
        "0010_key_marker_times",
        [
            # the event's time as microseconds since the epoch (event_time is ISO text of
            # varying precision, which does not compare as text): a listing that saw a version
            # written after the event's change is newer than the event (the write guard)
            "ALTER TABLE key_markers ADD COLUMN event_us {bigint}",
        ],
    ),
    (
        "0011_listing_times",
        [
            # when the listing page that showed a parked key gone was requested (microseconds,
            # the provider's clock): an older event does not keep the key (Seen, apply_parked)
            "ALTER TABLE pending_deletes ADD COLUMN seen_us {bigint} NOT NULL DEFAULT 0",
        ],
    ),
    ("0012_catalog_info", [CATALOG_INFO]),
    (
        "0013_changes",
        [
            CHANGES,
            # one dataset's changes in order (GET /datasets/{name}/changes, a filtered follow)
            "CREATE INDEX changes_dataset ON changes (dataset_id, cursor)",
            # the last cursor handed out, and the last one pruned (a follower behind it has
            # missed changes: 410 Gone)
            "INSERT INTO counters (name, value) VALUES ('change_cursor', 0)",
            "INSERT INTO counters (name, value) VALUES ('changes_pruned', 0)",
            # the largest dataset id ever given (sqlite: ids are never reused, the log names
            # datasets by id; PostgreSQL's identity column never reuses one anyway)
            "INSERT INTO counters (name, value) SELECT 'dataset_id', coalesce(max(id), 0)"
            " FROM datasets",
            DELIVERIES,
        ],
    ),
    (
        # An item's metadata has three parts, kept apart so that each writer owns one:
        # ``metadata`` is what the provider says (written by listings, HEADs and events, and
        # replaced with the object), ``user_metadata`` and ``tags`` are the user's (written only
        # by item edits, kept across re-syncs and events, gone with the item). See
        # syncd.store.catalog.Item for the shape of each.
        "0014_item_metadata",
        [
            {"postgresql": "ALTER TABLE items ALTER COLUMN metadata DROP DEFAULT"},
            {
                "postgresql": "ALTER TABLE items ALTER COLUMN metadata TYPE JSONB"
                " USING metadata::jsonb"
            },
            {"postgresql": "ALTER TABLE items ALTER COLUMN metadata SET DEFAULT '{{}}'"},
            "ALTER TABLE items ADD COLUMN user_metadata {json} NOT NULL DEFAULT '{{}}'",
            "ALTER TABLE items ADD COLUMN tags {json} NOT NULL DEFAULT '[]'",
        ],
    ),
    (
        # The indexes of item queries (syncd.store.query_sql, which repeats the partial
        # indexes' predicates; its docstring says what each gives). Every index is written
        # with every item, and a 1M first sync must stay within 10% of its time without
        # them: so partial indexes over the items that have user metadata, tags or provider
        # metadata (a sync writing items without them hardly touches them; sqlite: key, size
        # and the JSON, read alone; PostgreSQL: GIN jsonb_path_ops for ``@>``). No index on
        # content type, size or time: (dataset_id, content_type, key, size) cost a 1M first
        # sync 15% on sqlite and 14% on PostgreSQL, and reading along the key meets the query
        # targets without it (bench/bench_query.py).
        "0015_item_queries",
        [
            {
                "sqlite": "CREATE INDEX items_user_metadata"
                " ON items (dataset_id, key, size, user_metadata)"
                " WHERE user_metadata <> '{{}}'",
                "postgresql": "CREATE INDEX items_user_metadata"
                " ON items USING gin (user_metadata jsonb_path_ops)"
                " WHERE user_metadata <> '{{}}'::jsonb",
            },
            {
                "sqlite": "CREATE INDEX items_tags ON items (dataset_id, key, size, tags)"
                " WHERE tags <> '[]'",
                "postgresql": "CREATE INDEX items_tags ON items USING gin (tags jsonb_path_ops)"
                " WHERE tags <> '[]'::jsonb",
            },
            {
                "sqlite": "CREATE INDEX items_provider_metadata"
                " ON items (dataset_id, key, size, metadata)"
                " WHERE instr(metadata, '\"provider\"') + instr(metadata, '\"object_tags\"') > 0",
                "postgresql": "CREATE INDEX items_provider_metadata"
                " ON items USING gin (metadata jsonb_path_ops)"
                " WHERE (metadata -> 'provider') IS NOT NULL OR (metadata -> 'object_tags') IS NOT NULL",
            },
        ],
    ),
    (
        # The run-time settings of a dataset created over the HTTP API (syncd.api.create_dataset):
        # a row here makes every daemon sharing the catalog schedule the dataset, as if a config
        # declared it. ``interval`` is seconds (null: the daemon's [daemon] interval),
        # ``max_delete`` the limit as written ("25%", "100"; null: none), ``watch`` 0 or 1,
        # ``metadata`` "listing" or "head" and ``tags`` 0 or 1 (syncd.reconcile.metadata).
        # ``updated_at`` changes with every write, so a daemon's poll tells a patch apart.
        "0016_dataset_settings",
        [
            """CREATE TABLE dataset_settings (
    dataset_id {bigint} PRIMARY KEY,
    interval_seconds INTEGER,
    max_delete TEXT,
    watch INTEGER NOT NULL DEFAULT 1,
    metadata TEXT NOT NULL DEFAULT 'listing',
    tags INTEGER NOT NULL DEFAULT 0,
    updated_at TEXT NOT NULL
)""",
        ],
    ),
    (
        # Whether an item's content type is a guess follows its source's rule
        # (providers.content_types: S3, local folders and synthetic sources guess, GCS and Azure
        # state), and a row stores only the exceptions, so a sync of an S3 bucket writes "{}"
        # rather than the same marker in every row. Rows written before: on a guessing source
        # the marker alone becomes "{}"; a row without the marker had a stated type (a HEAD, a
        # push) and now says "false". On GCS and Azure nothing changes.
        # The provider-metadata index then takes the rows whose metadata is not "{}": those
        # with provider metadata or object tags, and the few exceptions. Its predicate was two
        # instr() calls per row, evaluated for every item a sync writes; a comparison with a
        # constant costs a 1M first sync about half as much (bench/README.md).
        "0017_content_type_rule",
        [
            "DROP INDEX items_provider_metadata",
            {
                "sqlite": """UPDATE items SET metadata = CASE
    WHEN metadata = '{{"content_type_guessed": true}}' THEN '{{}}'
    WHEN metadata = '{{}}' THEN '{{"content_type_guessed": false}}'
    ELSE json_set(metadata, '$.content_type_guessed', json('false')) END
WHERE (metadata = '{{"content_type_guessed": true}}'
       OR instr(metadata, '"content_type_guessed"') = 0)
  AND dataset_id IN (SELECT ds.id FROM datasets ds JOIN drivers d ON d.id = ds.driver_id
                     WHERE d.type NOT IN ('gcs', 'azure'))""",
                "postgresql": """UPDATE items SET metadata = CASE
    WHEN metadata = '{{"content_type_guessed": true}}'::jsonb THEN '{{}}'::jsonb
    ELSE metadata || '{{"content_type_guessed": false}}'::jsonb END
WHERE (metadata = '{{"content_type_guessed": true}}'::jsonb
       OR NOT jsonb_exists(metadata, 'content_type_guessed'))
  AND dataset_id IN (SELECT ds.id FROM datasets ds JOIN drivers d ON d.id = ds.driver_id
                     WHERE d.type NOT IN ('gcs', 'azure'))""",
            },
            {
                "sqlite": "CREATE INDEX items_provider_metadata"
                " ON items (dataset_id, key, size, metadata) WHERE metadata <> '{{}}'",
                "postgresql": "CREATE INDEX items_provider_metadata"
                " ON items USING gin (metadata jsonb_path_ops) WHERE metadata <> '{{}}'::jsonb",
            },
        ],
    ),
    (
        # snapshots (issue 25): the snapshot rows and the undo log of what item writes
        # replaced while a dataset had one; see syncd.store.snapshots for the design
        "0018_snapshots",
        [
            SNAPSHOTS,
            ITEM_UNDO,
            # an s3 driver that lists object versions (providers.config.DriverConfig.versioned)
            "ALTER TABLE drivers ADD COLUMN versioned INTEGER NOT NULL DEFAULT 0",
        ],
    ),
]
