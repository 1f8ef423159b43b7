"""An object has landed: check it against the declaration, record it, start the pipeline.

Used by `complete` (the client says so) and by the reconciler (a notification never
came). Both build the same deterministic `ObjectCreated` the relay would, so
whichever path is first wins and the others are no-ops.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import asyncpg

from services.gateway import store
from services.gateway.appkeys import EventPublisher
from services.gateway.lifecycle import Status
from services.gateway.metrics import GatewayMetrics
from services.gateway.recorder import move_for
from shared.amqp.publisher import PublishFailed
from shared.amqp.topology import BrokerUnavailable
from shared.events import ObjectCreated

log = logging.getLogger(__name__)


def landed_event(
    upload: store.Upload, head: dict[str, Any], source: Literal["gateway", "reconciler"]
) -> ObjectCreated:
    """The `ObjectCreated` for an upload's object, from a HEAD response."""
    return ObjectCreated.build(
        upload_id=upload.id,
        bucket=upload.bucket,
        key=upload.key,
        size=int(head.get("ContentLength", -1)),
        etag=str(head.get("ETag", "")).strip('"') or None,
        source=source,
        correlation_id=upload.correlation_id,
    )


async def record_landing(
    pool: asyncpg.Pool[Any],
    publisher: EventPublisher | None,
    metrics: GatewayMetrics,
    upload: store.Upload,
    event: ObjectCreated,
    *,
    actor: str,
) -> store.Upload:
    """Move the upload to `uploaded` (or `rejected` on a size mismatch) and publish.

    Returns the upload as it now stands. Publishing is best effort here: the upload
    is durably `uploaded` first, and the reconciler republishes work that never
    started, so a broker outage delays the pipeline but loses nothing.
    """
    move = move_for(event, upload)
    result = await store.transition(
        pool,
        upload.id,
        to=move.to,
        event_id=event.event_id,
        actor=actor,
        detail=move.detail,
        updates=move.updates,
    )
    if result is None:
        return upload
    if result.entry is not None:
        metrics.transitions.labels(move.to.value).inc()
    if result.upload.status is Status.UPLOADED and publisher is not None:
        await publish_or_defer(publisher, event)
    return result.upload


async def publish_or_defer(publisher: EventPublisher, event: ObjectCreated) -> None:
    try:
        await publisher.publish(event)
    except (PublishFailed, BrokerUnavailable, ConnectionError, TimeoutError) as exc:
        log.warning(
            "publishing %s failed (%s); the reconciler will republish it",
            event.type,
            exc,
            extra={"upload_id": str(event.upload_id), "correlation_id": event.correlation_id},
        )
