"""Request and response models at the HTTP edge (also the source of /openapi.json)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, WithJsonSchema

from services.gateway import metadata
from shared.detected import Detected
from shared.settings import S3_MAX_PARTS
from shared.status import Status

# Checked by `metadata.check_metadata` (precise errors per key); described here.
AppMetadataIn = Annotated[dict[str, Any], WithJsonSchema(metadata.SCHEMA)]
AppMetadata = Annotated[dict[str, str], WithJsonSchema(metadata.SCHEMA)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateUpload(_Strict):
    """Declared file: nothing here is trusted after the bytes land."""

    filename: StrictStr = Field(description="The user's file name (stored, never used as a key)")
    content_type: StrictStr = Field(
        description="Declared MIME type; must be allowed by the profile"
    )
    size: StrictInt = Field(description="Exact size in bytes; storage refuses any other length")
    sha256: StrictStr | None = Field(
        default=None, description="Optional SHA-256 (hex or base64); storage verifies it"
    )
    profile: StrictStr | None = Field(default=None, description="Upload profile, e.g. image")
    metadata: AppMetadataIn | None = Field(
        default=None,
        description="The application's own small string map, stored and sent back as given",
    )


class SignPartsRequest(_Strict):
    part_numbers: list[StrictInt] = Field(
        min_length=1,
        max_length=1000,
        json_schema_extra={"items": {"type": "integer", "minimum": 1, "maximum": S3_MAX_PARTS}},
    )
    checksums: dict[str, StrictStr] | None = None


class CompletedPart(_Strict):
    # Documented bounds; the upload service checks them (and answers with the reason).
    part_number: StrictInt = Field(json_schema_extra={"minimum": 1, "maximum": S3_MAX_PARTS})
    etag: StrictStr = Field(json_schema_extra={"minLength": 1})


class CompleteUpload(_Strict):
    parts: list[CompletedPart] | None = None


class SignedRequest(BaseModel):
    method: Literal["PUT", "GET"]
    url: str
    headers: dict[str, str]


class MultipartPlan(BaseModel):
    part_size: int
    part_count: int


class UploadCreated(BaseModel):
    id: uuid.UUID
    status: Status
    key: str
    expires_at: datetime
    upload: SignedRequest | None = None
    multipart: MultipartPlan | None = None


class SignedPart(BaseModel):
    part_number: int
    url: str
    headers: dict[str, str]


class SignedParts(BaseModel):
    parts: list[SignedPart]
    expires_at: datetime


class StoredPart(BaseModel):
    part_number: int
    etag: str
    size: int


class StoredParts(BaseModel):
    parts: list[StoredPart]


class Accepted(BaseModel):
    id: uuid.UUID
    status: Status


class TimelineItem(BaseModel):
    seq: int
    status: Status
    at: datetime
    actor: str
    detail: dict[str, Any]


class StatusEvent(TimelineItem):
    """The `data` of one SSE `status` event: a timeline entry of upload `id`."""

    id: uuid.UUID


class ThumbnailLink(BaseModel):
    size: int
    width: int
    height: int
    content_type: str
    url: str


class Declared(BaseModel):
    filename: str
    content_type: str
    size: int
    sha256: str | None


class UploadRecord(BaseModel):
    id: uuid.UUID
    status: Status
    profile: str
    key: str
    filename: str
    content_type: str
    size: int
    declared: Declared
    metadata: AppMetadata
    detected: Detected | None
    reason: str | None
    multipart: MultipartPlan | None
    thumbnails: list[ThumbnailLink]
    timeline: list[TimelineItem]
    created_at: datetime
    updated_at: datetime
    expires_at: datetime


class UploadSummary(BaseModel):
    id: uuid.UUID
    status: Status
    profile: str
    filename: str
    content_type: str
    size: int
    reason: str | None
    metadata: AppMetadata
    created_at: datetime
    updated_at: datetime


class UploadPage(BaseModel):
    items: list[UploadSummary]
    next_cursor: str | None


class FieldProblem(BaseModel):
    field: str
    message: str


class ProblemDetails(BaseModel):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[FieldProblem] | None = None
