"""Convergence of event application under any order and any duplicates (hypothesis)."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from providers.config import DriverConfig
from syncd.events.apply import apply_events
from syncd.events.parse import EventKind, ObjectEvent, gcs_marker, pad_sequencer
from syncd.reconcile.filters import Filters
from syncd.store.catalog import Catalog
from tests.conftest import CatalogMaker, catalog_state

KEYS = ["raw/a.jpg", "raw/b c.jpg", "raw/ü+%.png", "other/x.jpg"]


def catalog_with(catalogs: CatalogMaker, provider: str, bucket: str) -> Catalog:
    """A fresh catalog (on the store under test) with dataset ``ds`` on ``bucket``/raw."""
    catalog = catalogs()
    scheme = {"s3": "s3", "gcs": "gs", "azure": "az"}[provider]
    catalog.create_dataset(
        "ds",
        f"{scheme}://{bucket}/raw/",
        DriverConfig(type=provider, bucket=bucket, path="raw"),
        Filters(),
    )
    return catalog


# a history is, per key, a list of operations: an int n = "put n bytes", None = "delete"
histories = st.dictionaries(
    st.sampled_from(KEYS),
    st.lists(st.one_of(st.none(), st.integers(1, 50)), min_size=1, max_size=6),
    min_size=1,
)


def sequenced_events(
    history: dict[str, list[int | None]], provider: str = "s3"
) -> tuple[list[ObjectEvent], dict]:
    """S3 and Azure: every operation on a key carries a larger sequencer."""
    events, final, seq = [], {}, 0x1000
    for key, ops in history.items():
        for op in ops:
            seq += random.randint(1, 99)
            marker = pad_sequencer(f"{seq:012X}")
            if op is None:
                events.append(ObjectEvent(EventKind.DELETED, provider, "bkt", key, marker=marker))
                final.pop(key, None)
            else:
                etag = f"etag-{seq}"
                events.append(
                    ObjectEvent(
                        EventKind.CREATED, provider, "bkt", key, marker=marker, size=op, etag=etag
                    )
                )
                final[key] = (op, etag)
    return events, final


def gcs_events(history: dict[str, list[int | None]]) -> tuple[list[ObjectEvent], dict]:
    """GCS semantics: each upload is a new generation; overwriting also emits a delete of the
    previous generation (overwrittenByGeneration), and a delete carries the live generation."""
    events, final, gen = [], {}, 1_000_000
    for key, ops in history.items():
        live: int | None = None
        for op in ops:
            gen += random.randint(1, 99)
            if op is None:
                if live is not None:
                    events.append(
                        ObjectEvent(
                            EventKind.DELETED, "gcs", "gbkt", key, marker=gcs_marker(live, 1)
                        )
                    )
                live = None
                final.pop(key, None)
            else:
                if live is not None:
                    events.append(
                        ObjectEvent(
                            EventKind.DELETED, "gcs", "gbkt", key, marker=gcs_marker(live, 1)
                        )
                    )
                live = gen
                etag = f"e{gen}"
                events.append(
                    ObjectEvent(
                        EventKind.CREATED,
                        "gcs",
                        "gbkt",
                        key,
                        marker=gcs_marker(gen, 1),
                        size=op,
                        etag=etag,
                    )
                )
                final[key] = (op, etag)
    return events, final


def deliver(catalog: Catalog, events: list[ObjectEvent], rnd: random.Random) -> None:
    shuffled = events + rnd.sample(events, k=min(len(events), rnd.randint(0, len(events))))
    rnd.shuffle(shuffled)
    while shuffled:  # random batch sizes, as queues deliver
        n = rnd.randint(1, 10)
        apply_events(catalog, shuffled[:n])
        shuffled = shuffled[n:]


@settings(max_examples=150, deadline=None)
@given(history=histories, seed=st.integers(0, 2**32 - 1), provider=st.sampled_from(["s3", "azure"]))
def test_sequencers_any_order_any_duplicates_converge(catalogs, history, seed, provider) -> None:
    random.seed(seed)
    events, final = sequenced_events(history, provider)
    catalog = catalog_with(catalogs, provider, "bkt")
    deliver(catalog, events, random.Random(seed))
    assert catalog_state(catalog) == {k: v for k, v in final.items() if k.startswith("raw/")}


@settings(max_examples=150, deadline=None)
@given(history=histories, seed=st.integers(0, 2**32 - 1))
def test_gcs_overwrite_deletes_never_remove_the_live_item(catalogs, history, seed) -> None:
    random.seed(seed)
    events, final = gcs_events(history)
    catalog = catalog_with(catalogs, "gcs", "gbkt")
    deliver(catalog, events, random.Random(seed))
    assert catalog_state(catalog) == {k: v for k, v in final.items() if k.startswith("raw/")}


def test_stale_duplicate_and_unrouted_are_counted(catalogs: CatalogMaker) -> None:
    catalog = catalog_with(catalogs, "s3", "bkt")
    put = ObjectEvent(
        EventKind.CREATED, "s3", "bkt", "raw/a.jpg", marker=pad_sequencer("0A"), size=3, etag="e1"
    )
    delete = ObjectEvent(EventKind.DELETED, "s3", "bkt", "raw/a.jpg", marker=pad_sequencer("0B"))
    outside = ObjectEvent(
        EventKind.CREATED,
        "s3",
        "bkt",
        "elsewhere/a.jpg",
        marker=pad_sequencer("0C"),
        size=1,
        etag="x",
    )
    assert apply_events(catalog, [delete, put, put, outside]).as_dict() == {
        "created": 0,
        "updated": 0,
        "deleted": 0,
        "unchanged": 1,
        "stale": 2,
        "unrouted": 1,
        "incomplete": 0,
    }
    assert catalog_state(catalog) == {}
