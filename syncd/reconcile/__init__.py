"""Reconciling a dataset with its source by listing.

* :mod:`.source`: the SOURCE argument (``s3://b/p``, a folder, ...) as a driver config.
* :mod:`.filters`: which objects under a driver's path belong in a dataset.
* :mod:`.march`: the pure merge of two key-sorted streams into changes.
* :mod:`.sync`: one sync run: list, filter, march, apply in batches with the checkpoint.
"""
