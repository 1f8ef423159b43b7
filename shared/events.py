"""Event messages on the `clearance.events` topic exchange (DESIGN §5).

Every message is a pydantic model serialised as JSON. `event_id` is deterministic
(derived from what happened, not from when it was sent), so a duplicate delivery
or a replayed notification carries the same id and is dropped by consumers.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


def deterministic_id(*parts: object) -> str:
    """A stable id for an event made of the parts that identify what happened."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()
    return digest[:32]


def scan_started_id(upload_id: uuid.UUID, key: str) -> str:
    return deterministic_id("scan.started", upload_id, key)


def scan_clean_id(upload_id: uuid.UUID, key: str) -> str:
    return deterministic_id("scan.clean", upload_id, key)


def scan_infected_id(upload_id: uuid.UUID, key: str) -> str:
    return deterministic_id("scan.infected", upload_id, key)


def processing_id(kind: str, upload_id: uuid.UUID, key: str) -> str:
    """Ids for processing.done / processing.rejected."""
    return deterministic_id(kind, upload_id, key)


def failed_id(upload_id: uuid.UUID, stage: str) -> str:
    return deterministic_id("upload.failed", upload_id, stage)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Event(BaseModel):
    """Fields common to every event."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    routing_key: ClassVar[str]

    event_id: str = Field(min_length=1, max_length=128)
    upload_id: uuid.UUID
    correlation_id: str = Field(min_length=1, max_length=128)
    occurred_at: datetime = Field(default_factory=utcnow)
    producer: str = Field(default="clearance", max_length=64)

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()


class ObjectCreated(Event):
    """An object landed in storage (from a notification, `complete`, or the reconciler)."""

    routing_key: ClassVar[str] = "object.created"
    type: Literal["object.created"] = "object.created"
    bucket: str
    key: str
    size: int = Field(ge=0)
    etag: str | None = None
    source: Literal["seaweedfs", "s3", "gateway", "reconciler"] = "gateway"

    @classmethod
    def build(
        cls,
        *,
        upload_id: uuid.UUID,
        bucket: str,
        key: str,
        size: int,
        etag: str | None,
        source: Literal["seaweedfs", "s3", "gateway", "reconciler"],
        correlation_id: str | None = None,
    ) -> ObjectCreated:
        # The same object (bucket, key, etag, size) is the same event, whichever
        # path reported it.
        return cls(
            event_id=deterministic_id("object.created", bucket, key, etag or "", size),
            upload_id=upload_id,
            correlation_id=correlation_id or str(upload_id),
            bucket=bucket,
            key=key,
            size=size,
            etag=etag,
            source=source,
        )


class ScanClean(Event):
    routing_key: ClassVar[str] = "scan.clean"
    type: Literal["scan.clean"] = "scan.clean"
    bucket: str
    key: str
    size: int = Field(ge=0)
    etag: str | None = None  # the scanned version; the processor reads only that one
    engine: str = "clamd"
    duration_ms: float = Field(ge=0)


class ScanInfected(Event):
    routing_key: ClassVar[str] = "scan.infected"
    type: Literal["scan.infected"] = "scan.infected"
    bucket: str
    key: str
    signature: str
    quarantine_key: str


class ScanStarted(Event):
    """The scanner picked the object up (drives `uploaded → scanning`)."""

    routing_key: ClassVar[str] = "scan.started"
    type: Literal["scan.started"] = "scan.started"
    bucket: str
    key: str


class Thumbnail(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    size: int
    key: str
    width: int
    height: int
    content_type: str = "image/webp"
    bytes: int


class ProcessingDone(Event):
    routing_key: ClassVar[str] = "processing.done"
    type: Literal["processing.done"] = "processing.done"
    metadata: dict[str, Any]
    thumbnails: list[Thumbnail] = Field(default_factory=list)
    duration_ms: float = Field(ge=0)


class ProcessingRejected(Event):
    routing_key: ClassVar[str] = "processing.rejected"
    type: Literal["processing.rejected"] = "processing.rejected"
    reason: str = Field(max_length=1000)
    code: str = Field(max_length=64)


class UploadFailed(Event):
    """Retries exhausted, the scanner could not fully scan, or another terminal failure."""

    routing_key: ClassVar[str] = "upload.failed"
    type: Literal["upload.failed"] = "upload.failed"
    reason: str = Field(max_length=1000)
    stage: str = Field(max_length=64)


AnyEvent = Annotated[
    ObjectCreated
    | ScanStarted
    | ScanClean
    | ScanInfected
    | ProcessingDone
    | ProcessingRejected
    | UploadFailed,
    Field(discriminator="type"),
]

EVENT_ADAPTER: TypeAdapter[AnyEvent] = TypeAdapter(AnyEvent)


def parse_event(body: bytes) -> AnyEvent:
    """Parse a message body; raises `pydantic.ValidationError` for anything malformed."""
    return EVENT_ADAPTER.validate_json(body)
