"""Events that lack a size or an ETag are completed with a HEAD of the object (issue 9);
a HEAD that finds nothing means the event is stale: nothing is created."""

from __future__ import annotations

from pathlib import Path

import boto3

from providers.config import DriverConfig
from syncd import api
from syncd.config import DatasetSpec
from syncd.daemon.catalog_thread import CatalogThread
from syncd.daemon.intake import Intake
from syncd.daemon.metrics import Metrics
from syncd.events.parse import EventKind, ObjectEvent
from syncd.reconcile.filters import Filters
from tests.conftest import unique_bucket
from tests.emulators import Emulator


async def test_events_without_size_are_completed_by_a_head(moto: Emulator, tmp_path: Path) -> None:
    bucket = unique_bucket()
    s3 = boto3.client("s3", endpoint_url=moto.url)
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="raw/here.jpg", Body=b"12345")
    etag = s3.head_object(Bucket=bucket, Key="raw/here.jpg")["ETag"].strip('"')
    spec = DatasetSpec(
        "ds", DriverConfig(type="s3", bucket=bucket, path="raw", endpoint=moto.url), Filters()
    )
    catalog = CatalogThread(str(tmp_path / "c.db"))
    await catalog.start()
    await catalog.call(lambda c: api.ensure_dataset(c, "ds", spec=spec))
    metrics = Metrics()
    intake = Intake(catalog, {"ds": spec}, metrics)
    try:
        bare = [
            ObjectEvent(EventKind.CREATED, "s3", bucket, "raw/here.jpg"),
            ObjectEvent(EventKind.CREATED, "s3", bucket, "raw/gone-again.jpg"),
        ]
        result = await intake.deliver(bare, source="test")
        assert result.counts["created"] == 1 and result.counts["stale"] == 1
        items = await catalog.call(
            lambda c: [i.public() for i in c.iter_items(c.get_dataset("ds").id)]
        )
        assert [(i["key"], i["size"], i["etag"]) for i in items] == [("raw/here.jpg", 5, etag)]
        text = metrics.render().decode()
        assert 'syncd_events_total{outcome="stale",source="test"} 1.0' in text
        assert 'syncd_events_total{outcome="created",source="test"} 1.0' in text
    finally:
        await intake.close()
        await catalog.close()
