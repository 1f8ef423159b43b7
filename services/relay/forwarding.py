"""Publishing `ObjectCreated` events with confirms, once per process where possible."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol

from services.relay.metrics import RelayMetrics
from shared.amqp.publisher import PublishFailed
from shared.events import Event, ObjectCreated

# Event ids remembered after their confirm, so the webhook and catch-up paths
# (and SeaweedFS's `update` after a tagging change) do not publish one object twice.
REMEMBERED_IDS = 100_000


class EventPublisher(Protocol):
    """What the forwarder needs from `shared.amqp.publisher.Publisher`."""

    async def publish(self, event: Event, *, timeout: float) -> None: ...  # noqa: ASYNC109


class Forwarder:
    """Publishes events and returns only when the broker confirmed each one.

    Consumers drop duplicate event ids anyway; remembering confirmed ids here
    only saves the broker and the consumers the repeat work. Two concurrent
    notifications for the same object may both publish: that is harmless.
    """

    def __init__(
        self,
        publisher: EventPublisher,
        metrics: RelayMetrics,
        *,
        remember: int = REMEMBERED_IDS,
    ) -> None:
        self._publisher = publisher
        self._metrics = metrics
        self._remember = remember
        self._confirmed: OrderedDict[str, None] = OrderedDict()
        self.newest_published: float | None = None

    def already_confirmed(self, event_id: str) -> bool:
        """Whether this process already had `event_id` confirmed by the broker."""
        return event_id in self._confirmed

    async def forward(
        self,
        events: Sequence[ObjectCreated],
        *,
        source: str,
        timeout: float,  # noqa: ASYNC109 - per event, bounds the reconnect wait and the confirm
    ) -> int:
        """Publish every event not yet confirmed in this process; return how many were sent.

        Raises `PublishFailed` at the first event the broker does not confirm;
        the ones before it stay confirmed (and remembered).
        """
        sent = 0
        for event in events:
            if event.event_id in self._confirmed:
                self._confirmed.move_to_end(event.event_id)
                self._metrics.duplicates.labels(source).inc()
                continue
            try:
                await self._publisher.publish(event, timeout=timeout)
            except PublishFailed:
                self._metrics.failed.labels(source).inc()
                raise
            self._confirmed[event.event_id] = None
            if len(self._confirmed) > self._remember:
                self._confirmed.popitem(last=False)
            self._metrics.published.labels(source).inc()
            landed = event.occurred_at.timestamp()
            if self.newest_published is None or landed > self.newest_published:
                self.newest_published = landed
                self._metrics.newest_published.set(landed)
            sent += 1
        return sent
