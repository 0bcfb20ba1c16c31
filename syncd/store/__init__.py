"""The catalog store: the sqlite file and everything kept in it.

* :mod:`.db`: opening the file, named transactional migrations, ``transaction()``.
* :mod:`.catalog`: integrations (references only), drivers, datasets and their items.
* :mod:`.checkpoint`: runs, their attempts, resume points and parked deletes.
* :mod:`.lease`: named leases (one sync per dataset, one daemon per catalog).
"""
