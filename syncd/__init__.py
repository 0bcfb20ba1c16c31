"""syncd: mirror buckets into datasets of external items, incrementally and exactly.

The library API is :func:`syncd.sync.sync_dataset` over a :class:`syncd.catalog.Catalog`;
the ``syncd`` command (:mod:`syncd.cli`) is a thin layer over it.
"""

__version__ = "0.1.0"
