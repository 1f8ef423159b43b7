"""Public events: what an application hears about its uploads (DESIGN §5). No I/O here.

Every committed status change is announced once as an `UploadEvent` of type
`upload.<status>`, on the `clearance.notifications` exchange (routing key = type) and
to each webhook endpoint that subscribed to the type. The event says where the upload
stands after the change (status, reason, the application's metadata, what the
processor detected, the thumbnail keys) and carries the timeline entry that the
change appended. Its `event_id` is derived from the upload id and the entry's `seq`,
so every copy of one change (a re-publish, a webhook retry, a replay) has the same
id: receivers drop duplicates by it.

These models are the source of `/asyncapi.json` (`services.gateway.asyncapi`).
"""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from services.gateway.models import AppMetadata, TimelineItem
from services.gateway.store import TimelineEntry, Upload
from shared.detected import Detected
from shared.events import deterministic_id
from shared.status import Status

EVENT_TYPES: tuple[str, ...] = tuple(f"upload.{s.value}" for s in Status)


def event_type(status: Status) -> str:
    """The type (and routing key) announcing a change to `status`."""
    return f"upload.{status.value}"


def event_id(upload_id: uuid.UUID, seq: int) -> str:
    """The id of the event announcing timeline entry `seq` of an upload."""
    return deterministic_id("upload-event", upload_id, seq)


class ThumbnailKey(BaseModel):
    """A thumbnail in storage; `GET /v1/uploads/{id}` signs short-lived URLs for it."""

    size: int = Field(description="The longer side it was made for, in pixels")
    width: int
    height: int
    content_type: str
    key: str


class UploadEvent(BaseModel):
    """One committed status change of an upload, and the upload as it now stands."""

    # Receivers should ignore fields they do not know: new ones may be added.
    model_config = ConfigDict(frozen=True)

    event_id: str = Field(
        description="Stable per change: every copy (re-publish, retry, replay) has this id"
    )
    type: str = Field(
        description="`upload.<status>`; also the routing key and the webhook's event type",
        json_schema_extra={"enum": list(EVENT_TYPES)},
    )
    occurred_at: datetime = Field(description="When the change was committed")
    upload_id: uuid.UUID
    owner: str = Field(description="The `sub` of the token the upload was created with")
    status: Status
    reason: str | None = Field(description="Why, for rejected, infected, failed and expired")
    profile: str
    filename: str
    content_type: str
    size: int = Field(description="Declared size; the stored size once it landed")
    metadata: AppMetadata
    detected: Detected | None = Field(
        description="What the processor verified (type, size, sha256, dimensions, …); when ready"
    )
    thumbnails: list[ThumbnailKey] = Field(description="Set when ready, for images")
    timeline_entry: TimelineItem = Field(description="The entry this change appended")
    correlation_id: str = Field(description="The request id of the upload's creation")


def upload_event(upload: Upload, entry: TimelineEntry) -> UploadEvent:
    """The event announcing `entry`, the change that left the upload as `upload`."""
    return UploadEvent(
        event_id=event_id(upload.id, entry.seq),
        type=event_type(entry.status),
        occurred_at=entry.at,
        upload_id=upload.id,
        owner=upload.owner,
        status=upload.status,
        reason=upload.reason,
        profile=upload.profile,
        filename=upload.filename,
        content_type=upload.content_type,
        size=upload.size,
        metadata=upload.metadata,
        detected=Detected.model_validate(upload.detected) if upload.detected else None,
        thumbnails=[
            ThumbnailKey(
                size=t["size"],
                width=t["width"],
                height=t["height"],
                content_type=t.get("content_type", "image/webp"),
                key=t["key"],
            )
            for t in upload.thumbnails
        ],
        timeline_entry=TimelineItem(**entry.as_json()),
        correlation_id=upload.correlation_id,
    )
