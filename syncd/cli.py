"""The ``syncd`` command: a thin layer over :mod:`syncd.api`.

Exit codes: 0 success, 1 the sync (or a provider) failed, 2 bad usage or configuration.
Errors print as one line on stderr; ``--debug`` adds the traceback and debug logging.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import logging
import os
import shlex
import sqlite3
import sys
import time
import traceback
from collections.abc import Iterator
from typing import Any

import click

from providers.config import ConfigError
from providers.errors import StorageError
from providers.redact import redact
from syncd import api, logs
from syncd.errors import SyncdError, UsageError
from syncd.limits import MaxDelete, MaxDeleteType
from syncd.reconcile.filters import Filters
from syncd.reconcile.march import Action, Change
from syncd.reconcile.sync import DatasetBusy, SyncOptions, SyncResult
from syncd.store import lease
from syncd.store.catalog import Catalog
from syncd.store.checkpoint import DEFAULT_RESUME_WITHIN, Checkpoint
from syncd.store.db import catalog_error, default_db_path, transaction
from syncd.units import UNITS_HELP, SizeType

DB_HELP = (
    "catalog: a sqlite file path, or postgresql://[user@]host[:port]/dbname "
    "[default: $SYNCD_DB, else the config's [catalog] url, else ./syncd.db]"
)
SYMBOL = {Action.CREATE: "+", Action.UPDATE: "~", Action.DELETE: "-"}


CONFIG_HELP = (
    "syncd.toml whose [catalog] url names the catalog [default: $SYNCD_CONFIG, else "
    "./syncd.toml if present]"
)
_CONFIG_KEY = "syncd.config"


def resolve_catalog(
    db_path: str | None,
    config_path: str | None = None,
    *,
    configured: str | None = None,
    announce: bool = True,
) -> str:
    """The catalog a command uses, by the one rule every command follows: ``--db``, else
    ``$SYNCD_DB``, else the ``[catalog] url`` of the config file (``--config``, else
    ``$SYNCD_CONFIG``, else ``./syncd.toml`` if there is one), else ``./syncd.db``. Logged at
    ``-v`` (the URL without its password).

    ``configured``: the ``[catalog] url`` of a config the command has read already (``""``
    when it has none), so the file is not looked for again. ``announce=False``: no log line
    (the daemons name their catalog in their ready line)."""
    url = db_path or os.environ.get("SYNCD_DB") or configured
    if not url and configured is None:
        from syncd.config import find_config  # pydantic: only when a config may be read

        found = find_config(config_path)
        if found:
            from syncd.config import load_daemon_config

            url = load_daemon_config(found).catalog_url
    url = default_db_path(url)
    if announce:
        logging.getLogger("syncd").info("catalog: %s", redact(_display(url)))
    return url


def _display(url: str) -> str:
    from syncd.store.sql import display_url  # no psycopg: a sqlite run never loads it

    return display_url(url) if url.startswith(("postgresql://", "postgres://")) else url


def _remember_config(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    ctx.meta[_CONFIG_KEY] = value


def _resolve_db(ctx: click.Context, _param: click.Parameter, value: str | None) -> str:
    return resolve_catalog(value, ctx.meta.get(_CONFIG_KEY), announce=ctx.info_name != "serve")


def _db_option(f: Any) -> Any:
    """``--db`` and ``--config``: the command's ``db_path`` is the catalog to use, resolved by
    :func:`resolve_catalog` (so every command finds the same catalog)."""
    f = click.option("--db", "db_path", metavar="URL", help=DB_HELP, callback=_resolve_db)(f)
    return click.option(
        "--config",
        metavar="FILE",
        help=CONFIG_HELP,
        is_eager=True,  # read before --db is resolved
        expose_value=False,
        callback=_remember_config,
    )(f)


def _plain_db_option(f: Any) -> Any:
    """``--db`` of a command with a ``--config`` of its own (``sync``, ``run``)."""
    return click.option("--db", "db_path", metavar="URL", help=DB_HELP)(f)


def _json_option(f: Any) -> Any:
    return click.option("--json", "as_json", is_flag=True, help="print one JSON object per line")(f)


_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str) -> str:
    """``text`` safe for one line of a terminal or a tab-separated table: backslash, newline,
    tab, other control characters (C0, DEL, C1) and the Unicode line separators are escaped
    (``\\n``, ``\\x1b``, ``\\u2028``), so a hostile key can neither break a line nor drive
    the terminal. JSON output keeps keys exact."""
    out = []
    for ch in text:
        code = ord(ch)
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif code < 0x20 or 0x7F <= code < 0xA0:
            out.append(f"\\x{code:02x}")
        elif code in (0x2028, 0x2029) or 0xD800 <= code <= 0xDFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


#: changes read (and written out) at a time by ``syncd changes``
_FEED_PAGE = 1000


def _emit(obj: dict[str, Any]) -> None:
    click.echo(json.dumps(obj, ensure_ascii=False, sort_keys=True))


class Progress:
    """A one-line live display on a terminal (stderr); silent elsewhere."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.started = time.monotonic()
        self.last = 0.0

    def __call__(self, counts: dict[str, int]) -> None:
        t = time.monotonic()
        if not self.enabled or t - self.last < 0.2:
            return
        self.last = t
        rate = counts["listed"] / max(t - self.started, 1e-6)
        click.echo(
            f"\rlisted {counts['listed']:,} ({rate:,.0f}/s)  +{counts['created']:,} "
            f"~{counts['updated']:,} -{counts.get('to_delete', counts['deleted']):,} "
            f"={counts['unchanged']:,}",
            nl=False,
            err=True,
        )

    def done(self) -> None:
        if self.enabled and self.last:
            click.echo("\r\033[K", nl=False, err=True)


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            # before click's own handler, which would exit 1: a closed reader is no failure
            _quiet_exit_on_broken_pipe()


@click.group(
    cls=_Group,
    context_settings={"help_option_names": ["-h", "--help"]},
    invoke_without_command=True,
    no_args_is_help=False,
)
@click.option("--debug", is_flag=True, help="tracebacks, and debug logging as with -vv")
@click.option("-v", "--verbose", count=True, help="-v: info lines; -vv: debug, SDKs included")
@click.option("-q", "--quiet", is_flag=True, help="errors only")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="log lines as text or one JSON object each",
)
@click.version_option(package_name="syncd")
@click.pass_context
def cli(ctx: click.Context, debug: bool, verbose: int, quiet: bool, log_format: str) -> None:
    """Mirror cloud buckets and folders into datasets of external items.

    --debug, -v/-vv, -q and --log-format may also follow the command. Secrets are masked in
    every log line, the SDKs' included."""
    verbosity = -1 if quiet else (2 if debug else verbose)
    ctx.obj = {"verbosity": verbosity}  # pull and push name files from -v up
    logs.setup(verbosity, log_format, daemon=ctx.invoked_subcommand in ("run", "serve"))
    if ctx.invoked_subcommand is None:
        # bare ``syncd``: the help is what was asked for, not a usage error
        click.echo(ctx.get_help())
        ctx.exit(0)


@cli.command()
@click.argument("source", required=False)
@click.option("--dataset", "dataset_name", metavar="NAME", help="dataset to sync into")
@_plain_db_option
@click.option(
    "--config",
    "config_path",
    metavar="FILE",
    help="syncd.toml declaring datasets [default without SOURCE: $SYNCD_CONFIG, else ./syncd.toml"
    " if present; a dataset it does not declare is synced from the catalog]",
)
@click.option("--include", multiple=True, metavar="GLOB", help="only keys matching (repeatable)")
@click.option(
    "--exclude", multiple=True, metavar="GLOB", help="leave out keys matching (repeatable)"
)
@click.option(
    "--max-size",
    type=SizeType(),
    metavar="SIZE",
    help=f"leave out objects larger than SIZE: bytes, or a number with a unit ({UNITS_HELP})",
)
@click.option("--dry-run", is_flag=True, help="print the plan, change nothing, write nothing")
@click.option("--restart", is_flag=True, help="ignore an interrupted run and list from the start")
@click.option(
    "--resume-within",
    type=click.FloatRange(min=0),
    default=DEFAULT_RESUME_WITHIN,
    show_default=True,
    metavar="SECONDS",
    help="resume an interrupted run only if it started this recently",
)
@click.option(
    "--max-delete",
    type=MaxDeleteType(),
    metavar="N|P%",
    help="if more than N items (or P% of the dataset) would be deleted, delete none and exit 1",
)
@click.option("--wait", is_flag=True, help="if another process is syncing the dataset, wait for it")
@click.option(
    "--replace-filters",
    is_flag=True,
    help="let --include/--exclude/--max-size replace the dataset's stored filters (without it, "
    "filters that differ from the stored ones are refused, showing both)",
)
@click.option(
    "--list-concurrency",
    type=click.IntRange(min=1, max=256),
    metavar="N",
    help="list N key ranges at once (split at the last run's keys, else at the folders under "
    "the source path) [default: the config's list_concurrency, else 1]",
)
@click.option(
    "--ranges",
    type=click.IntRange(min=1, max=256),
    metavar="N",
    help="split a new run into N key ranges, reconciled side by side and resumed one by one "
    "[default: the config's ranges, else one per 50,000 items, at most 32]",
)
@click.option(
    "--metadata",
    "metadata_mode",
    type=click.Choice(["listing", "head"]),
    help="what items record of the provider's metadata: what the listing states, or also a "
    "HEAD of each new or changed object (S3 x-amz-meta-* and Content-Type) [default: the "
    "config's metadata, else listing]",
)
@click.option(
    "--tags/--no-tags",
    "with_tags",
    default=None,
    help="record object tags (S3 object tags with --metadata head, Azure index tags) "
    "[default: the config's tags, else no]",
)
@_json_option
def sync(
    source: str | None,
    dataset_name: str | None,
    db_path: str | None,
    config_path: str | None,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    max_size: int | None,
    dry_run: bool,
    restart: bool,
    resume_within: float,
    max_delete: MaxDelete | None,
    wait: bool,
    replace_filters: bool,
    list_concurrency: int | None,
    ranges: int | None,
    metadata_mode: str | None,
    with_tags: bool | None,
    as_json: bool,
) -> None:
    """Make a dataset equal to SOURCE (or to its bound source, or to --config's datasets).

    SOURCE is s3://bucket[/prefix], gs://bucket[/prefix], az://container[/prefix],
    file:///dir or a folder path. Only one sync of a dataset runs at a time: another one
    refuses (exit 1) or, with --wait, waits.
    """
    if config_path and source:
        raise UsageError("give either SOURCE or --config, not both")
    found = None
    if not source:
        # imported only when a config may be read: the config module loads pydantic, a
        # sixth of a second of every start (a sync of a SOURCE reads no config)
        from syncd.config import find_config

        found = find_config(config_path)
    if not found and not dataset_name:
        raise UsageError("--dataset NAME is required (or pass --config FILE or set SYNCD_CONFIG)")
    config = None
    if found:
        from syncd.config import load_daemon_config

        config = load_daemon_config(found)
    specs = config.datasets if config else None
    if specs is not None and dataset_name is not None and dataset_name not in specs:
        if not config_path:  # a file found by itself: NAME is a dataset of the catalog's
            specs = None
        else:
            raise UsageError(
                f"unknown dataset {dataset_name!r}: {found} declares {', '.join(sorted(specs))}"
            )
    if specs is not None and (include or exclude or max_size is not None):
        raise UsageError(f"with a config file ({found}), declare include/exclude/max_size in it")
    filters = (
        Filters(include, exclude, max_size)
        if (include or exclude or max_size is not None)
        else None
    )
    path = resolve_catalog(db_path, configured=config.catalog_url if config else "")
    # a dry run writes nothing, not even a new catalog file
    catalog = Catalog.open_preview(path) if dry_run else Catalog.open(path)
    verbosity = click.get_current_context().find_root().obj["verbosity"]
    try:
        names = [dataset_name] if dataset_name else sorted(specs or {})
        failures = 0
        for name in names:
            spec = specs[name] if specs else None
            if dry_run and filters is not None:
                _note_filter_change(catalog, name, filters)
            # -v names every change applied: the change log's records of this run
            head = changes_head(catalog) if verbosity >= 1 and not dry_run else None
            progress = Progress(sys.stderr.isatty() and not as_json and not dry_run)
            mode = metadata_mode or (spec.metadata if spec else "listing")
            options = SyncOptions(
                dry_run=dry_run,
                restart=restart,
                resume_within=resume_within,
                max_delete=max_delete or (spec.max_delete if spec else None),
                on_plan=(lambda c: _print_plan(c, as_json)) if dry_run else None,
                on_progress=progress,
                list_concurrency=list_concurrency or (spec.list_concurrency if spec else 1),
                ranges=ranges or (spec.ranges if spec else None),
                metadata="head" if mode == "head" else "listing",
                tags=with_tags if with_tags is not None else bool(spec and spec.tags),
            )
            try:
                result = asyncio.run(
                    api.sync(
                        catalog,
                        name,
                        source=source,
                        spec=spec,
                        filters=filters,
                        options=options,
                        wait=wait,
                        replace_filters=replace_filters,
                    )
                )
            except (SyncdError, StorageError) as exc:
                progress.done()
                if len(names) == 1:
                    raise
                failures += 1
                if as_json:
                    _emit({"error": redact(str(exc)), "dataset": name})
                click.echo(f"syncd: error: {redact(str(exc))}", err=True)
                continue
            progress.done()
            if head is not None:
                _print_applied(catalog, name, head, as_json)
            source_text = _source_of(catalog, name, source, spec)
            if verbosity >= 0 or as_json:  # -q: errors only
                _print_summary(result, source_text, as_json)
        if failures:
            sys.exit(1)
    finally:
        catalog.close()


def _source_of(catalog: Catalog, name: str, source: str | None, spec: Any) -> str:
    """The canonical SOURCE of the synced dataset, for the summary line."""
    found = catalog.find_dataset(name)
    if found is not None:
        return found.source
    return api.preview_dataset(catalog, name, source=source, spec=spec).source


def _print_plan(change: Change, as_json: bool) -> None:
    if as_json:
        _emit({"action": str(change.action), "key": change.key})
    else:
        click.echo(f"{SYMBOL[change.action]} {printable(change.key)}")


def changes_head(catalog: Catalog) -> int:
    from syncd.store import changes

    return changes.head(catalog.db)


def _print_applied(catalog: Catalog, name: str, after: int, as_json: bool) -> None:
    """``+ key`` / ``~ key`` / ``- key`` for each change the sync of ``name`` applied (its
    listing's records in the change log after cursor ``after``)."""
    from syncd.store import changes

    ds = catalog.find_dataset(name)
    if ds is None:
        return
    symbol = {"created": "+", "updated": "~", "deleted": "-"}
    for change in changes.follow(catalog.db, after=after, dataset_id=ds.id):
        if change.source != "listing" or change.key is None:
            continue  # an event applied meanwhile: not this sync's doing
        if as_json:
            _emit({"action": change.kind, "key": change.key})
        else:
            click.echo(f"{symbol[change.kind]} {printable(change.key)}")


def _note_filter_change(catalog: Catalog, name: str, filters: Filters) -> None:
    """A dry run previews other filters without the flag a real sync needs: say so."""
    found = catalog.find_dataset(name)
    if found is not None and found.filters != filters:
        click.echo(
            f"syncd: note: planned with filters {api.describe_filters(filters)}; the dataset's "
            f"are {api.describe_filters(found.filters)} (a real sync needs --replace-filters)",
            err=True,
        )


def _print_summary(result: SyncResult, source: str, as_json: bool) -> None:
    if as_json:
        _emit({"summary": result.as_dict() | {"source": source}})
        return
    c = result.counts
    verb = "planned" if result.dry_run else "synced"
    resumed = f" (resumed after {result.resumed_after!r})" if result.resumed_after else ""
    # every listed object is created, updated, unchanged or filtered
    extra = f", {c['filtered']:,} filtered" + (
        f", {c['skipped']:,} skipped" if c["skipped"] else ""
    )
    if c.get("heads"):  # --metadata head: the objects HEADed (new and changed only)
        extra += f", {c['heads']:,} HEADed"
    click.echo(
        f"{verb} dataset {result.dataset!r} from {source}{resumed}: {c['listed']:,} listed, "
        f"{c['created']:,} created, {c['updated']:,} updated, {c['deleted']:,} deleted, "
        f"{c['unchanged']:,} unchanged{extra} in {result.seconds:.2f}s"
    )


@cli.group()
def datasets() -> None:
    """Datasets in the catalog."""


@datasets.command("ls")
@_db_option
@_json_option
def datasets_ls(db_path: str | None, as_json: bool) -> None:
    """List datasets with their source, item count and last run."""
    catalog = Catalog.open_reader(db_path or default_db_path())
    try:
        if not as_json:
            click.echo("NAME\tSOURCE\tITEMS\tLAST RUN")
        for ds in catalog.list_datasets():
            row = api.dataset_summary(catalog, ds)
            if as_json:
                _emit(row)
                continue
            last = row["last_run"]
            status = (
                f"{last['status']} {last['ended_at'] or last['started_at']}"
                if last
                else "never synced"
            )
            click.echo(f"{ds.name}\t{ds.source}\t{row['items']}\t{status}")
    finally:
        catalog.close()


@datasets.command("show")
@click.argument("name")
@_db_option
@_json_option
def datasets_show(name: str, db_path: str | None, as_json: bool) -> None:
    """Show one dataset: source, driver settings, filters, item count and last run."""
    catalog = Catalog.open_reader(db_path or default_db_path())
    try:
        row = api.dataset_summary(catalog, catalog.get_dataset(name))
    finally:
        catalog.close()
    if as_json:
        _emit(row)
        return
    driver = {k: v for k, v in row["driver"].items() if v not in (None, "", False)}
    last = row["last_run"]
    lines = [
        ("name", row["name"]),
        ("source", row["source"]),
        ("driver", ", ".join(f"{k}={v}" for k, v in driver.items())),
        ("filters", json.dumps(row["filters"], sort_keys=True)),
        ("items", f"{row['items']:,}"),
        ("created", row["created_at"]),
        (
            "last run",
            "never synced"
            if last is None
            else f"#{last['id']} {last['status']} {last['started_at']} "
            f"(+{last['created']} ~{last['updated']} -{last['deleted']}, "
            f"{last['seconds']:.1f}s){' ' + last['error'] if last['error'] else ''}",
        ),
    ]
    for label, value in lines:
        click.echo(f"{label + ':':<10} {value}")


@datasets.command("rm")
@click.argument("name")
@_db_option
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@click.option("--with-snapshots", is_flag=True, help="remove the dataset's snapshots with it")
def datasets_rm(name: str, db_path: str | None, yes: bool, with_snapshots: bool) -> None:
    """Remove a dataset with its items and run history (the bucket is not touched).

    Refuses while a sync of the dataset is running, and while it has snapshots unless
    --with-snapshots."""
    catalog = Catalog.open(db_path or default_db_path(), create=False)
    try:
        ds = catalog.get_dataset(name)
        api.refuse_snapshots(catalog, ds, with_snapshots)
        count = catalog.count_items(ds.id)
        if not yes:
            if not sys.stdin.isatty():
                raise UsageError(
                    f"removing dataset {name!r} ({count:,} items) needs confirmation; "
                    "pass --yes when not on a terminal"
                )
            click.confirm(
                f"Remove dataset {name!r} and its {count:,} items from the catalog?", abort=True
            )
        owner = lease.new_owner()
        with transaction(catalog.db):
            holder = lease.acquire(catalog.db, lease.for_dataset(ds.id), owner)
        if holder is not None:
            raise DatasetBusy(name, holder)
        api.drop_leased(catalog, ds, owner, with_snapshots=with_snapshots)
        click.echo(f"removed dataset {name!r} ({count:,} items)")
    finally:
        catalog.close()


@cli.group()
def items() -> None:
    """Items of a dataset."""


def _where_options(f: Any) -> Any:
    """``--where`` (repeated), ``--prefix``: the item query of :mod:`syncd.query`."""
    f = click.option(
        "--where",
        "where",
        multiple=True,
        metavar="EXPR",
        help="only items matching EXPR, like size>1MB, content_type=image/*,"
        " metadata.user.site=berlin, tags~review, key=raw/**/*.jpg, mtime>=2026-01-01"
        " (repeat: all must hold)",
    )(f)
    return click.option(
        "--prefix", default="", metavar="P", help="only items whose key starts with P"
    )(f)


def _parse_query(where: tuple[str, ...], prefix: str, sort: str = "key", order: str = "asc"):  # type: ignore[no-untyped-def]
    from syncd.query import QueryError, parse_where

    try:
        return parse_where(where, prefix=prefix, sort=sort, order=order)
    except QueryError as exc:
        raise UsageError(f"--where: {exc}") from None


@items.command("ls")
@click.option("--dataset", "dataset_name", required=True, metavar="NAME")
@_db_option
@_where_options
@click.option(
    "--sort", type=click.Choice(["key", "size", "mtime"]), default="key", help="order by (then key)"
)
@click.option("--desc", is_flag=True, help="descending order")
@click.option("--limit", type=click.IntRange(min=1), metavar="N", help="at most N items")
@click.option(
    "--snapshot", "snapshot_tag", metavar="TAG", help="the items of snapshot TAG (key order)"
)
@_json_option
def items_ls(
    dataset_name: str,
    db_path: str | None,
    where: tuple[str, ...],
    prefix: str,
    sort: str,
    desc: bool,
    limit: int | None,
    snapshot_tag: str | None,
    as_json: bool,
) -> None:
    """List a dataset's items (matching --where), in key order or by --sort (streamed);
    with --snapshot, those of a snapshot (key order, --prefix and --limit only)."""
    if snapshot_tag is not None and (where or sort != "key" or desc):
        raise UsageError("--snapshot lists in key order with --prefix and --limit only")
    query = _parse_query(where, prefix, sort, "desc" if desc else "asc")
    catalog = Catalog.open_reader(db_path or default_db_path())
    try:
        ds = catalog.get_dataset(dataset_name)
        found = (
            catalog.iter_query(ds.id, query, limit=limit)
            if snapshot_tag is None
            else catalog.snapshot_items(ds.name, snapshot_tag, prefix=prefix, limit=limit)
        )
        if not as_json:
            click.echo("FILENAME\tSIZE\tETAG\tURI")
        for item in found:
            if as_json:
                _emit(item.public())
            else:
                click.echo(
                    f"{printable(item.filename)}\t{item.size}\t{printable(item.etag)}"
                    f"\t{printable(item.uri)}"
                )
    finally:
        catalog.close()


@items.command("count")
@click.option("--dataset", "dataset_name", required=True, metavar="NAME")
@_db_option
@_where_options
@_json_option
def items_count(
    dataset_name: str, db_path: str | None, where: tuple[str, ...], prefix: str, as_json: bool
) -> None:
    """Print how many items a dataset has (matching --where, under a key prefix); with
    --json, items and bytes."""
    query = _parse_query(where, prefix)
    catalog = Catalog.open_reader(db_path or default_db_path())
    try:
        ds = catalog.get_dataset(dataset_name)
        n, total = catalog.count_query(ds.id, query)
        if as_json:
            _emit({"items": n, "bytes": total})
        else:
            click.echo(n)
    finally:
        catalog.close()


@items.command("summary")
@click.option("--dataset", "dataset_name", required=True, metavar="NAME")
@_db_option
@_where_options
@click.option(
    "--by",
    type=click.Choice(["content_type", "folder"]),
    default="content_type",
    help="group by content type or by folder (below --prefix)",
)
@_json_option
def items_summary(
    dataset_name: str,
    db_path: str | None,
    where: tuple[str, ...],
    prefix: str,
    by: str,
    as_json: bool,
) -> None:
    """Items and bytes (matching --where), in total and per content type or folder, like
    aws s3 ls --summarize."""
    query = _parse_query(where, prefix)
    catalog = Catalog.open_reader(db_path or default_db_path())
    try:
        ds = catalog.get_dataset(dataset_name)
        found = catalog.summarize(ds.id, query, by=by)
        if as_json:
            _emit(found)
            return
        label = "CONTENT TYPE" if by == "content_type" else "FOLDER"
        click.echo(f"{label}\tITEMS\tBYTES")
        for g in found["groups"]:
            name = g["group"]
            shown = (
                printable(name)
                if name is not None
                else ("(none)" if by == "content_type" else "(top level)")
            )
            click.echo(f"{shown}\t{g['items']}\t{g['bytes']}")
        if found["truncated"]:
            click.echo(f"(only the first {len(found['groups']):,} groups)")
        click.echo(f"Total Objects: {found['items']}")
        click.echo(f"Total Size: {found['bytes']}")
    finally:
        catalog.close()


@items.command("get")
@click.option("--dataset", "dataset_name", required=True, metavar="NAME")
@click.argument("key")
@_db_option
@_json_option
def items_get(dataset_name: str, key: str, db_path: str | None, as_json: bool) -> None:
    """Show one item: every field, its metadata and tags (exit 1 if the dataset lacks it)."""
    catalog = Catalog.open_reader(db_path or default_db_path())
    try:
        item = api.get_item(catalog, catalog.get_dataset(dataset_name), key).public()
    finally:
        catalog.close()
    if as_json:
        _emit(item)
        return
    for name, value in item.items():
        shown = json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else value
        click.echo(f"{name}\t{printable(str(shown))}")


@items.command("url")
@click.option("--dataset", "dataset_name", required=True, metavar="NAME")
@click.argument("key")
@_db_option
@click.option(
    "--ttl",
    type=int,
    default=3600,
    show_default=True,
    metavar="SECONDS",
    help="how long the URL works (at most 7 days)",
)
@_json_option
def items_url(dataset_name: str, key: str, db_path: str | None, ttl: int, as_json: bool) -> None:
    """Print a presigned URL that reads the item's object (signed here: no server needed)."""
    catalog = Catalog.open_reader(db_path or default_db_path())
    try:
        url = asyncio.run(api.item_url(catalog, catalog.get_dataset(dataset_name), key, ttl=ttl))
    finally:
        catalog.close()
    if as_json:
        _emit({"key": key, "url": url, "ttl": ttl})
    else:
        click.echo(url)


@items.command("export")
@click.option("--dataset", "dataset_name", required=True, metavar="NAME")
@_db_option
@click.option("--snapshot", metavar="TAG", help="the items of this snapshot of the dataset")
@_where_options
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "csv", "parquet"]),
    default="jsonl",
    show_default=True,
    help="JSON Lines, CSV, or Parquet (needs pyarrow: pip install 'syncd[parquet]')",
)
@click.option("--urls", is_flag=True, help="a presigned URL per row (column url)")
@click.option(
    "--expires",
    default=None,
    metavar="DURATION",
    help="how long the URLs work, like 3600, 15m, 1h, 7d (at most 7 days; default 1h)",
)
@click.option(
    "-o",
    "--output",
    "output",
    metavar="FILE",
    help="write to FILE (complete or not at all: a temp file renamed at the end); default stdout",
)
@_json_option
def items_export(
    dataset_name: str,
    db_path: str | None,
    snapshot: str | None,
    where: tuple[str, ...],
    prefix: str,
    fmt: str,
    urls: bool,
    expires: str | None,
    output: str | None,
    as_json: bool,
) -> None:
    """Write a manifest of a dataset's items (matching --where; of --snapshot TAG) for
    training loaders: key, uri, size, etag, md5, version, content_type, mtime, metadata,
    tags and with --urls a presigned url, one row per item in key order (streamed)."""
    from syncd import export

    if expires is not None and not urls:
        raise UsageError("--expires sets how long --urls work; add --urls")
    try:
        ttl = export.parse_duration(expires or "1h")
    except ValueError as exc:
        raise UsageError(f"--expires: {exc}") from None
    if fmt == "parquet":
        export.need_pyarrow()
        if output is None and sys.stdout.isatty():
            raise UsageError("Parquet is binary: write it to a file (-o FILE) or a pipe")
    _parse_query(where, prefix)  # a bad --where fails before any file is made
    catalog = Catalog.open_reader(db_path or default_db_path())
    try:

        def run(out: Any) -> int:
            return asyncio.run(
                api.export_items(
                    catalog,
                    dataset_name,
                    out,
                    fmt=fmt,
                    snapshot=snapshot,
                    where=where,
                    prefix=prefix,
                    urls=urls,
                    ttl=ttl,
                )
            )

        if output is None:
            run(sys.stdout.buffer)
            sys.stdout.buffer.flush()
            return
        rows = _export_to_file(output, run)
    finally:
        catalog.close()
    if as_json:
        _emit({"rows": rows, "file": output, "format": fmt})
    else:
        click.echo(f"exported {rows:,} items of dataset {dataset_name!r} to {output}", err=True)


def _export_to_file(output: str, run: Any) -> int:
    """Run ``run(file)`` into a temp file beside ``output`` and rename it there when done:
    a failed or interrupted export leaves no partial manifest under the name asked for."""
    from providers.local import temp_path

    path = os.path.abspath(output)
    if os.path.isdir(path):
        raise UsageError(f"-o {output!r} is a folder; name a file")
    tmp = temp_path(path)
    try:
        handle = open(tmp, "wb")  # noqa: SIM115 - closed below, renamed only when complete
    except OSError as exc:
        raise UsageError(f"cannot write {output!r}: {exc.strerror}") from None
    try:
        with handle:
            rows = run(handle)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    return rows


# -- item edits (syncd.store.edits) ----------------------------------------------------------


def _tag_list(values: tuple[str, ...]) -> list[str]:
    """Repeated ``--add``/``--remove`` values, each possibly a comma-separated list (a tag
    holds no comma)."""
    return [t.strip() for v in values for t in v.split(",") if t.strip()]


@items.command("tag")
@click.option("--dataset", "dataset_name", required=True, metavar="NAME")
@click.argument("keys", nargs=-1, metavar="[KEY]...")
@click.option("--add", "add", multiple=True, metavar="TAG", help="tag to add (repeatable; a,b)")
@click.option(
    "--remove", "remove", multiple=True, metavar="TAG", help="tag to remove (repeatable; a,b)"
)
@click.option(
    "--prefix", default=None, metavar="P", help='every item whose key starts with P ("": all)'
)
@click.option(
    "--where",
    "where",
    multiple=True,
    metavar="EXPR",
    help="every item matching EXPR, as in items ls (repeatable: all must hold)",
)
@_db_option
@_json_option
def items_tag(
    dataset_name: str,
    keys: tuple[str, ...],
    add: tuple[str, ...],
    remove: tuple[str, ...],
    prefix: str | None,
    where: tuple[str, ...],
    db_path: str | None,
    as_json: bool,
) -> None:
    """Add and remove tags of items: the KEYs given, or every item under --prefix and/or
    matching --where.

    Tags are the user's: a re-sync or a bucket event keeps them, deleting the object deletes
    them. A KEY that is not an item is an error, and then nothing is changed.

    \b
    syncd items tag --dataset birds raw/0001.jpg raw/0002.jpg --add review
    syncd items tag --dataset birds --prefix raw/2026/ --add site:berlin --remove draft
    syncd items tag --dataset birds --where 'size>10MB' --where 'content_type=image/*' --add big
    """
    from syncd.store import edits

    if bool(keys) == (prefix is not None or bool(where)):
        raise UsageError(
            "give the items as KEY arguments or as --prefix P / --where EXPR, one of the two"
        )
    edit = edits.Edit.of(None, _tag_list(add) or None, _tag_list(remove) or None)
    selection = edits.Selection.of(list(keys) if keys else None, prefix, list(where) or None)
    catalog = Catalog.open(db_path or default_db_path(), create=False)
    try:
        result = edits.update(catalog, dataset_name, selection, edit, require_all=True)
    finally:
        catalog.close()
    if as_json:
        _emit({**result.public(), "added": list(edit.add_tags), "removed": list(edit.remove_tags)})
        return
    what = " ".join([*(f"+{t}" for t in edit.add_tags), *(f"-{t}" for t in edit.remove_tags)])
    same = result.matched - result.changed
    click.echo(
        f"{printable(what)} in dataset {printable(result.dataset)!r}: "
        f"{_count(result.changed, 'item')} changed"
        + (f", {same:,} already so" if same else "")
        + ("" if result.matched else " (no item matched)")
    )


def _count(n: int, what: str) -> str:
    return f"{n:,} {what}" + ("" if n == 1 else "s")


def _meta_patch(
    merge: tuple[str, ...], sets: tuple[str, ...], unsets: tuple[str, ...]
) -> dict[str, Any]:
    """One merge patch from ``--json-merge`` objects, ``--set path=value`` and ``--unset
    path``, in that order (a later one wins where two touch the same member)."""
    from syncd import usermeta

    patch: dict[str, Any] = {}
    for text in merge:
        value = usermeta.parse_json(text, "--json-merge")
        if not isinstance(value, dict):
            raise UsageError('--json-merge takes a JSON object, like \'{"site": "berlin"}\'')
        _compose(patch, value)
    for item in sets:
        path, eq, raw = item.partition("=")
        if not eq:
            raise UsageError(f"--set {item!r}: expected PATH=VALUE, like site=berlin or a.b=3")
        _compose(patch, _nested(path, _typed(raw), "--set"))
    for path in unsets:
        _compose(patch, _nested(path, None, "--unset"))
    return patch


def _typed(raw: str) -> Any:
    """A ``--set`` value: JSON when it is a JSON number, true/false, a quoted string, an
    array or an object; otherwise the text as it is (``site=berlin``, ``zip=01234``)."""
    try:
        return json.loads(raw, parse_constant=lambda c: raw)
    except (ValueError, RecursionError):
        return raw


def _nested(path: str, value: Any, option: str) -> dict[str, Any]:
    """``{"a": {"b": value}}`` for ``a.b`` (each part a member name, checked later)."""
    from syncd import usermeta

    parts = path.split(".")
    for part in parts:
        usermeta.check_name(part, f" in {option} {path!r}")
    out: Any = value
    for part in reversed(parts):
        out = {part: out}
    return out


def _compose(patch: dict[str, Any], later: dict[str, Any]) -> None:
    """Fold the merge patch ``later`` into ``patch`` (objects merge; anything else wins)."""
    for name, value in later.items():
        if isinstance(value, dict) and isinstance(patch.get(name), dict):
            _compose(patch[name], value)
        else:
            patch[name] = value


def _leaves(value: Any, path: str = "") -> dict[str, Any]:
    """An object as ``{dotted path: value}`` of its non-object members."""
    if isinstance(value, dict) and (value or not path):
        out: dict[str, Any] = {}
        for name, member in value.items():
            out.update(_leaves(member, f"{path}.{name}" if path else name))
        return out
    return {path: value}


def _meta_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What an edit changed in ``metadata.user``, one phrase per member path."""
    old, new = _leaves(before), _leaves(after)
    dump = functools.partial(json.dumps, ensure_ascii=False, sort_keys=True)
    lines = []

    def inside(path: str, paths: dict[str, Any]) -> bool:
        # an empty object that gained members, or lost its last one: its members say it
        return any(p.startswith(path + ".") for p in paths)

    for path in sorted(old.keys() | new.keys()):
        if (path not in new and inside(path, new)) or (path not in old and inside(path, old)):
            continue
        if path not in new:
            lines.append(f"removed {path} (was {dump(old[path])})")
        elif path not in old:
            lines.append(f"set {path} = {dump(new[path])}")
        elif dump(old[path]) != dump(new[path]):
            lines.append(f"set {path} = {dump(new[path])} (was {dump(old[path])})")
    return lines


@items.command("meta")
@click.option("--dataset", "dataset_name", required=True, metavar="NAME")
@click.argument("key")
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="PATH=VALUE",
    help="set a member (a.b=value; VALUE is JSON if it parses, else text)",
)
@click.option("--unset", "unsets", multiple=True, metavar="PATH", help="remove a member (a.b)")
@click.option(
    "--json-merge",
    "merge",
    multiple=True,
    metavar="JSON",
    help="merge a JSON object (RFC 7386 merge patch: null removes a member)",
)
@_db_option
@_json_option
def items_meta(
    dataset_name: str,
    key: str,
    sets: tuple[str, ...],
    unsets: tuple[str, ...],
    merge: tuple[str, ...],
    db_path: str | None,
    as_json: bool,
) -> None:
    """Edit the user metadata of the item KEY (its metadata.user); print what changed.

    The metadata is the user's: a re-sync or a bucket event keeps it, deleting the object
    deletes it. With no option, print the item's user metadata.

    \b
    syncd items meta --dataset birds raw/0001.jpg --set site=berlin --set camera.id=3
    syncd items meta --dataset birds raw/0001.jpg --unset camera.id
    syncd items meta --dataset birds raw/0001.jpg --json-merge '{"review": {"by": "ana"}}'
    """
    from syncd.store import edits

    if not (sets or unsets or merge):
        catalog = Catalog.open_reader(db_path or default_db_path())
        try:
            ds = catalog.get_dataset(dataset_name)
            item = catalog.get_item(ds.id, key)
        finally:
            catalog.close()
        if item is None:
            raise edits.ItemNotFound(
                f"dataset {dataset_name!r} has no item {key!r} (see `syncd items ls`)"
            )
        user = json.loads(item.user_metadata)
        if as_json:
            _emit({"dataset": ds.name, "key": key, "metadata": user})
        else:
            for path, value in _leaves(user).items():
                click.echo(
                    f"{printable(path)} = {printable(json.dumps(value, ensure_ascii=False))}"
                )
        return
    edit = edits.Edit.of(_meta_patch(merge, sets, unsets))
    catalog = Catalog.open(db_path or default_db_path(), create=False)
    try:
        before, after = edits.edit_item(catalog, dataset_name, key, edit)
    finally:
        catalog.close()
    changes = _meta_changes(json.loads(before.user_metadata), json.loads(after.user_metadata))
    if as_json:
        _emit({"dataset": dataset_name, "key": key, "changed": changes, "item": after.public()})
        return
    for line in changes or ["unchanged (it already had these values)"]:
        click.echo(f"{printable(key)}: {printable(line)}")


class ByteBar:
    """A progress bar of bytes with rate and ETA (tqdm) on a terminal (stderr); silent
    elsewhere. The total grows and shrinks as files are judged (see ``engine.Meter``)."""

    def __init__(self, enabled: bool, desc: str) -> None:
        self.bar: Any = None
        if not enabled:
            return  # no tqdm at all: its import and its monitor thread cost every run
        from tqdm import tqdm  # a twentieth of a second, for pull and push on a terminal only

        self.bar = tqdm(
            total=0,
            desc=desc,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            file=sys.stderr,
            dynamic_ncols=True,
            leave=False,
        )

    def plan(self, n: int) -> None:
        if self.bar is not None and self.bar.total is not None:
            self.bar.total = max(0, self.bar.total + n)

    def advance(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def echo(self, line: str) -> None:
        """Print ``line`` on stdout without tearing the bar (cleared, then drawn again)."""
        if self.bar is None:
            click.echo(line)
        else:
            with self.bar.external_write_mode():
                click.echo(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _transfer_options(f: Any) -> Any:
    for option in reversed(
        [
            click.option("--dataset", "dataset_name", required=True, metavar="NAME"),
            _db_option,
            click.option(
                "--dry-run",
                is_flag=True,
                help="list what would move ('+ KEY' new, '~ KEY' changed, '- KEY' removed); "
                "change nothing",
            ),
            click.option(
                "--jobs",
                type=click.IntRange(min=1),
                default=8,
                show_default=True,
                metavar="N",
                help="files moved at once",
            ),
            _json_option,
        ]
    ):
        f = option(f)
    return f


def _transfer(direction: str, db_path: str | None, dry_run: bool, as_json: bool, call: Any) -> None:
    """Run ``call(catalog, on_problem, meter, on_file)``, report problems as they come and
    the summary at the end; exit 1 if anything was refused or failed. Each file moved or
    removed is listed (``+``/``~``/``-`` KEY, as rclone does) on a dry run and with ``-v``."""
    path = db_path or default_db_path()
    catalog = Catalog.open_reader(path) if dry_run else Catalog.open(path, create=False)
    root = click.get_current_context().find_root()
    verbosity = (root.obj or {}).get("verbosity", 0)

    def on_problem(kind: str, key: str, reason: str) -> None:
        if as_json:
            _emit({kind: key, "reason": reason})
        else:
            click.echo(f"syncd: {kind} {printable(key)!s}: {reason}", err=True)

    bar = ByteBar(sys.stderr.isatty() and not as_json and not dry_run, direction)

    def on_file(action: str, key: str) -> None:
        if as_json:
            _emit({"action": action, "key": key})
        else:
            bar.echo(f"{action} {printable(key)}")

    listing = dry_run or verbosity >= 1
    try:
        result = asyncio.run(call(catalog, on_problem, bar, on_file if listing else None))
    finally:
        bar.close()
        catalog.close()
    if as_json:
        _emit({"summary": result.as_dict()})
    else:
        c = result.counts
        verb = {"pull": "downloaded", "push": "uploaded"}[direction]
        if dry_run:
            moved = f"{c['transferred']:,} would have {verb} ({c['bytes'] / 1e6:,.1f} MB)"
        else:
            rate = c["bytes"] / result.seconds / 1e6 if result.seconds else 0.0
            moved = f"{c['transferred']:,} {verb} ({c['bytes'] / 1e6:,.1f} MB, {rate:,.1f} MB/s)"
        parts = [
            moved,
            f"{c['up_to_date']:,} up to date",
            f"{c['extra']:,} extra",
            f"{c['removed']:,} removed",
            f"{c['refused']:,} refused",
            f"{c['failed']:,} failed",
        ]
        if c["filtered"]:
            parts.append(f"{c['filtered']:,} filtered")
        if c["skipped"]:
            parts.append(f"{c['skipped']:,} skipped (each named in a warning)")
        where = "into" if direction == "pull" else "from"
        of = f" snapshot {result.snapshot!r} of" if result.snapshot is not None else ""
        click.echo(
            f"{direction} of{of} dataset {result.dataset!r} {where} {result.folder}: "
            f"{', '.join(parts)} in {result.seconds:.2f}s"
        )
    if not result.ok:
        # one closing line however many files failed: what to look at and what to do
        c = result.counts
        advice = "run it again to retry the failed ones"
        if c["gone"] and result.snapshot is not None:
            # no sync or retry brings those bytes back: the bucket no longer has them
            advice = (
                f"{c['gone']:,} of the failed have no recorded bytes left in the bucket "
                f"(changed or deleted since snapshot {result.snapshot!r} without a version "
                "kept, or that version deleted); no retry fetches them"
            )
            if c["failed"] > c["gone"]:
                advice += "; run it again to retry the other failed ones"
        elif c["gone"]:
            # a retry of those can only fail again: the catalog must learn of them first
            name, folder = shlex.quote(result.dataset), shlex.quote(result.folder)
            advice = (
                f"{c['gone']:,} of the failed left the bucket since the last sync: run "
                f"`syncd sync --dataset {name}` then pull again, or in one go "
                f"`syncd pull --sync --dataset {name} {folder}`"
            )
            if c["failed"] > c["gone"]:
                advice += "; run it again to retry the other failed ones"
        elif c["refused"] and not c["failed"]:
            advice = "the refused ones stay refused until the reason given is dealt with"
        click.echo(
            f"syncd: error: {direction} of dataset {result.dataset!r}: {c['failed']:,} failed, "
            f"{c['refused']:,} refused (each reported above); the files done are kept and none "
            f"is half-written: {advice}",
            err=True,
        )
        sys.exit(1)


@cli.command()
@click.argument("folder", metavar="DIR")
@_transfer_options
@click.option(
    "--prefix",
    default="",
    metavar="P",
    help="only objects whose key starts with P (as in `syncd items ls`)",
)
@click.option(
    "--delete",
    is_flag=True,
    help="remove local files that are not in the dataset (regular files only; "
    "symbolic links are never followed or removed)",
)
@click.option(
    "--sync",
    "sync_first",
    is_flag=True,
    help="sync the dataset with its bucket first (objects gone since the last sync are "
    "then not asked for)",
)
@click.option(
    "--snapshot",
    metavar="TAG",
    help="pull that snapshot of the dataset: each object exactly as recorded (its version), "
    "checked by size and checksum; one whose recorded bytes are gone fails, with why",
)
def pull(
    folder: str,
    dataset_name: str,
    db_path: str | None,
    dry_run: bool,
    jobs: int,
    as_json: bool,
    prefix: str,
    delete: bool,
    sync_first: bool,
    snapshot: str | None,
) -> None:
    """Make folder DIR mirror a dataset: download what is missing or changed.

    Keys that would land outside DIR or on the catalog's own files, and a key beside a
    folder of its name ('a' and 'a/b'), are refused and reported; everything else is pulled
    (exit 1 if anything was refused or failed). Files are written to a temporary name and
    renamed, so an interrupted pull leaves no partial file; run it again to finish."""
    _transfer(
        "pull",
        db_path,
        dry_run,
        as_json,
        lambda catalog, on_problem, meter, on_file: api.pull(
            catalog,
            dataset_name,
            folder,
            prefix=prefix,
            delete=delete,
            dry_run=dry_run,
            jobs=jobs,
            on_problem=on_problem,
            meter=meter,
            on_file=on_file,
            sync_first=sync_first,
            snapshot=snapshot,
        ),
    )


@cli.command()
@click.argument("folder", metavar="DIR")
@_transfer_options
@click.option(
    "--delete",
    is_flag=True,
    help="delete bucket objects (and items) that have no file in DIR; refused unless the "
    "driver sets allow_external_delete",
)
@click.option("--wait", is_flag=True, help="if a sync of the dataset is running, wait for it")
def push(
    folder: str,
    dataset_name: str,
    db_path: str | None,
    dry_run: bool,
    jobs: int,
    as_json: bool,
    delete: bool,
    wait: bool,
) -> None:
    """Upload DIR's new and changed files into a dataset's bucket and update its items.

    Files go under the dataset's driver path, large ones in parts; the items are written from
    what the uploads returned. A second push with no local change uploads nothing."""
    _transfer(
        "push",
        db_path,
        dry_run,
        as_json,
        lambda catalog, on_problem, meter, on_file: api.push(
            catalog,
            dataset_name,
            folder,
            delete=delete,
            dry_run=dry_run,
            jobs=jobs,
            wait=wait,
            on_problem=on_problem,
            meter=meter,
            on_file=on_file,
        ),
    )


@cli.group("db")
def db_group() -> None:
    """The catalog's schema."""


@db_group.command("migrate")
@_db_option
@_json_option
def db_migrate(db_path: str | None, as_json: bool) -> None:
    """Create the catalog's tables or bring them up to date, then list the migrations applied.

    Every command that writes does this by itself when it opens a catalog; run it once when
    deploying workers on a new PostgreSQL database, or to upgrade a shared catalog before
    the workers of a new version start."""
    catalog = Catalog.open(db_path or default_db_path())
    try:
        rows = catalog.db.execute(
            "SELECT name, applied_at FROM _syncd_migrations ORDER BY name"
        ).fetchall()
        where = catalog.db.url
    finally:
        catalog.close()
    for name, applied_at in rows:
        if as_json:
            _emit({"migration": name, "applied_at": applied_at})
        else:
            click.echo(f"{name}\t{applied_at}")
    if not as_json:
        click.echo(f"catalog {where}: schema up to date ({len(rows)} migrations)")


@cli.group()
def runs() -> None:
    """Sync run history."""


@runs.command("ls")
@click.option("--dataset", "dataset_name", required=True, metavar="NAME")
@_db_option
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1))
@_json_option
def runs_ls(dataset_name: str, db_path: str | None, limit: int, as_json: bool) -> None:
    """List a dataset's latest runs, newest first, with every attempt's error in --json.

    A run whose process is gone (killed, crashed, interrupted) shows as ``interrupted``."""
    catalog = Catalog.open_reader(db_path or default_db_path())
    try:
        ds = catalog.get_dataset(dataset_name)
        checkpoint = Checkpoint(catalog.db)
        if not as_json:
            click.echo("ID\tSTATUS\tSTARTED\tDURATION\tATTEMPTS\tCHANGES\tERROR")
        for run in checkpoint.history(ds.id, limit=limit):
            if as_json:
                _emit(api.run_summary(run, checkpoint))
                continue
            c = run.counts
            # a split run's attempts are its ranges'
            tries = f"{run.attempts} in {run.ranges} ranges" if run.ranges else str(run.attempts)
            click.echo(
                f"{run.id}\t{run.status}\t{run.started_at}\t{run.seconds:.1f}s\t{tries}"
                f"\t+{c['created']} ~{c['updated']} -{c['deleted']}\t{run.error or ''}"
            )
    finally:
        catalog.close()


#: seconds between two looks at the catalog while ``syncd changes --follow`` waits
FOLLOW_POLL = 0.5


@cli.group("changes", invoke_without_command=True)
@click.option("--dataset", "dataset_name", metavar="NAME", help="only this dataset's changes")
@click.option(
    "--after",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    metavar="CURSOR",
    help="start after this cursor (the last one you processed)",
)
@click.option(
    "--kind",
    "kinds",
    multiple=True,
    type=click.Choice(["created", "updated", "deleted", "dataset_removed"]),
    help="only changes of this kind (repeatable)",
)
@click.option("--follow", "-f", is_flag=True, help="keep printing new changes until Ctrl-C")
@_db_option
@_json_option
@click.pass_context
def changes(
    ctx: click.Context,
    dataset_name: str | None,
    after: int,
    kinds: tuple[str, ...],
    follow: bool,
    db_path: str,
    as_json: bool,
) -> None:
    """Print the change log: every change to items, one line each, in cursor order.

    Each change has a cursor: pass the last one you processed as --after to go on from
    there. A cursor older than the log's retention is refused (exit 1): read the dataset
    again, then follow from the cursor the message names."""
    if ctx.invoked_subcommand is not None:
        return
    catalog = Catalog.open_reader(db_path)
    try:
        header = not as_json
        while True:
            if as_json:  # the JSON text straight from the log's rows, no records
                lines, after = api.read_change_lines(
                    catalog, after=after, limit=_FEED_PAGE, dataset=dataset_name, kinds=kinds
                )
            else:
                found, after = api.read_changes(
                    catalog, after=after, limit=_FEED_PAGE, dataset=dataset_name, kinds=kinds
                )
                lines = [
                    f"{change.cursor}\t{change.at}\t{change.kind}\t{change.source}\t"
                    f"{printable(change.dataset)}\t{printable(change.key or '')}"
                    for change in found
                ]
            if header:  # after the first read: a refused cursor prints only its error
                click.echo("CURSOR\tAT\tKIND\tSOURCE\tDATASET\tKEY")
                header = False
            # one write per page: a feed is read at hundreds of thousands of lines a second
            if lines:
                sys.stdout.write("\n".join(lines) + "\n")
            if len(lines) == _FEED_PAGE:
                continue
            if not follow:
                return
            sys.stdout.flush()
            time.sleep(FOLLOW_POLL)
    except KeyboardInterrupt:
        sys.exit(130)  # Ctrl-C ends a --follow, as it ends tail -f: no message
    finally:
        catalog.close()


@changes.command("prune")
@click.option(
    "--older-than",
    type=click.IntRange(min=0),
    default=7 * 24 * 3600,
    show_default=True,
    metavar="SECONDS",
    help="remove changes recorded longer ago than this",
)
@_db_option
def changes_prune(older_than: int, db_path: str) -> None:
    """Remove old changes from the log (the daemon does this by itself), and event
    tombstones no bucket notification can still contradict."""
    catalog = Catalog.open(db_path, create=False)
    try:
        removed, tombstones = api.prune_changes(catalog, older_than=older_than)
    finally:
        catalog.close()
    click.echo(f"pruned {removed:,} change(s) and {tombstones:,} event tombstone(s)")


@cli.command()
@_db_option
@_json_option
def status(db_path: str, as_json: bool) -> None:
    """One screen: the catalog in use, each dataset's items, last run and health (failing
    ones first), and the workers sharing the catalog with their heartbeat's age."""
    catalog = Catalog.open_reader(db_path)
    try:
        found = api.status(catalog)
    finally:
        catalog.close()
    if as_json:
        _emit(found)
        return
    click.echo(f"catalog: {found['catalog']}")
    click.echo("DATASET\tHEALTH\tITEMS\tLAST RUN\tSOURCE")
    for row in found["datasets"]:
        health = row["health"]
        state = health["state"]
        if state == "failing":
            state = f"failing {health['failures']}x"
        last = row["last_run"]
        when = f"{last['status']} {last['ended_at'] or last['started_at']}" if last else "-"
        error = f"  ({printable(last['error'])})" if last and last["error"] else ""
        click.echo(
            f"{printable(row['name'])}\t{state}\t{row['items']:,}\t{when}\t{row['source']}" + error
        )
    if not found["datasets"]:
        click.echo("(no datasets yet: `syncd sync SOURCE --dataset NAME` makes one)")
    click.echo(f"workers: {len(found['workers'])} live, {len(found['gone'])} gone")
    for w in found["workers"]:
        click.echo(
            f"  {w['id']}\theartbeat {w['heartbeat_age_seconds']}s ago\t"
            f"{len(w['leases'])} lease(s)\t{w['api'] or '-'}"
        )


@cli.group()
def workers() -> None:
    """The `syncd run` workers sharing a catalog."""


@workers.command("ls")
@_db_option
@click.option("--json", "as_json", is_flag=True, help="print the registry as one JSON object")
def workers_ls(db_path: str | None, as_json: bool) -> None:
    """List the live workers, the dataset leases each holds and their expiry, and workers
    that died without stopping (gone)."""
    from syncd.store import workers as registry

    db = db_path or default_db_path()
    catalog = Catalog.open_reader(db)
    try:
        found = registry.listing(catalog.db)
        where = catalog.db.url  # no password
    finally:
        catalog.close()
    if as_json:
        _emit(found)
        return
    if not found["workers"] and not found["gone"]:
        click.echo(f"no syncd run worker is registered on catalog {where}")
    for kind in ("workers", "gone"):
        for w in found[kind]:
            state = "live" if kind == "workers" else "gone"
            click.echo(
                f"{w['id']}\t{state}\tstarted {w['started_at']}\texpires {w['expires_at']}"
                f"\t{w['api'] or '-'}\t{len(w['leases'])} lease(s)"
            )
            for held in w["leases"]:
                click.echo(
                    f"  {held['name']}\t{printable(held['dataset'] or '?')}"
                    f"\tuntil {held['expires_at']}" + ("" if held["live"] else "\texpired")
                )
    for held in found["other_leases"]:
        click.echo(
            f"{held['owner']}\tno worker\t{held['name']}\t{printable(held['dataset'] or '?')}"
            f"\tuntil {held['expires_at']}"
        )


@cli.group()
def webhooks() -> None:
    """The webhooks `syncd run` delivers the change log to ([webhooks.NAME] in syncd.toml)."""


def _configured(ctx: click.Context, kind: str) -> dict[str, Any]:
    """The ``[webhooks.NAME]`` or ``[sinks.NAME]`` (``kind`` ``webhook`` or ``sink``) of the
    config file the command finds (``--config``, else ``$SYNCD_CONFIG``, else
    ``./syncd.toml``); none without a config."""
    from syncd.config import find_config, load_daemon_config

    path = find_config(ctx.meta.get(_CONFIG_KEY))
    return dict(getattr(load_daemon_config(path), kind + "s")) if path else {}


def _check_consumer(db: Any, name: str, kind: str, configured: dict[str, Any] | None) -> None:
    """``UsageError`` unless ``name`` is a consumer of ``kind`` (``webhook`` or ``sink``):
    configured, or known to the catalog as one (``configured`` None: only a consumer of
    another kind is refused; an unknown name is left to :mod:`syncd.feed.delivery` to say)."""
    from syncd.feed import delivery

    state = delivery.get(db, name)
    if state is not None and state.kind != kind:
        raise UsageError(f"{name!r} is a {state.kind}, not a {kind}: use `syncd {state.kind}s`")
    if state is None and configured is not None and name not in configured:
        raise UsageError(
            f"unknown {kind} {name!r}: declare [{kind}s.{name}] in syncd.toml (or pass "
            "--config FILE)"
        )


def _resume(kind: str, name: str, db_path: str, configured: dict[str, Any] | None) -> None:
    """``syncd webhooks|sinks resume NAME`` (``configured``: as for :func:`_check_consumer`)."""
    from syncd.feed import delivery

    catalog = Catalog.open(db_path, create=False)
    try:
        _check_consumer(catalog.db, name, kind, configured)
        state = delivery.resume(catalog.db, name)
    finally:
        catalog.close()
    click.echo(f"{kind} {name!r} resumed at cursor {state.cursor}")


def _replay(ctx: click.Context, kind: str, name: str, start: int, db_path: str) -> None:
    """``syncd webhooks|sinks replay NAME --from CURSOR``."""
    from syncd.feed import delivery

    catalog = Catalog.open(db_path, create=False)
    try:
        _check_consumer(catalog.db, name, kind, _configured(ctx, kind))
        state = delivery.replay(catalog.db, name, start, kind)
    finally:
        catalog.close()
    click.echo(f"{kind} {name!r} delivers again from cursor {state.cursor}")


def _consumer_table(
    kind: str, rows: list[dict[str, Any]], as_json: bool, described_by: tuple[str, ...]
) -> None:
    """Print ``syncd webhooks|sinks ls``: a JSON object per consumer, or a tab-separated
    table of name, the ``described_by`` columns (a webhook's URL; a sink's type and target),
    cursor, lag, state and last error, or a hint how to declare one when there is none."""
    if as_json:
        for row in rows:
            _emit(row)
        return
    if not rows:
        click.echo(f"no {kind}s: declare [{kind}s.NAME] in syncd.toml")
        return
    head = ["NAME", *(c.upper() for c in described_by), "CURSOR", "LAG", "STATE", "LAST ERROR"]
    click.echo("\t".join(head))
    for row in rows:
        state = row["state"] + ("" if row["configured"] else " (not in the config)")
        cells = [row["name"], *(row[c] or "-" for c in described_by), row["cursor"]]
        cells += [f"{row['lag']:,}", state, row["last_error"] or "-"]
        click.echo("\t".join(printable(str(c)) for c in cells))


_FROM = click.option(
    "--from",
    "start",
    required=True,
    type=click.IntRange(min=0),
    metavar="CURSOR",
    help="deliver every change after this cursor again (0: all the log holds)",
)


@webhooks.command("ls")
@_db_option
@_json_option
@click.pass_context
def webhooks_ls(ctx: click.Context, db_path: str, as_json: bool) -> None:
    """List the webhooks: URL (without credentials), delivered cursor, lag (changes not yet
    delivered), state (ok, failing, paused) and the last error."""
    from syncd.feed.delivery import listing
    from syncd.feed.webhooks import KIND, display_url

    shown = {name: display_url(h.url) for name, h in _configured(ctx, "webhook").items()}
    catalog = Catalog.open_reader(db_path)
    try:
        found = listing(catalog.db, shown, KIND)
    finally:
        catalog.close()
    _consumer_table("webhook", found, as_json, ("url",))


@webhooks.command("resume")
@click.argument("name")
@_db_option
def webhooks_resume(name: str, db_path: str) -> None:
    """Deliver again to a paused webhook (one whose endpoint refused a batch with a 4xx):
    the refused batch is sent again, with the same webhook-id. A running daemon picks it up
    within a second."""
    _resume("webhook", name, db_path, None)


@webhooks.command("replay")
@click.argument("name")
@_FROM
@_db_option
@click.pass_context
def webhooks_replay(ctx: click.Context, name: str, start: int, db_path: str) -> None:
    """Deliver the changes after CURSOR to a webhook again (or skip ahead to it), and resume
    it if it was paused. A running daemon picks it up within a second."""
    _replay(ctx, "webhook", name, start, db_path)


@cli.group()
def sinks() -> None:
    """The queues and topics `syncd run` sends the change log to ([sinks.NAME] in syncd.toml:
    SQS, SNS, Azure Queue, Pub/Sub)."""


@sinks.command("ls")
@_db_option
@_json_option
@click.pass_context
def sinks_ls(ctx: click.Context, db_path: str, as_json: bool) -> None:
    """List the sinks: type and target (queue URL, topic), delivered cursor, lag (changes not
    yet delivered), state (ok, failing, paused) and the last error."""
    from syncd.feed.sinks import sink_rows

    configured = _configured(ctx, "sink")
    catalog = Catalog.open_reader(db_path)
    try:
        rows = sink_rows(catalog.db, configured)
    finally:
        catalog.close()
    _consumer_table("sink", rows, as_json, ("type", "target"))


@sinks.command("resume")
@click.argument("name")
@_db_option
def sinks_resume(name: str, db_path: str) -> None:
    """Deliver again to a paused sink (its service refused a batch, or a batch was over the
    message size limit: lower batch first): the refused batch is cut again, with the same id
    if its range is unchanged. A running daemon picks it up within a second."""
    _resume("sink", name, db_path, {})


@sinks.command("replay")
@click.argument("name")
@_FROM
@_db_option
@click.pass_context
def sinks_replay(ctx: click.Context, name: str, start: int, db_path: str) -> None:
    """Deliver the changes after CURSOR to a sink again (or skip ahead to it), and resume it
    if it was paused. A running daemon picks it up within a second."""
    _replay(ctx, "sink", name, start, db_path)


@cli.group()
def events() -> None:
    """Bucket events (S3, GCS, Azure formats)."""


#: how many reasons for skipped records ``events apply --json`` lists (it counts them all):
#: memory stays bounded however many records a file skips
SKIPPED_SHOWN = 100


@events.command("apply")
@click.argument("file", type=click.File("rb"))
@_db_option
@_json_option
def events_apply(file: Any, db_path: str | None, as_json: bool) -> None:
    """Apply provider-format event payloads from FILE (or - for stdin), format auto-detected.

    FILE holds one JSON payload (object or array) or JSON lines. Events go to every dataset
    whose driver bucket and path contain the key; stale and duplicate events change nothing.
    JSON lines are read and applied as a stream, in batches of one transaction each. A record
    that is not an event (a bad line, a bad element of an array or of a Records list) is
    refused on its own: one line on stderr naming its position, the rest applied, exit 1 at
    the end. Input with no record to read at all (not JSON) is refused whole, exit 2.
    """
    from syncd.events.apply import ApplyResult, EventApplier
    from syncd.events.parse import EventFormatError, ObjectEvent
    from syncd.events.stream import Refused, read_payloads

    catalog = Catalog.open(db_path or default_db_path(), create=False)
    total = ApplyResult()
    skipped: list[str] = []  # the first SKIPPED_SHOWN reasons; all are counted
    seen = refused = skipped_total = 0

    def events() -> Iterator[ObjectEvent]:
        nonlocal seen, refused, skipped_total
        for parsed in read_payloads(file):
            if isinstance(parsed, Refused):
                # reported as it is met and only counted: memory stays one batch however
                # many records are refused
                refused += 1
                click.echo(f"syncd: {printable(file.name)}: {printable(str(parsed))}", err=True)
                continue
            skipped_total += len(parsed.skipped)
            skipped.extend(parsed.skipped[: SKIPPED_SHOWN - len(skipped)])
            seen += len(parsed.events)
            yield from parsed.events

    import gc

    from providers import collector

    # applying events makes no reference cycles, yet the cyclic collector would walk each
    # batch's objects over and over (a tenth of the command's CPU on 100k events): off for the
    # command, the youngest objects collected once per batch instead (memory stays a batch)
    try:
        with collector.paused():
            for result in EventApplier(catalog).apply_stream(events()):
                total.counts.update(result.counts)
                gc.collect(0)
    except EventFormatError as exc:
        raise UsageError(f"{file.name}: {exc}") from None
    finally:
        catalog.close()
    result = total.as_dict()
    if as_json:
        _emit(
            {
                "applied": result,
                "skipped": skipped,
                "skipped_total": skipped_total,
                "events": seen,
                "refused": refused,
            }
        )
    else:
        counts = ", ".join(f"{v} {k}" for k, v in result.items())
        click.echo(f"applied {seen} event(s): {counts}; skipped {skipped_total}; refused {refused}")
    if refused:
        raise SyncdError(
            f"{file.name}: {refused} record(s) refused (each named above); the other records "
            "were applied: fix or drop the refused ones and apply them again"
        )


@events.command("unrouted")
@_db_option
@_json_option
def events_unrouted(db_path: str | None, as_json: bool) -> None:
    """List buckets whose events reached no dataset (a notification without a matching
    driver), with counts and the last key seen."""
    from syncd.events.apply import unrouted

    catalog = Catalog.open_reader(db_path or default_db_path())
    try:
        rows = unrouted(catalog)
    finally:
        catalog.close()
    if not as_json:
        click.echo("PROVIDER\tBUCKET\tACCOUNT\tEVENTS\tLAST SEEN\tLAST KEY")
    for row in rows:
        if as_json:
            _emit(row)
        else:
            click.echo(
                f"{row['provider']}\t{printable(str(row['bucket']))}\t{row['account'] or '-'}"
                f"\t{row['count']}\t{row['last_seen']}\t{printable(str(row['last_key']))}"
            )


@cli.command()
@_db_option
@click.option("--host", default="127.0.0.1", show_default=True, help="address to bind")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535))
def serve(db_path: str | None, host: str, port: int) -> None:
    """Run the HTTP API only (no schedule, no queues): POST /api/v1/events for handlers and
    webhooks, the datasets/items/runs endpoints and /metrics (bearer token from
    SYNCD_API_TOKEN), GET /healthz. The catalog must exist."""
    from syncd.config import DaemonConfig, ServerConfig

    config = DaemonConfig(datasets={}, server=ServerConfig(host=host, port=port))
    _run_daemon(config, db_path or default_db_path(), create_catalog=False, register=False)


def _run_daemon(config: Any, db: str, *, create_catalog: bool, register: bool = True) -> None:
    """Run a :class:`~syncd.daemon.service.Daemon` until SIGTERM/SIGINT; one line on stderr
    once it is up."""
    import os
    import signal

    try:
        from syncd.daemon.service import Daemon
    except ImportError as exc:
        from providers.config import MissingExtra

        raise UsageError(str(MissingExtra("daemon", "syncd run / syncd serve", exc))) from None

    token = os.environ.get("SYNCD_API_TOKEN", "")
    if config.server is not None:
        from syncd.server.app import check_token

        check_token(token)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        daemon = Daemon(
            config,
            db,
            stop=stop,
            api_token=token,
            create_catalog=create_catalog,
            register=register,
            on_ready=lambda summary: click.echo(
                f"syncd: running on catalog {redact(db)}: {summary}", err=True
            ),
        )
        await daemon.run()

    asyncio.run(main())


@cli.command()
@click.option(
    "--config",
    "config_path",
    metavar="FILE",
    help="syncd.toml [default: $SYNCD_CONFIG, else ./syncd.toml]",
)
@_plain_db_option
def run(config_path: str | None, db_path: str | None) -> None:
    """Run the daemon: keep every dataset of the config current until SIGTERM/SIGINT.

    Reconciles every dataset at start and every `interval` seconds, applies bucket events from
    the [queues.NAME] it declares and from folder watches, and serves the HTTP API if [server]
    is set (bearer token from SYNCD_API_TOKEN). Several can run on one catalog as workers
    that share the datasets and queues (see `syncd workers ls`).
    """
    from syncd.config import find_config, load_daemon_config

    path = find_config(config_path)
    if path is None:
        raise UsageError(
            "syncd run needs a config file: pass --config FILE, set SYNCD_CONFIG, "
            "or put a syncd.toml in the working directory"
        )
    config = load_daemon_config(path)
    _run_daemon(
        config,
        resolve_catalog(db_path, configured=config.catalog_url or "", announce=False),
        create_catalog=True,
    )


@cli.group()
def snapshot() -> None:
    """Snapshots: a dataset's items frozen under a tag, read-only (issue 25)."""


def _snapshot_line(row: dict[str, Any]) -> str:
    message = printable(row["message"]) if row["message"] else ""
    return (
        f"{row['tag']}\t{row['created_at']}\t{row['items']}\t{row['bytes']}"
        f"\t{row['cursor']}\t{message}"
    )


_SNAPSHOT_HEADER = "TAG\tCREATED\tITEMS\tBYTES\tCURSOR\tMESSAGE"


@snapshot.command("create")
@click.option("--dataset", "dataset_name", required=True, metavar="NAME")
@click.argument("tag")
@click.option("--message", "-m", metavar="TEXT", help="what this snapshot is for")
@_db_option
@_json_option
def snapshot_create(
    dataset_name: str, tag: str, message: str | None, db_path: str | None, as_json: bool
) -> None:
    """Freeze the dataset's items as snapshot TAG (cheap: no item is copied; later writes
    keep what they replace)."""
    catalog = Catalog.open(db_path or default_db_path(), create=False)
    try:
        row = api.create_snapshot(catalog, dataset_name, tag, message=message)
    finally:
        catalog.close()
    if as_json:
        _emit(row)
    else:
        click.echo(
            f"created snapshot {tag!r} of dataset {dataset_name!r}: {row['items']:,} items,"
            f" {row['bytes']:,} bytes (cursor {row['cursor']})"
        )


@snapshot.command("ls")
@click.option("--dataset", "dataset_name", required=True, metavar="NAME")
@_db_option
@_json_option
def snapshot_ls(dataset_name: str, db_path: str | None, as_json: bool) -> None:
    """List the dataset's snapshots, oldest first."""
    catalog = Catalog.open_reader(db_path or default_db_path())
    try:
        rows = api.list_snapshots(catalog, dataset_name)
    finally:
        catalog.close()
    if not as_json:
        click.echo(_SNAPSHOT_HEADER)
    for row in rows:
        if as_json:
            _emit(row)
        else:
            click.echo(_snapshot_line(row))


@snapshot.command("show")
@click.option("--dataset", "dataset_name", required=True, metavar="NAME")
@click.argument("tag")
@_db_option
@_json_option
def snapshot_show(dataset_name: str, tag: str, db_path: str | None, as_json: bool) -> None:
    """Show one snapshot: when, its message, items, bytes and change-log cursor."""
    catalog = Catalog.open_reader(db_path or default_db_path())
    try:
        row = api.get_snapshot(catalog, dataset_name, tag)
    finally:
        catalog.close()
    if as_json:
        _emit(row)
        return
    for label in ("dataset", "tag", "message", "created_at", "cursor", "items", "bytes"):
        value = row[label]
        text = printable(value) if isinstance(value, str) else ("" if value is None else value)
        click.echo(f"{label + ':':<12} {text}")


@snapshot.command("rm")
@click.option("--dataset", "dataset_name", required=True, metavar="NAME")
@click.argument("tag")
@_db_option
@_json_option
def snapshot_rm(dataset_name: str, tag: str, db_path: str | None, as_json: bool) -> None:
    """Remove snapshot TAG (the items are not touched; what only it kept is freed)."""
    catalog = Catalog.open(db_path or default_db_path(), create=False)
    try:
        row = api.remove_snapshot(catalog, dataset_name, tag)
    finally:
        catalog.close()
    if as_json:
        _emit({**row, "removed": True})
    else:
        click.echo(f"removed snapshot {tag!r} of dataset {dataset_name!r}")


@snapshot.command("diff")
@click.option("--dataset", "dataset_name", required=True, metavar="NAME")
@click.argument("a")
@click.argument("b", required=False)
@_db_option
@_json_option
def snapshot_diff(
    dataset_name: str, a: str, b: str | None, db_path: str | None, as_json: bool
) -> None:
    """What changed from snapshot A to snapshot B (without B: to the live dataset): added,
    removed and changed keys, with counts and bytes."""
    catalog = Catalog.open_reader(db_path or default_db_path())
    try:
        found = api.diff_snapshots(catalog, dataset_name, a, b)
    finally:
        catalog.close()
    if as_json:
        _emit(found)
        return
    for kind, mark in (("added", "+"), ("removed", "-"), ("changed", "~")):
        for key in found[kind]["keys"]:
            click.echo(f"{mark} {printable(key)}")
    parts = [
        f"{kind} {found[kind]['count']:,} ({found[kind]['bytes']:,} bytes)"
        for kind in ("added", "removed", "changed")
    ]
    click.echo(f"{a} -> {b or 'live'}: " + ", ".join(parts), err=True)


#: flags of the ``syncd`` group that users also put after the command
_HOISTED = {"--debug", "-q", "--quiet", "-v", "-vv", "-vvv", "--verbose"}


def hoist_global_flags(args: list[str]) -> list[str]:
    """Move the group's logging flags (and ``--log-format X``) to the front, wherever they
    were written, so ``syncd sync ... --debug`` works like ``syncd --debug sync ...``.
    Nothing after a ``--`` is touched."""
    front: list[str] = []
    rest: list[str] = []
    items = iter(enumerate(args))
    for i, arg in items:
        if arg == "--":
            rest += args[i:]
            break
        if arg in _HOISTED:
            front.append(arg)
        elif arg == "--log-format":
            front.append(arg)
            nxt = next(items, None)
            if nxt is not None:
                front.append(nxt[1])
        elif arg.startswith("--log-format="):
            front.append(arg)
        else:
            rest.append(arg)
    return front + rest


def _quiet_exit_on_broken_pipe() -> None:
    """The reader went away (``syncd ... | head``): stop quietly, as Unix tools do. stdout is
    pointed at /dev/null so the interpreter's final flush cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    sys.exit(141)  # 128 + SIGPIPE, what a shell reports for a killed writer


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI and turn every known failure into one line + exit code.

    The line goes to stderr as text, or as one JSON object with ``--log-format json``; with
    ``--json`` the command's output is JSON, so the failure is also printed on stdout as
    ``{"error": ..., "exit_code": ...}``: a script reading stdout sees why it failed."""
    args = hoist_global_flags(sys.argv[1:] if argv is None else list(argv))
    debug = "--debug" in args
    try:
        cli.main(args=args, prog_name="syncd", standalone_mode=False)
    except BrokenPipeError:
        _quiet_exit_on_broken_pipe()
    except click.exceptions.Abort:
        _fail(args, "aborted", 130)
    except click.ClickException as exc:
        # click's own usage errors: its one "Error: ..." line, a hint, exit 2
        _fail(args, f"{redact(exc.format_message())} (see syncd --help)", exc.exit_code)
    except (sqlite3.Error, *_server_errors()) as exc:
        # a lock held past the busy timeout, a catalog that cannot grow, a database server
        # gone, part-way through
        known = catalog_error(exc, _db_of(args))
        if debug:
            click.echo(redact(traceback.format_exc()), err=True, nl=False)
        if known is exc:
            _internal_error(exc, args)
        _fail(args, redact(str(known)), 1)
    except (SyncdError, StorageError, ConfigError) as exc:
        if debug:
            click.echo(redact(traceback.format_exc()), err=True, nl=False)
        code = (
            exc.exit_code
            if isinstance(exc, SyncdError)
            else (2 if isinstance(exc, ConfigError) else 1)
        )
        _fail(args, redact(str(exc)), code)
    except KeyboardInterrupt:
        _fail(args, "interrupted; the next sync resumes where this one stopped", 130)
    except Exception as exc:
        if debug:
            click.echo(redact(traceback.format_exc()), err=True, nl=False)
        _internal_error(exc, args)


def _before_dashes(args: list[str]) -> list[str]:
    return args[: args.index("--")] if "--" in args else args


def _fail(args: list[str], message: str, code: int, *, kind: str = "error") -> None:
    """Report a failure in one line and exit with ``code`` (see :func:`main`)."""
    words = _before_dashes(args)
    if "--json" in words:
        _emit({"error": message, "exit_code": code})
    log_json = "--log-format=json" in words or any(
        a == "--log-format" and b == "json" for a, b in itertools.pairwise(words)
    )
    if log_json:
        entry = {"level": "error", "logger": "syncd", "message": message, "exit_code": code}
        click.echo(json.dumps(entry, ensure_ascii=False), err=True)
    else:
        click.echo(f"syncd: {kind}: {message}", err=True)
    sys.exit(code)


def _server_errors() -> tuple[type[Exception], ...]:
    """The PostgreSQL driver's errors, if it was loaded (a sqlite run never imports it)."""
    psycopg = sys.modules.get("psycopg")
    pool = sys.modules.get("psycopg_pool")
    found: list[type[Exception]] = []
    if psycopg is not None:
        found.append(psycopg.Error)
    if pool is not None:
        found.append(pool.PoolTimeout)
    return tuple(found)


def _db_of(args: list[str]) -> str:
    """The catalog a command line names (``--db PATH``), else the default one."""
    for i, arg in enumerate(args):
        if arg == "--":
            break
        if arg == "--db" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--db="):
            return arg.removeprefix("--db=")
    return default_db_path()


def _internal_error(exc: BaseException, args: list[str] | None = None) -> None:
    """A bug, not the user's doing: one line naming it, exit 1."""
    _fail(
        args or [],
        f"{type(exc).__name__}: {redact(str(exc))} (run with --debug for details)",
        1,
        kind="internal error",
    )


if __name__ == "__main__":
    main()
