"""The `/v1` API: thin views that translate JSON to `UploadService` calls and back."""

from __future__ import annotations

from urllib.parse import quote

import orjson
from aiohttp import web

from services.gateway import store
from services.gateway.base import BaseView, correlation_id, json_response, whole_number
from services.gateway.models import (
    Accepted,
    CompleteUpload,
    CreateUpload,
    Declared,
    MultipartPlan,
    SignedPart,
    SignedParts,
    SignPartsRequest,
    StoredPart,
    StoredParts,
    ThumbnailLink,
    TimelineItem,
    UploadPage,
    UploadRecord,
    UploadSummary,
)
from services.gateway.policy import checksum_b64
from shared.keys import verified_key
from shared.presign import PresignedRequest
from shared.problems import Conflict, FieldError, ValidationFailed
from shared.status import BEFORE_LANDING, Status

COMPANION_ONLY = "this upload was started through the Uppy routes (/s3); continue it there"
PAGE_SIZE = 20
MAX_PAGE_SIZE = 100


def created_body(upload: store.Upload, signed: PresignedRequest | None) -> bytes:
    """The `UploadCreated` JSON of a new upload: its single PUT when `signed`, else its
    multipart plan. Written with orjson directly, byte for byte what the model
    serialises (`tests/unit/test_created_body.py`) at about a third of the cost: the
    models' validation was a tenth of a create's gateway CPU."""
    return orjson.dumps(
        {
            "id": upload.id,
            "status": upload.status,
            "key": upload.key,
            "expires_at": upload.expires_at,
            "upload": None
            if signed is None
            else {"method": "PUT", "url": signed.url, "headers": signed.headers},
            "multipart": None
            if signed is not None
            else {"part_size": upload.part_size, "part_count": upload.part_count},
        },
        option=orjson.OPT_UTC_Z,
    )


class UploadsView(BaseView):
    async def post(self) -> web.Response:
        body = await self.parse(CreateUpload)
        upload = await self.uploads.create(
            self.owner,
            filename=body.filename,
            content_type=body.content_type,
            size=body.size,
            sha256=body.sha256,
            profile=body.profile,
            metadata=body.metadata,
            correlation_id=correlation_id(self.request),
        )
        multipart = upload.part_size is not None and upload.part_count is not None
        signed = None if multipart else self.uploads.sign_put(upload)
        response = web.Response(
            body=created_body(upload, signed), status=201, content_type="application/json"
        )
        response.headers["Location"] = f"/v1/uploads/{upload.id}"
        return response

    async def get(self) -> web.Response:
        query = self.request.query
        errors: list[FieldError] = []
        status: Status | None = None
        if query.get("status"):
            try:
                status = Status(query["status"])
            except ValueError:
                errors.append(
                    FieldError("status", f"must be one of {', '.join(s.value for s in Status)}")
                )
        limit = PAGE_SIZE
        if "limit" in query:
            wanted = whole_number(query["limit"])
            if wanted is None or not 1 <= wanted <= MAX_PAGE_SIZE:
                errors.append(
                    FieldError("limit", f"must be an integer between 1 and {MAX_PAGE_SIZE}")
                )
            else:
                limit = wanted
        after = None
        if query.get("cursor"):
            try:
                after = store.decode_cursor(query["cursor"])
            except ValueError:
                errors.append(FieldError("cursor", "is not a cursor this service issued"))
        if errors:
            raise ValidationFailed("invalid query parameters", errors=errors)
        items, next_cursor = await store.list_uploads(
            self.uploads.pool, self.owner, status=status, limit=limit, after=after
        )
        summaries = [
            UploadSummary(
                id=u.id,
                status=u.status,
                profile=u.profile,
                filename=u.filename,
                content_type=u.content_type,
                size=u.size,
                reason=u.reason,
                metadata=u.metadata,
                created_at=u.created_at,
                updated_at=u.updated_at,
            )
            for u in items
        ]
        return json_response(UploadPage(items=summaries, next_cursor=next_cursor))


class UploadView(BaseView):
    async def get(self) -> web.Response:
        upload = await self.load()
        entries = await store.timeline(self.uploads.pool, upload.id)
        return json_response(self.record(upload, entries))

    def record(self, upload: store.Upload, entries: list[store.TimelineEntry]) -> UploadRecord:
        thumbnails = []
        if upload.status is Status.READY:
            for thumb in upload.thumbnails:
                signed = self.uploads.presigner.presign_get(
                    upload.bucket, thumb["key"], expires_in=self.settings.download_ttl_seconds
                )
                thumbnails.append(
                    ThumbnailLink(
                        size=thumb["size"],
                        width=thumb["width"],
                        height=thumb["height"],
                        content_type=thumb.get("content_type", "image/webp"),
                        url=signed.url,
                    )
                )
        multipart = None
        if upload.part_size is not None and upload.part_count is not None:
            multipart = MultipartPlan(part_size=upload.part_size, part_count=upload.part_count)
        return UploadRecord(
            id=upload.id,
            status=upload.status,
            profile=upload.profile,
            key=upload.key,
            filename=upload.filename,
            content_type=upload.content_type,
            size=upload.size,
            declared=Declared(
                filename=upload.filename,
                content_type=upload.content_type,
                size=upload.size,
                sha256=upload.sha256,
            ),
            metadata=upload.metadata,
            detected=upload.detected,
            reason=upload.reason,
            multipart=multipart,
            thumbnails=thumbnails,
            timeline=[TimelineItem(**e.as_json()) for e in entries],
            created_at=upload.created_at,
            updated_at=upload.updated_at,
            expires_at=upload.expires_at,
        )

    async def delete(self) -> web.Response:
        """Abort an upload in progress; remove a finished one."""
        upload = await self.load()
        if upload.status in BEFORE_LANDING:
            await self.uploads.abort(upload, via="v1")
        else:
            await self.uploads.delete(upload)
        return web.Response(status=204)


class PartsView(BaseView):
    async def load_multipart(self) -> store.Upload:
        upload = await self.load()
        if upload.multipart_upload_id is None:
            raise Conflict("this is a single-PUT upload; it has no parts")
        if upload.part_count is None:
            raise Conflict(COMPANION_ONLY)
        return upload

    async def post(self) -> web.Response:
        """Sign a batch of part URLs, each for its exact length (and SHA-256 if given)."""
        upload = await self.load_multipart()
        body = await self.parse(SignPartsRequest)
        errors: list[FieldError] = []
        checksums: dict[int, str] = {}
        for raw_number, value in (body.checksums or {}).items():
            field = f"checksums.{raw_number}"
            number = whole_number(raw_number)
            if number is None or number not in body.part_numbers:
                errors.append(FieldError(field, "must name a part listed in part_numbers"))
            elif (b64 := checksum_b64(value)) is None:
                errors.append(FieldError(field, "must be a base64 (or hex) SHA-256 digest"))
            else:
                checksums[number] = b64
        if errors:
            raise ValidationFailed("invalid part request", errors=errors)
        signed = await self.uploads.sign_parts(
            upload, body.part_numbers, via="v1", checksums=checksums
        )
        parts = [
            SignedPart(part_number=n, url=s.url, headers=s.headers)
            for n, s in zip(body.part_numbers, signed, strict=True)
        ]
        expires_at = signed[0].expires_at
        return json_response(SignedParts(parts=parts, expires_at=expires_at))

    async def get(self) -> web.Response:
        """The parts storage holds, so a client can resume after a crash."""
        held = await self.uploads.stored_parts(await self.load_multipart())
        parts = [StoredPart(part_number=p.part_number, etag=p.etag, size=p.size) for p in held]
        return json_response(StoredParts(parts=parts))


class CompleteView(BaseView):
    async def post(self) -> web.Response:
        """The bytes have landed: 202 once recorded (and the pipeline started)."""
        upload = await self.load()
        body = await self.parse(CompleteUpload, empty_ok=True)
        if upload.status in BEFORE_LANDING and upload.multipart_upload_id and not upload.part_count:
            raise Conflict(COMPANION_ONLY)
        parts = [(p.part_number, p.etag) for p in body.parts] if body.parts is not None else None
        current = await self.uploads.complete(upload, parts)
        return json_response(Accepted(id=current.id, status=current.status), status=202)


class DownloadView(BaseView):
    async def get(self) -> web.Response:
        """302 to a short-lived URL of the verified version; only `ready` uploads."""
        upload = await self.load()
        if upload.status is not Status.READY:
            raise Conflict(
                f"the upload is {upload.status.value}; only ready uploads can be downloaded",
                upload_status=upload.status.value,
            )
        signed = self.uploads.presigner.presign_get(
            upload.bucket,
            verified_key(self.settings.verified_prefix, upload.key),
            expires_in=self.settings.download_ttl_seconds,
            response_content_disposition=content_disposition(upload.filename),
            response_content_type=upload.content_type,
        )
        raise web.HTTPFound(signed.url)


def content_disposition(filename: str) -> str:
    """An attachment header that is safe for any file name (RFC 6266 + RFC 5987)."""
    ascii_name = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in filename)
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"
