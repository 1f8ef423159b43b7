"""HTTP views: thin classes over `BaseView`; the rules live in policy/lifecycle/store."""

from __future__ import annotations

import logging
import uuid
from typing import Any, TypeVar

import orjson
from aiohttp import web
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ValidationError

from services.gateway import store
from services.gateway.appkeys import (
    METRICS,
    OWNER,
    POOL,
    PRESIGNER,
    PUBLISHER,
    REQUEST_ID,
    S3,
    SETTINGS,
)
from services.gateway.errors import (
    BadRequest,
    Conflict,
    NotFound,
    ServiceUnavailable,
    Unauthorized,
    ValidationFailed,
)
from services.gateway.landing import landed_event, record_landing
from services.gateway.lifecycle import Status
from services.gateway.models import (
    Accepted,
    CreateUpload,
    Declared,
    MultipartPlan,
    SignedRequest,
    ThumbnailLink,
    TimelineItem,
    UploadCreated,
    UploadPage,
    UploadRecord,
    UploadSummary,
)
from services.gateway.policy import (
    FieldError,
    check_declared,
    part_layout,
    uses_multipart,
)
from shared.keys import object_key, sidecar_key, verified_key
from shared.s3 import is_not_found

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

ACTOR = "gateway"


def json_response(model: BaseModel | dict[str, Any], *, status: int = 200) -> web.Response:
    body = model.model_dump(mode="json") if isinstance(model, BaseModel) else model
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def validation_errors(exc: ValidationError) -> list[FieldError]:
    errors = []
    for err in exc.errors(include_url=False):
        field = ".".join(str(p) for p in err["loc"]) or "body"
        errors.append(FieldError(field, err["msg"]))
    return errors


class BaseView(web.View):
    """Settings, resources, the owner and body parsing for every view."""

    @property
    def settings(self) -> Any:
        return self.request.app[SETTINGS]

    @property
    def owner(self) -> str:
        """The authenticated owner (set by the auth middleware)."""
        try:
            return self.request[OWNER]
        except KeyError:
            raise Unauthorized("authentication required") from None

    async def parse(self, model: type[M], *, empty_ok: bool = False) -> M:
        raw = await self.request.read()  # bounded by the app's client_max_size → 413
        if not raw.strip():
            if empty_ok:
                return model.model_validate({})
            raise BadRequest("the request body must be a JSON object")
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise BadRequest("the request body is not valid JSON") from None
        if not isinstance(data, dict):
            raise BadRequest("the request body must be a JSON object")
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise ValidationFailed(
                "the request body has invalid fields", errors=validation_errors(exc)
            ) from None

    def upload_id(self) -> uuid.UUID:
        try:
            return uuid.UUID(self.request.match_info["id"])
        except ValueError:
            raise NotFound("no such upload") from None

    async def load(self) -> store.Upload:
        """The caller's upload; someone else's is as absent as a missing one (404)."""
        upload = await store.get_upload(self.request.app[POOL], self.upload_id(), owner=self.owner)
        if upload is None:
            raise NotFound("no such upload")
        return upload


async def head_object(request: web.Request, bucket: str, key: str) -> dict[str, Any] | None:
    """HEAD an object; None if absent, 503 if storage can't be asked."""
    try:
        result: dict[str, Any] = await request.app[S3].head_object(Bucket=bucket, Key=key)
        return result
    except ClientError as exc:
        if is_not_found(exc):
            return None
        log.warning("storage HEAD %s failed: %s", key, exc)
        raise ServiceUnavailable("storage could not be reached; try again") from None
    except BotoCoreError as exc:
        log.warning("storage HEAD %s failed: %s", key, exc)
        raise ServiceUnavailable("storage could not be reached; try again") from None


async def accept_landed(
    request: web.Request, upload: store.Upload, head: dict[str, Any]
) -> web.Response:
    """Record the object the client says has landed and answer 202 (409 if it's wrong)."""
    app = request.app
    event = landed_event(upload, head, "gateway")
    current = await record_landing(
        app[POOL], app.get(PUBLISHER), app[METRICS], upload, event, actor=ACTOR
    )
    if current.status is Status.REJECTED:
        raise Conflict(
            f"the stored object is {event.size} bytes, not the declared {upload.size}",
            upload_status=current.status.value,
        )
    return json_response(Accepted(id=upload.id, status=current.status.value), status=202)


class UploadsView(BaseView):
    async def post(self) -> web.Response:
        settings = self.settings
        metrics = self.request.app[METRICS]
        body = await self.parse(CreateUpload)
        profile_name = body.profile or settings.default_profile
        policy = settings.profiles.get(profile_name)
        if policy is None:
            metrics.uploads_created.labels("unknown", "rejected").inc()
            raise ValidationFailed(
                "unknown upload profile",
                errors=[
                    FieldError("profile", f"must be one of {', '.join(sorted(settings.profiles))}")
                ],
            )
        declared, errors = check_declared(
            policy,
            filename=body.filename,
            content_type=body.content_type,
            size=body.size,
            sha256=body.sha256,
        )
        if declared is None:
            metrics.uploads_created.labels(profile_name, "rejected").inc()
            raise ValidationFailed(
                "the declared file does not meet the upload policy", errors=errors
            )

        upload_id = uuid.uuid4()
        key = object_key(settings.upload_prefix, self.owner, upload_id)
        multipart = uses_multipart(policy, declared.size)
        part_size = part_count = None
        mpu_id = None
        if multipart:
            part_size, part_count = part_layout(declared.size)
            mpu_id = await self._create_multipart(key, declared.content_type)
        upload = store.Upload.pending(
            id=upload_id,
            owner=self.owner,
            profile=profile_name,
            filename=declared.filename,
            content_type=declared.content_type,
            size=declared.size,
            sha256=declared.sha256_b64,
            bucket=settings.bucket,
            key=key,
            ttl_seconds=settings.presign_ttl_seconds,
            correlation_id=self.request.get(REQUEST_ID) or str(upload_id),
            multipart_upload_id=mpu_id,
            part_size=part_size,
            part_count=part_count,
        )
        async with self.request.app[POOL].acquire() as conn:
            await store.insert_upload(conn, upload, actor=ACTOR)
        metrics.uploads_created.labels(profile_name, "created").inc()

        created = UploadCreated(
            id=upload_id, status=upload.status.value, key=key, expires_at=upload.expires_at
        )
        if multipart:
            assert part_size is not None
            assert part_count is not None
            created.multipart = MultipartPlan(part_size=part_size, part_count=part_count)
        else:
            signed = self.request.app[PRESIGNER].presign_put(
                settings.bucket,
                key,
                content_type=declared.content_type,
                content_length=declared.size,
                sse="AES256",
                checksum_sha256=declared.sha256_b64,
                expires_in=settings.presign_ttl_seconds,
                now=upload.created_at,
            )
            created.upload = SignedRequest(method="PUT", url=signed.url, headers=signed.headers)
        response = json_response(created, status=201)
        response.headers["Location"] = f"/v1/uploads/{upload_id}"
        return response

    async def _create_multipart(self, key: str, content_type: str) -> str:
        try:
            result = await self.request.app[S3].create_multipart_upload(
                Bucket=self.settings.bucket,
                Key=key,
                ContentType=content_type,
                ServerSideEncryption="AES256",
            )
        except (ClientError, BotoCoreError) as exc:
            log.warning("storage CreateMultipartUpload failed: %s", exc)
            raise ServiceUnavailable("storage could not be reached; try again") from None
        return str(result["UploadId"])

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
        limit = 20
        if "limit" in query:
            raw = query["limit"]
            if not raw.isdigit() or not 1 <= int(raw) <= 100:
                errors.append(FieldError("limit", "must be an integer between 1 and 100"))
            else:
                limit = int(raw)
        after = None
        if query.get("cursor"):
            try:
                after = store.decode_cursor(query["cursor"])
            except ValueError:
                errors.append(FieldError("cursor", "is not a cursor this service issued"))
        if errors:
            raise ValidationFailed("invalid query parameters", errors=errors)
        items, next_cursor = await store.list_uploads(
            self.request.app[POOL], self.owner, status=status, limit=limit, after=after
        )
        page = UploadPage(
            items=[
                UploadSummary(
                    id=u.id,
                    status=u.status.value,
                    profile=u.profile,
                    filename=u.filename,
                    content_type=u.content_type,
                    size=u.size,
                    reason=u.reason,
                    created_at=u.created_at,
                    updated_at=u.updated_at,
                )
                for u in items
            ],
            next_cursor=next_cursor,
        )
        return json_response(page)


class UploadView(BaseView):
    async def get(self) -> web.Response:
        upload = await self.load()
        entries = await store.timeline(self.request.app[POOL], upload.id)
        return json_response(self.record(upload, entries))

    def record(self, upload: store.Upload, entries: list[store.TimelineEntry]) -> UploadRecord:
        thumbnails = []
        if upload.status is Status.READY:
            presigner = self.request.app[PRESIGNER]
            for thumb in upload.thumbnails:
                signed = presigner.presign_get(
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
            status=upload.status.value,
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
        upload = await self.load()
        app = self.request.app
        if upload.status in (Status.PENDING, Status.UPLOADING):
            await self._remove_storage(upload)
            await store.transition(
                app[POOL],
                upload.id,
                to=Status.ABORTED,
                event_id=f"aborted:{upload.id}",
                actor=ACTOR,
                detail={"by": "owner"},
            )
        elif upload.status.final:
            await self._remove_storage(upload)
            await store.delete_upload(app[POOL], upload.id)
        else:
            raise Conflict(
                f"the upload is {upload.status.value}; delete it once it reaches a final state",
                upload_status=upload.status.value,
            )
        return web.Response(status=204)

    async def _remove_storage(self, upload: store.Upload) -> None:
        s3 = self.request.app[S3]
        try:
            if upload.multipart_upload_id and upload.status in (Status.PENDING, Status.UPLOADING):
                try:
                    await s3.abort_multipart_upload(
                        Bucket=upload.bucket, Key=upload.key, UploadId=upload.multipart_upload_id
                    )
                except ClientError as exc:
                    if not is_not_found(exc):
                        raise
            # Infected objects were moved to quarantine; that copy is kept for review.
            keys = [
                upload.key,
                verified_key(self.settings.verified_prefix, upload.key),
                sidecar_key(upload.key),
                *(t["key"] for t in upload.thumbnails),
            ]
            await s3.delete_objects(
                Bucket=upload.bucket,
                Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True},
            )
        except (ClientError, BotoCoreError) as exc:
            log.warning("storage cleanup of %s failed: %s", upload.id, exc)
            raise ServiceUnavailable("storage could not be reached; try again") from None


class DownloadView(BaseView):
    async def get(self) -> web.Response:
        upload = await self.load()
        if upload.status is not Status.READY:
            raise Conflict(
                f"the upload is {upload.status.value}; only ready uploads can be downloaded",
                upload_status=upload.status.value,
            )
        signed = self.request.app[PRESIGNER].presign_get(
            upload.bucket,
            verified_key(self.settings.verified_prefix, upload.key),
            expires_in=self.settings.download_ttl_seconds,
            response_content_disposition=content_disposition(upload.filename),
            response_content_type=upload.content_type,
        )
        raise web.HTTPFound(signed.url)


def content_disposition(filename: str) -> str:
    """An attachment header that is safe for any file name (RFC 6266 + RFC 5987)."""
    from urllib.parse import quote

    ascii_name = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in filename)
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"
