"""Errors the CLI turns into one line and an exit code (never a traceback unless --debug)."""

from __future__ import annotations


class SyncdError(Exception):
    """Base for errors meant for the user. ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class UsageError(SyncdError):
    """Bad input: malformed SOURCE or config, unknown dataset, conflicting options."""

    exit_code = 2


class NotFound(SyncdError):
    """What was asked for (an item of a dataset) is not in the catalog."""

    exit_code = 1


class CatalogUnavailable(SyncdError):
    """The catalog file cannot be used now: another process holds its write lock past the
    busy timeout, or it cannot grow (disk full, file-size limit, I/O error). What it held
    before stays: every write is one transaction, rolled back on failure."""

    exit_code = 1


class SyncFailed(SyncdError):
    """The sync started but could not finish; nothing was deleted."""

    exit_code = 1


class ListingOrderError(SyncFailed):
    """A listing came back out of key order, so a merge with the catalog would be wrong."""
