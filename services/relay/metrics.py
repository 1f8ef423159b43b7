"""Prometheus metrics of the relay, in a registry per app (tests build many apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class RelayMetrics:
    """What the relay received, ignored, published and replayed.

    `source` is where a notification came from: `seaweedfs` (filer webhook),
    `s3` (S3 event records) or `metalog` (catch-up from the filer metadata log).
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.received = Counter(
            "clearance_relay_notifications_received_total",
            "Notifications read (one per webhook event, S3 record or metadata-log event)",
            ["source"],
            registry=self.registry,
        )
        self.ignored = Counter(
            "clearance_relay_notifications_ignored_total",
            "Well-formed notifications that report no finished upload object, by reason",
            ["source", "reason"],
            registry=self.registry,
        )
        self.malformed = Counter(
            "clearance_relay_notifications_malformed_total",
            "Notification bodies (or metadata-log objects) that could not be read",
            ["source"],
            registry=self.registry,
        )
        self.published = Counter(
            "clearance_relay_events_published_total",
            "object.created events the broker confirmed",
            ["source"],
            registry=self.registry,
        )
        self.duplicates = Counter(
            "clearance_relay_events_duplicate_total",
            "Events not published again because this process already had them confirmed",
            ["source"],
            registry=self.registry,
        )
        self.failed = Counter(
            "clearance_relay_events_failed_total",
            "Events the broker did not confirm (the sender is answered 503)",
            ["source"],
            registry=self.registry,
        )
        self.replayed = Counter(
            "clearance_relay_catchup_replayed_total",
            "Events found by catch-up that no webhook had delivered, published",
            registry=self.registry,
        )
        self.catchup_runs = Counter(
            "clearance_relay_catchup_runs_total",
            "Catch-up runs by outcome (complete, incomplete, failed, timeout)",
            ["outcome"],
            registry=self.registry,
        )
        self.catchup_cursor = Gauge(
            "clearance_relay_catchup_cursor_seconds",
            "Unix time up to which the metadata log has been fully relayed",
            registry=self.registry,
        )
        self.newest_published = Gauge(
            "clearance_relay_newest_event_seconds",
            "Unix time of the newest object (by its storage time) whose event was published",
            registry=self.registry,
        )
