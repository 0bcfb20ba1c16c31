"""Bucket events: the fast path between two reconciles.

* :mod:`.parse`: one event model and parsers for every provider format.
* :mod:`.apply`: applying events to datasets so they converge whatever the delivery order.
* :mod:`.delivery`: how serverless handlers hand events to syncd (HTTP or a catalog file).
"""
