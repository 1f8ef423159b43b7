"""The shapes `@uppy/aws-s3` sends and reads on the Companion routes (`/s3/...`).

They differ from `/v1` on purpose (Uppy's own field names, `{error}` envelopes), and
are lenient about extra fields: Uppy versions differ in what else they send. They
are also the source of the routes' OpenAPI description.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from shared.settings import S3_MAX_PARTS


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class CreateMultipart(_Lenient):
    """`POST /s3/multipart`."""

    filename: StrictStr = Field(description="The user's file name (stored, never used as a key)")
    type: StrictStr = Field(description="Content type; must be allowed by the profile")
    metadata: dict[str, Any] | None = Field(
        default=None,
        description=(
            "Uppy's file meta. `profile` picks an upload profile (chosen by type if absent);"
            " Uppy's own `name`, `type` and `relativePath` are ignored; the rest is stored as"
            " the upload's application metadata (string values, keys of a-z 0-9 _ . -, at"
            " most 16 keys and 2 KiB)"
        ),
    )


class UppyPart(_Lenient):
    # Documented bounds; the upload service checks them (and answers with the reason).
    PartNumber: StrictInt = Field(json_schema_extra={"minimum": 1, "maximum": S3_MAX_PARTS})
    ETag: StrictStr = Field(description="Quoted or not", json_schema_extra={"minLength": 1})


class CompleteMultipart(_Lenient):
    """`POST /s3/multipart/{uploadId}/complete`."""

    parts: list[UppyPart] = Field(min_length=1, max_length=S3_MAX_PARTS)


class FormUpload(BaseModel):
    """POST `fields` and then the file to `url`; the object is `url + fields.key`."""

    method: Literal["POST"] = "POST"
    url: str
    fields: dict[str, str]
    expires: int


class MultipartStarted(BaseModel):
    key: str
    uploadId: str
    bucket: str


class SignedPartUrl(BaseModel):
    url: str
    expires: int


class SignedPartUrls(BaseModel):
    presignedUrls: dict[str, str]


class HeldPart(BaseModel):
    PartNumber: int
    ETag: str
    Size: int
    LastModified: str | None


class Completed(BaseModel):
    location: str
    key: str
    bucket: str


class CompanionError(BaseModel):
    """Companion answers `{error}`; older Uppy versions display `message`."""

    error: str
    message: str
