"""Moving bytes between a dataset's bucket and a local folder: ``syncd pull`` and ``syncd push``.

* :mod:`syncd.transfer.paths`: which keys may be written inside a folder.
* :mod:`syncd.transfer.plan`: the pure part: aligning sorted streams, judging a file.
* :mod:`syncd.transfer.engine`: the shared loop (bounded parallel moves, batched records).
* :mod:`syncd.transfer.pull`, :mod:`syncd.transfer.push`: the two directions.
* :mod:`syncd.transfer.writer`: how a pull writes a file's bytes (for the page cache's sake).
"""
