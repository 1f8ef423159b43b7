"""Multipart uploads: sign parts in batches, list what storage holds, complete.

The parts themselves go straight to storage. Each part URL signs its exact length
(and its SHA-256 when the client gives one), so storage refuses a short, long or
corrupted part; completion is checked against what storage really holds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from botocore.exceptions import BotoCoreError, ClientError

from services.gateway import store
from services.gateway.appkeys import POOL, PRESIGNER, S3
from services.gateway.errors import Conflict, ServiceUnavailable, ValidationFailed
from services.gateway.lifecycle import Status
from services.gateway.models import (
    CompletedPart,
    SignedPart,
    SignedParts,
    SignPartsRequest,
    StoredPart,
    StoredParts,
)
from services.gateway.policy import FieldError, checksum_b64
from services.gateway.views import ACTOR, BaseView, accept_landed, head_object, json_response
from shared.s3 import is_not_found

log = logging.getLogger(__name__)

LIST_PAGE = 1000  # S3's own maximum per ListParts call
COMPANION_ONLY = "this upload was started through the Uppy routes (/s3); continue it there"


def part_length(upload: store.Upload, part_number: int) -> int:
    """The exact size of one part: `part_size`, except the last one."""
    assert upload.part_size is not None
    assert upload.part_count is not None
    if part_number < upload.part_count:
        return upload.part_size
    return upload.size - upload.part_size * (upload.part_count - 1)


def check_part_numbers(upload: store.Upload, numbers: list[int]) -> list[FieldError]:
    assert upload.part_count is not None
    errors = []
    bad = sorted({n for n in numbers if not 1 <= n <= upload.part_count})
    if bad:
        errors.append(
            FieldError("part_numbers", f"must be between 1 and {upload.part_count}; got {bad[:10]}")
        )
    if len(set(numbers)) != len(numbers):
        errors.append(FieldError("part_numbers", "must not repeat a part number"))
    return errors


def _storage_error(exc: Exception) -> ServiceUnavailable:
    log.warning("storage call failed: %s", exc)
    return ServiceUnavailable("storage could not be reached; try again")


@dataclass(frozen=True, slots=True)
class HeldPart:
    """A part as storage holds it."""

    part_number: int
    etag: str  # without quotes
    size: int
    last_modified: datetime | None


async def stored_parts(s3: Any, upload: store.Upload) -> list[HeldPart] | None:
    """Every part storage holds for the upload (all pages), or None if the upload is gone."""
    parts: list[HeldPart] = []
    marker = 0
    while True:
        try:
            page = await s3.list_parts(
                Bucket=upload.bucket,
                Key=upload.key,
                UploadId=upload.multipart_upload_id,
                MaxParts=LIST_PAGE,
                PartNumberMarker=marker,
            )
        except ClientError as exc:
            if is_not_found(exc):
                return None
            raise _storage_error(exc) from None
        except BotoCoreError as exc:
            raise _storage_error(exc) from None
        for p in page.get("Parts", []):
            parts.append(
                HeldPart(
                    part_number=int(p["PartNumber"]),
                    etag=str(p["ETag"]).strip('"'),
                    size=int(p["Size"]),
                    last_modified=p.get("LastModified"),
                )
            )
        next_marker = int(page.get("NextPartNumberMarker") or 0)
        if not page.get("IsTruncated") or next_marker <= marker:
            return parts
        marker = next_marker


class MultipartView(BaseView):
    async def load_multipart(self) -> store.Upload:
        upload = await self.load()
        if upload.multipart_upload_id is None:
            raise Conflict("this is a single-PUT upload; it has no parts")
        if upload.part_count is None:
            raise Conflict(COMPANION_ONLY)
        return upload


class PartsView(MultipartView):
    async def post(self) -> web.Response:
        upload = await self.load_multipart()
        body = await self.parse(SignPartsRequest)
        if upload.status not in (Status.PENDING, Status.UPLOADING):
            raise Conflict(
                f"the upload is {upload.status.value}; parts can no longer be sent",
                upload_status=upload.status.value,
            )
        errors = check_part_numbers(upload, body.part_numbers)
        checksums: dict[int, str] = {}
        for raw_number, value in (body.checksums or {}).items():
            field = f"checksums.{raw_number}"
            if not raw_number.isdigit() or int(raw_number) not in body.part_numbers:
                errors.append(FieldError(field, "must name a part listed in part_numbers"))
                continue
            b64 = checksum_b64(value)
            if b64 is None:
                errors.append(FieldError(field, "must be a base64 (or hex) SHA-256 digest"))
                continue
            checksums[int(raw_number)] = b64
        if errors:
            raise ValidationFailed("invalid part request", errors=errors)

        app = self.request.app
        ttl = self.settings.presign_ttl_seconds
        now = datetime.now(UTC)
        presigner = app[PRESIGNER]
        signed = []
        for number in body.part_numbers:
            request = presigner.presign_upload_part(
                upload.bucket,
                upload.key,
                upload_id=str(upload.multipart_upload_id),
                part_number=number,
                content_length=part_length(upload, number),
                checksum_sha256=checksums.get(number),
                expires_in=ttl,
                now=now,
            )
            signed.append(SignedPart(part_number=number, url=request.url, headers=request.headers))
        if upload.status is Status.PENDING:
            await store.transition(
                app[POOL],
                upload.id,
                to=Status.UPLOADING,
                event_id=f"uploading:{upload.id}",
                actor=ACTOR,
                detail={"part_count": upload.part_count, "part_size": upload.part_size},
            )
        return json_response(SignedParts(parts=signed, expires_at=now + timedelta(seconds=ttl)))

    async def get(self) -> web.Response:
        upload = await self.load_multipart()
        if upload.status not in (Status.PENDING, Status.UPLOADING):
            raise Conflict(
                f"the upload is {upload.status.value}; storage no longer holds its parts",
                upload_status=upload.status.value,
            )
        parts = await stored_parts(self.request.app[S3], upload)
        if parts is None:
            raise Conflict("storage no longer holds this multipart upload")
        return json_response(
            StoredParts(
                parts=[
                    StoredPart(part_number=p.part_number, etag=p.etag, size=p.size) for p in parts
                ]
            )
        )


async def complete_multipart(
    request: web.Request, upload: store.Upload, parts: list[CompletedPart] | None
) -> web.Response:
    """Check the client's part list against storage, complete, and record the landing."""
    app = request.app
    if upload.part_count is None:
        raise Conflict(COMPANION_ONLY)
    if not parts:
        raise ValidationFailed(
            "a multipart upload completes with its parts",
            errors=[FieldError("parts", "must list every part with its ETag")],
        )
    numbers = [p.part_number for p in parts]
    errors = check_part_numbers(upload, numbers)
    missing = sorted(set(range(1, upload.part_count + 1)) - set(numbers))
    if missing:
        errors.append(FieldError("parts", f"missing part(s) {missing[:20]}"))
    if errors:
        raise ValidationFailed("the part list is incomplete or invalid", errors=errors)

    held = await stored_parts(app[S3], upload)
    if held is None:
        raise Conflict("storage no longer holds this multipart upload")
    by_number = {p.part_number: p for p in held}
    problems = []
    for part in parts:
        stored = by_number.get(part.part_number)
        if stored is None:
            problems.append(FieldError(f"parts.{part.part_number}", "this part is not in storage"))
        elif stored.etag != part.etag.strip().strip('"'):
            problems.append(
                FieldError(f"parts.{part.part_number}", "the ETag does not match the stored part")
            )
        elif stored.size != part_length(upload, part.part_number):
            problems.append(
                FieldError(
                    f"parts.{part.part_number}",
                    f"stored size {stored.size} is not the expected "
                    f"{part_length(upload, part.part_number)}",
                )
            )
    if problems:
        raise ValidationFailed("the parts do not match what storage holds", errors=problems)
    total = sum(by_number[n].size for n in range(1, upload.part_count + 1))
    if total != upload.size:
        raise Conflict(f"the parts add up to {total} bytes, not the declared {upload.size}")

    try:
        await app[S3].complete_multipart_upload(
            Bucket=upload.bucket,
            Key=upload.key,
            UploadId=upload.multipart_upload_id,
            MultipartUpload={
                "Parts": [
                    {"PartNumber": n, "ETag": f'"{by_number[n].etag}"'}
                    for n in range(1, upload.part_count + 1)
                ]
            },
        )
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in {"InvalidPart", "InvalidPartOrder", "EntityTooSmall", "NoSuchUpload"}:
            raise Conflict(f"storage refused to complete the upload: {code}") from None
        raise _storage_error(exc) from None
    except BotoCoreError as exc:
        raise _storage_error(exc) from None

    head = await head_object(request, upload.bucket, upload.key)
    if head is None:
        raise ServiceUnavailable("the completed object is not visible yet; try again")
    return await accept_landed(request, upload, head)
