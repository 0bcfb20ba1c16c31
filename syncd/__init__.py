"""syncd: mirror buckets into datasets of external items, incrementally and exactly.

Layout (each concern has one home; a package uses another only through its public names):

* :mod:`syncd.api`: the library API the CLI, the daemon and the HTTP server call.
* :mod:`syncd.store`: the catalog file (datasets, items, runs, leases, migrations).
* :mod:`syncd.reconcile`: a sync by listing (source, filters, march, sync).
* :mod:`syncd.events`: bucket events (parse, apply, delivery for handlers).
* :mod:`syncd.server`: the HTTP API.
* :mod:`syncd.cli`: the ``syncd`` command, a thin layer over :mod:`syncd.api`.
"""

__version__ = "0.1.0"
