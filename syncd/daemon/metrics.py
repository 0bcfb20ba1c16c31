"""The daemon's Prometheus metrics (prometheus-client), one registry per daemon.

Names follow Prometheus conventions: ``syncd_<what>_<unit>``, counters end in ``_total``,
durations are ``_seconds`` histograms. Labels are low-cardinality: dataset names, event source
names, outcomes; never an object key.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest


class Metrics:
    """Every metric the daemon exports, registered on a registry of its own (so two daemons
    in one process, as in tests, never share counters)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.objects_listed = Counter(
            "syncd_objects_listed_total", "Objects listed by reconciles", ["dataset"], registry=r
        )
        self.items_changed = Counter(
            "syncd_items_changed_total",
            "Items created, updated or deleted, by reconciles and events",
            ["dataset", "action", "via"],
            registry=r,
        )
        self.sync_runs = Counter(
            "syncd_sync_runs_total", "Reconciles by outcome", ["dataset", "outcome"], registry=r
        )
        self.sync_duration = Histogram(
            "syncd_sync_duration_seconds",
            "Duration of reconciles",
            ["dataset"],
            buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, float("inf")),
            registry=r,
        )
        self.last_success = Gauge(
            "syncd_last_successful_reconcile_timestamp_seconds",
            "Unix time of the last reconcile that completed",
            ["dataset"],
            registry=r,
        )
        self.events = Counter(
            "syncd_events_total",
            "Bucket events by source and outcome (created, updated, deleted, unchanged, stale, "
            "unrouted, incomplete, rejected)",
            ["source", "outcome"],
            registry=r,
        )
        self.event_batches = Counter(
            "syncd_event_batches_total", "Event batches committed", ["source"], registry=r
        )
        self.queue_lag = Gauge(
            "syncd_queue_lag_seconds",
            "Age of the oldest message in the last batch received from a queue",
            ["source"],
            registry=r,
        )

        self.webhook_lag = Gauge(
            "syncd_webhook_lag_changes",
            "Changes in the log after the webhook's delivered cursor (head - delivered)",
            ["webhook"],
            registry=r,
        )
        self.webhook_failures = Counter(
            "syncd_webhook_failures_total",
            "Failed webhook requests (errors, timeouts, refusals)",
            ["webhook"],
            registry=r,
        )
        self.webhook_delivered = Counter(
            "syncd_webhook_delivered_total",
            "Changes a webhook acknowledged",
            ["webhook"],
            registry=r,
        )
        self.sink_lag = Gauge(
            "syncd_sink_lag_changes",
            "Changes in the log after the sink's delivered cursor (head - delivered)",
            ["sink"],
            registry=r,
        )
        self.sink_failures = Counter(
            "syncd_sink_failures_total",
            "Failed sink sendings (errors, timeouts, refusals, batches too large)",
            ["sink"],
            registry=r,
        )
        self.sink_delivered = Counter(
            "syncd_sink_delivered_total",
            "Changes a sink's queue or topic accepted",
            ["sink"],
            registry=r,
        )

    def render(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)
