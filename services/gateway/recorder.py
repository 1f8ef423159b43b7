"""The status recorder: pipeline events → monotonic, idempotent status transitions.

It runs inside the gateway (the only database writer) as a consumer of the
`clearance.recorder` queue. Every event maps to at most one forward move; a
duplicate or late event finds the upload already at or past that status and
changes nothing, so redeliveries are harmless.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import asyncpg

from services.gateway import store
from services.gateway.lifecycle import Status
from services.gateway.metrics import GatewayMetrics
from shared.amqp.consumer import Delivery
from shared.events import (
    AnyEvent,
    ObjectCreated,
    ProcessingDone,
    ProcessingRejected,
    ProcessingStarted,
    ScanClean,
    ScanInfected,
    ScanStarted,
    UploadFailed,
)

log = logging.getLogger(__name__)

# Uploads started through the Companion routes (`/s3`) declare no size: Uppy never
# sends one. Storage enforces the profile's byte range; the landed size is recorded.
UNDECLARED_SIZE = 0


@dataclass(frozen=True, slots=True)
class Move:
    """What an event asks of an upload."""

    to: Status
    actor: str
    detail: dict[str, Any]
    updates: dict[str, Any]


def move_for(event: AnyEvent, upload: store.Upload) -> Move:
    """The transition an event stands for (pure; the state machine decides if it applies)."""
    match event:
        case ObjectCreated():
            landed = {"size": event.size, "etag": event.etag, "via": event.source}
            if upload.size == UNDECLARED_SIZE:
                return Move(Status.UPLOADED, "recorder", landed, {"size": event.size})
            if event.size != upload.size:
                reason = f"size mismatch: declared {upload.size} bytes, stored {event.size}"
                return Move(
                    Status.REJECTED,
                    "recorder",
                    {"code": "size_mismatch", "declared": upload.size, "actual": event.size},
                    {"reason": reason},
                )
            return Move(Status.UPLOADED, "recorder", landed, {})
        case ScanStarted():
            return Move(Status.SCANNING, "scanner", {}, {})
        case ScanClean():
            return Move(
                Status.PROCESSING,
                "scanner",
                {"scan": "clean", "engine": event.engine, "duration_ms": event.duration_ms},
                {},
            )
        case ScanInfected():
            return Move(
                Status.INFECTED,
                "scanner",
                {"signature": event.signature},
                {"reason": f"infected: {event.signature}"},
            )
        case ProcessingStarted():
            return Move(Status.PROCESSING, "processor", {}, {})
        case ProcessingDone():
            updates: dict[str, Any] = {
                "detected": event.metadata,
                "thumbnails": [t.model_dump(mode="json") for t in event.thumbnails],
            }
            # The recorder may see scan.started before object.created (both in flight
            # at once), skipping `uploaded`; the processor's measured size fills it then.
            if upload.size == UNDECLARED_SIZE and isinstance(event.metadata.get("size"), int):
                updates["size"] = event.metadata["size"]
            return Move(
                Status.READY,
                "processor",
                {"duration_ms": event.duration_ms, "thumbnails": len(event.thumbnails)},
                updates,
            )
        case ProcessingRejected():
            return Move(
                Status.REJECTED,
                "processor",
                {"code": event.code},
                {"reason": event.reason},
            )
        case UploadFailed():
            return Move(
                Status.FAILED,
                event.stage,
                {"stage": event.stage},
                {"reason": event.reason},
            )


class StatusRecorder:
    """The consumer handler: applies `move_for` through `store.transition`."""

    def __init__(self, pool: asyncpg.Pool[Any], metrics: GatewayMetrics) -> None:
        self._pool = pool
        self._metrics = metrics

    async def __call__(self, event: AnyEvent, delivery: Delivery) -> None:
        upload = await store.get_upload(self._pool, event.upload_id)
        extra = {"upload_id": str(event.upload_id), "correlation_id": event.correlation_id}
        if upload is None:
            # Deleted by its owner, or an object no upload declared: nothing to record.
            log.info("%s for an unknown upload ignored", event.type, extra=extra)
            return
        if isinstance(event, ObjectCreated) and (
            event.key != upload.key or event.bucket != upload.bucket
        ):
            log.warning("%s names %s, not the upload's key", event.type, event.key, extra=extra)
            return
        move = move_for(event, upload)
        result = await store.transition(
            self._pool,
            upload.id,
            to=move.to,
            event_id=event.event_id,
            actor=move.actor,
            detail=move.detail,
            updates=move.updates,
        )
        if result is not None and result.entry is not None:
            self._metrics.transitions.labels(move.to.value).inc()
            log.info("%s → %s (%s)", upload.status.value, move.to.value, event.type, extra=extra)
