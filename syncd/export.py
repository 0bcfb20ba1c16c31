"""``syncd items export``: a manifest of a dataset's items (or a snapshot's) for training
loaders, as JSON Lines, CSV or Parquet.

Contracts:

* One row per item, in key order, with the columns :data:`COLUMNS` (and ``url`` when URLs are
  asked for): ``key``, ``uri``, ``size``, ``etag``, ``md5``, ``version``, ``content_type``,
  ``mtime``, ``metadata`` (the provider's part with the user's under ``user``, as
  ``syncd items get`` shows it) and ``tags`` (the user's tags).
* JSON Lines: one JSON object per line, ``metadata`` an object, ``tags`` a list, none
  ``null``. CSV (RFC 4180, a header row): ``metadata`` and ``tags`` as JSON text, none an
  empty field; keys holding commas, quotes or line breaks are quoted, so they read back as
  they were. Parquet: ``size`` int64, ``tags`` a list of strings, ``metadata`` JSON text,
  the rest strings (null for none); written in row groups of :data:`ROW_GROUP` rows.
* Constant memory: the items come from an iterator (keyset pages of the catalog) and at most
  one row group (Parquet) or one row (JSON Lines, CSV) is held at a time; the fast path
  (:func:`write_pages`) holds one page of :data:`ROW_GROUP` raw rows.
* Two paths, one output: a whole live dataset (or a prefix of it) without ``--where`` or
  URLs is read as raw stored columns in pages and built a column at a time
  (:func:`write_pages`: about 3x less CPU for Parquet); everything else goes through
  :class:`Item` rows (:func:`write_manifest`). The tests hold the two to the same bytes
  (JSON Lines, CSV) and the same table (Parquet).
* Parquet needs pyarrow (``pip install 'syncd[parquet]'``); without it, one line says so
  before anything is written.
* A URL (``url``) reads the object for the ``ttl`` asked; a snapshot's rows are signed for the
  recorded version where one was recorded (:meth:`providers.base.Driver.presign_version`).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import operator
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, BinaryIO, NamedTuple, TypeVar, cast

from syncd.errors import UsageError
from syncd.store.catalog import Item

if TYPE_CHECKING:  # the query model loads pydantic: only an export with --where needs it
    import pyarrow as pa

    from syncd.query import Query

FORMATS = ("jsonl", "csv", "parquet")
COLUMNS = (
    "key",
    "uri",
    "size",
    "etag",
    "md5",
    "version",
    "content_type",
    "mtime",
    "metadata",
    "tags",
)
#: rows per Parquet row group: enough for fast scans, few enough to hold (a few MB of items)
ROW_GROUP = 16384

T = TypeVar("T")

#: ``presign(item)``: the URL of one item's object (a coroutine)
Presign = Callable[[Item], Awaitable[str]]

_DURATION = re.compile(r"([0-9]+)\s*([smhd]?)", re.IGNORECASE)
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """Seconds in ``text``: a number of seconds, or one with a unit ``s``, ``m``, ``h``,
    ``d`` (``90``, ``15m``, ``1h``, ``7d``). ``ValueError`` with one line otherwise."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a duration (like 3600, 15m, 1h or 7d)")
    return int(match[1]) * _SECONDS[match[2].lower()]


def matcher(query: Query) -> Callable[[Item], bool]:
    """Whether an item matches ``query``'s prefix and every condition of its ``where``, in
    Python, as the store's SQL (:mod:`syncd.store.query_sql`) decides it: for items no SQL
    query can reach (a snapshot's, partly in the undo log). The tests hold it to the SQL's
    answer on the same items."""
    from syncd.query import glob_matcher

    tests: list[Callable[[Item], bool]] = []
    for cond in query.where:
        if cond.kind == "glob":
            match = glob_matcher(cond.pattern)
            tests.append(lambda i, m=match: m(i.key))
        elif cond.kind == "content_type":
            tests.append(lambda i, c=cond: _content_type(i.content_type, c.value))
        elif cond.kind == "compare":
            tests.append(lambda i, c=cond: _compare(i, c.field, c.op, c.value))
        elif cond.kind == "meta":
            tests.append(lambda i, c=cond: _meta(i, c.column, c.path, c.scalars()))
        else:  # tags
            tests.append(lambda i, c=cond: _tags(i, c.mode, c.tags))
    prefix = query.prefix
    return lambda item: item.key.startswith(prefix) and all(t(item) for t in tests)


def _content_type(have: str | None, want: str) -> bool:
    if have is None:
        return False
    return have.startswith(want[:-1]) if want.endswith("/*") else have == want


def _compare(item: Item, field: str, op: str, value: int | str) -> bool:
    from syncd.query import mtime_order

    mine: Any
    if field == "size":
        mine = item.size
    elif field == "mtime":
        mine = mtime_order(item.mtime)  # the query's bound is in that form (time_bound)
    else:
        mine = item.updated_at
    return bool(_OPS[op](mine, value))


_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "=": operator.eq,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def _same(a: Any, b: Any) -> bool:
    """JSON equality with types: true is not 1, "5" is not 5, 5 is 5.0."""
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return a is b
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    return False


def _meta(item: Item, column: str, path: tuple[str, ...], values: list[Any]) -> bool:
    doc: Any = json.loads(item.user_metadata if column == "user_metadata" else item.metadata)
    for segment in path:
        if not isinstance(doc, dict) or segment not in doc:
            return False
        doc = doc[segment]
    return not values or any(_same(doc, v) for v in values)


def _tags(item: Item, mode: str, wanted: tuple[str, ...]) -> bool:
    have = set(json.loads(item.tags))
    return bool(have.intersection(wanted)) if mode == "any" else set(wanted) <= have


def need_pyarrow() -> Any:
    """``pyarrow.parquet`` (and pyarrow), or a :class:`UsageError` saying how to get it."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise UsageError(
            "--format parquet needs pyarrow, which is not installed: "
            "pip install 'syncd[parquet]' (or use --format jsonl or csv)"
        ) from None
    return pa, pq


def row_of(item: Item) -> dict[str, Any]:
    """The manifest row of ``item`` (without ``url``), metadata and tags as values."""
    return {
        "key": item.key,
        "uri": item.uri,
        "size": item.size,
        "etag": item.etag,
        "md5": item.md5,
        "version": item.version,
        "content_type": item.content_type,
        "mtime": item.mtime,
        "metadata": {**json.loads(item.metadata), "user": json.loads(item.user_metadata)},
        "tags": json.loads(item.tags),
    }


async def write_manifest(
    items: Iterable[Item], out: BinaryIO, fmt: str, *, presign: Presign | None = None
) -> int:
    """Write the manifest of ``items`` (consumed one at a time, never collected) to ``out``
    in format ``fmt`` (one of :data:`FORMATS`), with a ``url`` column signed by ``presign``
    when given. Returns the rows written."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    if fmt == "parquet":
        return await _parquet(items, out, presign)
    text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=False)
    try:
        return await (_jsonl if fmt == "jsonl" else _csv)(items, text, presign)
    finally:
        text.flush()
        text.detach()  # ``out`` stays open: the caller's


async def _jsonl(items: Iterable[Item], out: io.TextIOWrapper, presign: Presign | None) -> int:
    n = 0
    for item in items:
        row = row_of(item)
        if presign is not None:
            row["url"] = await presign(item)
        out.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")))
        out.write("\n")
        n += 1
    return n


async def _csv(items: Iterable[Item], out: io.TextIOWrapper, presign: Presign | None) -> int:
    # every field quoted: a key of spaces or one that starts with "=" reads back as it was,
    # and no spreadsheet takes a quoted field for a formula
    writer = csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\r\n")
    writer.writerow([*COLUMNS, *(["url"] if presign else [])])
    n = 0
    for item in items:
        row = row_of(item)
        row["metadata"] = json.dumps(row["metadata"], ensure_ascii=False, sort_keys=True)
        row["tags"] = json.dumps(row["tags"], ensure_ascii=False)
        cells = ["" if row[c] is None else row[c] for c in COLUMNS]
        if presign is not None:
            cells.append(await presign(item))
        writer.writerow(cells)
        n += 1
    return n


def metadata_text(metadata: str, user_metadata: str) -> str:
    """The ``metadata`` column's JSON text: the provider's part (a JSON object's text, as
    stored) with the user's object under ``user``, spliced as text (no parse: a Parquet
    export writes a million of these). The provider's part never has a member ``user``
    (:class:`~syncd.store.catalog.Item`), so the object stays one without duplicates."""
    return _head(metadata) + user_metadata + "}"


def _head(metadata: str) -> str:
    """What :func:`metadata_text` puts before the user's part: the provider's object opened
    for one more member ``user`` (the fast path joins it to the user's text a column at a
    time, so both paths splice alike)."""
    body = metadata.strip()
    if body == "{}":
        return '{"user":'
    return body[:-1].rstrip() + ',"user":'


def _tag_list(tags: str) -> list[str]:
    return [] if tags == "[]" else json.loads(tags)


def _schema(pa: Any, urls: bool) -> Any:
    """The Parquet schema of a manifest (with ``url`` when ``urls``)."""
    fields = [
        pa.field("key", pa.string(), nullable=False),
        pa.field("uri", pa.string()),
        pa.field("size", pa.int64()),
        pa.field("etag", pa.string()),
        pa.field("md5", pa.string()),
        pa.field("version", pa.string()),
        pa.field("content_type", pa.string()),
        pa.field("mtime", pa.string()),
        pa.field("metadata", pa.string()),
        pa.field("tags", pa.list_(pa.string())),
    ]
    if urls:
        fields.append(pa.field("url", pa.string()))
    return pa.schema(fields)


def _parquet_writer(pq: Any, pa: Any, out: BinaryIO, schema: Any) -> Any:
    """A Parquet writer of ``schema`` to ``out``: zstd; dictionary pages only for the
    columns whose values repeat (keys, URIs, ETags are unique: a dictionary of them is
    built, overflows and is thrown away, which costs time and doubles the file)."""
    return pq.ParquetWriter(
        pa.PythonFile(out, mode="w"),
        schema,
        compression="zstd",
        use_dictionary=["content_type", "metadata", "tags.list.element"],
    )


async def _parquet(items: Iterable[Item], out: BinaryIO, presign: Presign | None) -> int:
    pa, pq = need_pyarrow()
    schema = _schema(pa, presign is not None)
    plain = [operator.attrgetter(f.name) for f in list(schema)[:8]]
    n = 0
    source = iter(items)
    with _parquet_writer(pq, pa, out, schema) as writer:
        # one row group at a time: its items, then each column in one pass (a comprehension
        # per column costs far less than a dict per row)
        while chunk := list(itertools.islice(source, ROW_GROUP)):
            columns: list[list[Any]] = [list(map(get, chunk)) for get in plain]
            columns.append(list(map(metadata_text, [i.metadata for i in chunk],
                                    [i.user_metadata for i in chunk])))  # fmt: skip
            columns.append([_tag_list(i.tags) for i in chunk])
            if presign is not None:
                columns.append([await presign(i) for i in chunk])
            writer.write_batch(pa.record_batch(columns, schema=schema), row_group_size=ROW_GROUP)
            n += len(chunk)
    return n


# -- the fast path: raw stored columns, transformed a column at a time ---------------------

#: the stored ``items`` columns :func:`write_pages` takes, in this order
STORED = (*COLUMNS[:8], "metadata", "user_metadata", "tags")


class _Stored(NamedTuple):
    """One raw row of :data:`STORED` with its provider metadata made public: what
    :func:`row_of` reads of an :class:`Item`, for JSON Lines and CSV, at the cost of a
    tuple."""

    key: str
    uri: str
    size: int
    etag: str
    md5: str | None
    version: str | None
    content_type: str | None
    mtime: str
    metadata: str
    user_metadata: str
    tags: str


async def write_pages(
    pages: Iterable[list[tuple[Any, ...]]], out: BinaryIO, fmt: str, *, guesses: bool
) -> int:
    """Write the manifest of items given as pages of raw stored rows (the columns
    :data:`STORED`, as :meth:`~syncd.store.catalog.Catalog.iter_item_pages` reads them; the
    provider metadata as stored, made public here with
    :func:`providers.content_types.public_metadata` under the dataset's rule ``guesses``)
    to ``out`` in format ``fmt``: the same bytes (JSON Lines, CSV) or the same table
    (Parquet) as :func:`write_manifest` of those items, without an :class:`Item` per row.
    Parquet is built a column at a time in Arrow (a row group per page; the per-row work in
    Python is only on the distinct metadata and tag texts of a page). One page is held at a
    time. Returns the rows written."""
    if fmt == "parquet":
        return _parquet_pages(pages, out, guesses)
    from providers.content_types import public_metadata

    rows = (_Stored(*r[:8], public_metadata(r[8], guesses), *r[9:]) for page in pages for r in page)
    # a _Stored has every attribute of an Item that the writers read (row_of)
    return await write_manifest(cast(Iterable[Item], rows), out, fmt)


def _parquet_pages(pages: Iterable[list[tuple[Any, ...]]], out: BinaryIO, guesses: bool) -> int:
    """:func:`write_batches` of pages of raw stored rows (:data:`STORED`)."""
    pa, _ = need_pyarrow()
    stored = pa.struct([pa.field(c, pa.int64() if c == "size" else pa.string()) for c in STORED])
    # each page's tuples straight into Arrow (one C pass), then columns of it
    batches = (pa.RecordBatch.from_struct_array(pa.array(rows, type=stored)) for rows in pages)
    return write_batches(batches, out, guesses=guesses)


def read_ahead(batches: Iterable[T], depth: int = 2) -> Iterator[T]:
    """``batches`` in order, read by a thread of their own up to ``depth`` ahead of the
    consumer: the Arrow reader (C, without the GIL) fills the next pages while the Parquet
    writer (C++, without the GIL) encodes this one, on two cores (a 1M export: 1.2-1.9 s ->
    1.0-1.1 s wall, bench/README.md). An error of the reader is raised here, in order; when
    the consumer stops early the thread stops at its next batch and closes ``batches``."""
    import queue
    import threading

    handoff: queue.Queue[tuple[str, Any]] = queue.Queue(depth)
    stop = threading.Event()

    def put(item: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue  # the consumer is busy; look at stop again
        return False

    def produce() -> None:
        source = iter(batches)
        try:
            for batch in source:
                if not put(("batch", batch)):
                    break
            else:
                put(("end", None))
        except BaseException as exc:  # handed to the consumer, raised there
            put(("error", exc))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="syncd-export-read", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = handoff.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        thread.join()


def write_batches(batches: Iterable[pa.RecordBatch], out: BinaryIO, *, guesses: bool) -> int:
    """Write the Parquet manifest of items given as Arrow record batches of the raw stored
    columns :data:`STORED` (as :func:`syncd.store.arrow_read.sqlite_item_batches` reads
    them) to ``out``: the same table as :func:`write_pages` of those rows (a row group per
    batch; the per-row work in Python is only on the distinct metadata and tag texts of a
    batch). Returns the rows written."""
    pa, pq = need_pyarrow()
    import pyarrow.compute as pc

    from providers.content_types import public_metadata

    schema = _schema(pa, False)
    n = 0
    with _parquet_writer(pq, pa, out, schema) as writer:
        for batch in batches:
            # metadata: each distinct stored text of the batch made public and opened once,
            # then joined to the user's texts in Arrow (as metadata_text splices them)
            meta = batch.column("metadata").dictionary_encode()
            heads = [_head(public_metadata(t, guesses)) for t in meta.dictionary.to_pylist()]
            metadata = pc.binary_join_element_wise(
                pa.array(heads, pa.string()).take(meta.indices),
                batch.column("user_metadata"),
                "}",
                "",
            )
            # tags: each distinct text of the batch parsed once
            tags = batch.column("tags").dictionary_encode()
            lists = pa.array(
                [_tag_list(t) for t in tags.dictionary.to_pylist()], pa.list_(pa.string())
            )
            columns = [batch.column(c) for c in COLUMNS[:8]]
            columns += [metadata, lists.take(tags.indices)]
            writer.write_batch(
                pa.RecordBatch.from_arrays(columns, schema=schema), row_group_size=ROW_GROUP
            )
            n += batch.num_rows
    return n
