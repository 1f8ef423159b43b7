"""What moves an upload: every transition the gateway applies, as pure functions.

A `Move` names the target status, who caused it, the deterministic id of the cause
(so applying it twice changes nothing), the timeline detail and the columns that
change with it. Pipeline events map to moves through `move_for`; the gateway's own
causes (the client started sending parts, aborted, a file too large, an upload that
never arrived) have a function each. `UploadService.apply` is the one place moves are
written; the state machine (`shared.status`) decides whether they still apply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from services.gateway.policy import UNDECLARED_SIZE
from services.gateway.storage import StoredObject
from services.gateway.store import Upload
from shared.events import (
    AnyEvent,
    ObjectCreated,
    ProcessingDone,
    ProcessingRejected,
    ScanClean,
    ScanInfected,
    ScanStarted,
    UploadFailed,
)
from shared.status import Status


@dataclass(frozen=True, slots=True)
class Move:
    """What one cause asks of an upload."""

    to: Status
    actor: str
    event_id: str
    detail: dict[str, Any] = field(default_factory=dict)
    updates: dict[str, Any] = field(default_factory=dict)


def landed_event(
    upload: Upload, stored: StoredObject, source: Literal["gateway", "reconciler"]
) -> ObjectCreated:
    """The `ObjectCreated` for an upload's object, as the relay would report it.

    The id depends only on the object (bucket, key, ETag, size), so whichever path
    reports a landing first wins and the others are duplicates.
    """
    return ObjectCreated.build(
        upload_id=upload.id,
        bucket=upload.bucket,
        key=upload.key,
        size=stored.size,
        etag=stored.etag,
        source=source,
        correlation_id=upload.correlation_id,
    )


def landing(event: ObjectCreated, upload: Upload) -> Move:
    """The landing rule: `uploaded`, unless the stored size is not the declared one."""
    # Storage's notifications come through the recorder; `complete` and the reconciler
    # report landings themselves.
    actor = event.source if event.source in ("gateway", "reconciler") else "recorder"
    landed = {"size": event.size, "etag": event.etag, "via": event.source}
    if upload.size == UNDECLARED_SIZE:
        return Move(Status.UPLOADED, actor, event.event_id, landed, {"size": event.size})
    if event.size != upload.size:
        reason = f"size mismatch: declared {upload.size} bytes, stored {event.size}"
        return Move(
            Status.REJECTED,
            actor,
            event.event_id,
            {"code": "size_mismatch", "declared": upload.size, "actual": event.size},
            {"reason": reason},
        )
    return Move(Status.UPLOADED, actor, event.event_id, landed)


def move_for(event: AnyEvent, upload: Upload) -> Move:
    """The transition a pipeline event stands for."""
    match event:
        case ObjectCreated():
            return landing(event, upload)
        case ScanStarted():
            return Move(Status.SCANNING, "scanner", event.event_id)
        case ScanClean():
            detail = {"scan": "clean", "engine": event.engine, "duration_ms": event.duration_ms}
            return Move(Status.PROCESSING, "scanner", event.event_id, detail)
        case ScanInfected():
            return Move(
                Status.INFECTED,
                "scanner",
                event.event_id,
                {"signature": event.signature},
                {"reason": f"infected: {event.signature}"},
            )
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
                event.event_id,
                {"duration_ms": event.duration_ms, "thumbnails": len(event.thumbnails)},
                updates,
            )
        case ProcessingRejected():
            return Move(
                Status.REJECTED,
                "processor",
                event.event_id,
                {"code": event.code},
                {"reason": event.reason},
            )
        case UploadFailed():
            return Move(
                Status.FAILED,
                event.stage,
                event.event_id,
                {"stage": event.stage},
                {"reason": event.reason},
            )


def started_sending(upload: Upload, via: str) -> Move:
    """The client asked for part URLs: a multipart upload is `uploading`."""
    detail: dict[str, Any] = {"via": via}
    if upload.part_count is not None:
        detail |= {"part_count": upload.part_count, "part_size": upload.part_size}
    return Move(Status.UPLOADING, "gateway", f"uploading:{upload.id}", detail)


def aborted(upload: Upload, via: str) -> Move:
    """The owner gave up before the bytes landed."""
    return Move(Status.ABORTED, "gateway", f"aborted:{upload.id}", {"by": "owner", "via": via})


def expired(upload: Upload) -> Move:
    """Nothing arrived before the upload's deadline."""
    return Move(
        Status.EXPIRED,
        "reconciler",
        f"expired:{upload.id}",
        {"deadline": upload.expires_at.isoformat()},
        {"reason": "the file never arrived before the upload expired"},
    )


def out_of_range(upload: Upload, size: int, allowed: str) -> Move:
    """A file that declared no size landed (or would land) outside the profile's range."""
    reason = f"the file is {size} bytes; the {upload.profile} profile allows {allowed}"
    return Move(
        Status.REJECTED,
        "gateway",
        f"size-out-of-range:{upload.id}",
        {"code": "size_out_of_range", "actual": size, "allowed": allowed},
        {"reason": reason},
    )
