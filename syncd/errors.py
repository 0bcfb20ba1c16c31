"""Errors the CLI turns into one line and an exit code (never a traceback unless --debug)."""

from __future__ import annotations


class SyncdError(Exception):
    """Base for errors meant for the user. ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class UsageError(SyncdError):
    """Bad input: malformed SOURCE or config, unknown dataset, conflicting options."""

    exit_code = 2


class SyncFailed(SyncdError):
    """The sync started but could not finish; nothing was deleted."""

    exit_code = 1


class ListingOrderError(SyncFailed):
    """A listing came back out of key order, so a merge with the catalog would be wrong."""
