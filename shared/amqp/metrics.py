"""Prometheus metrics of the consumer runtime.

Metrics live in a `ConsumerMetrics` object bound to one registry, so a process
that keeps its own registry (the gateway builds one per app, tests build many)
passes it in, and nothing registers twice. Workers that expose the default
registry share one instance from `default_consumer_metrics()`.
"""

from __future__ import annotations

import functools

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram


class ConsumerMetrics:
    """Counters and a latency histogram per queue, registered in `registry`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.handled = Counter(
            "clearance_amqp_handled_total",
            "Messages whose handler succeeded and that were acknowledged",
            ["queue"],
            registry=registry,
        )
        self.failed = Counter(
            "clearance_amqp_failed_total",
            "Handler runs that raised (Retry, Reject or an unexpected error)",
            ["queue"],
            registry=registry,
        )
        self.retried = Counter(
            "clearance_amqp_retried_total",
            "Messages sent to a delay queue for another attempt",
            ["queue"],
            registry=registry,
        )
        self.dead_lettered = Counter(
            "clearance_amqp_dead_lettered_total",
            "Messages moved to the dead-letter queue, by kind "
            "(malformed, rejected, exhausted, redelivery-limit)",
            ["queue", "kind"],
            registry=registry,
        )
        self.duration = Histogram(
            "clearance_amqp_handler_duration_seconds",
            "Time spent in the message handler",
            ["queue"],
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )


@functools.cache
def default_consumer_metrics() -> ConsumerMetrics:
    """The one `ConsumerMetrics` on prometheus_client's default registry (created on first use)."""
    return ConsumerMetrics(REGISTRY)
