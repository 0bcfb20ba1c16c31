"""syncd: mirror buckets into datasets of external items, incrementally and exactly.

Layout (each concern has one home; a package uses another only through its public names):

* :mod:`syncd.api`: the library API the CLI, the daemon and the HTTP server call.
* :mod:`syncd.store`: the catalog file (datasets, items, runs, leases, migrations).
* :mod:`syncd.reconcile`: a sync by listing (source, filters, march, sync).
* :mod:`syncd.events`: bucket events (parse, apply, delivery for handlers).
* :mod:`syncd.server`: the HTTP API.
* :mod:`syncd.transfer`: bytes between a dataset's bucket and a local folder (pull, push).
* :mod:`syncd.cli`: the ``syncd`` command, a thin layer over :mod:`syncd.api`.
* :mod:`syncd.client`: the Python API, ``syncd.sync / pull / push / items / count / summary /
  get_item / item_url / changes`` (blocking calls); ``syncd.items.update`` edits items' user metadata
  and tags, ``syncd.items.get`` / ``.url`` are ``get_item`` / ``item_url``.
* :mod:`syncd.model`: plain value types every layer may use (the Python API's ``Item``).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = [
    "changes",
    "count",
    "get_item",
    "item_url",
    "items",
    "pull",
    "push",
    "snapshot",
    "summary",
    "sync",
]


def __getattr__(name: str) -> Any:
    # imported on first use: ``import syncd`` stays cheap for the CLI and the handlers
    if name in __all__:
        from syncd import client

        return getattr(client, name)
    raise AttributeError(f"module 'syncd' has no attribute {name!r}")
