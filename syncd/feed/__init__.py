"""The change feed pushed out: the change log (:mod:`syncd.store.changes`) delivered to
consumers in cursor order, at least once (:mod:`.delivery`), over HTTP (:mod:`.webhooks`)."""
