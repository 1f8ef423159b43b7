"""Uppy Companion-compatible `/s3/...` routes, so stock `@uppy/aws-s3` works unchanged.

The shapes are the ones `@uppy/aws-s3` really sends and reads (6.x with
`companionEndpoint`; 3.x-5.x with `companionUrl` and `companionHeaders`):

- `GET /s3/params?filename=&type=&metadata[k]=v` → a presigned **POST policy**
  `{method: "POST", url, fields, expires}`; Uppy posts `fields` + the file to `url`
  and names the object `url + fields.key`.
- `POST /s3/multipart` `{filename, type, metadata}` → `{key, uploadId, bucket}`, then
  `GET /s3/multipart/{uploadId}/{partNumber}?key=` → `{url, expires}` per part (older
  clients: `GET .../batch?key=&partNumbers=1,2` → `{presignedUrls}`),
  `GET /s3/multipart/{uploadId}?key=` → the stored parts,
  `POST .../complete?key=` `{parts: [{PartNumber, ETag}]}` → `{location, key, bucket}`,
  `DELETE /s3/multipart/{uploadId}?key=` → `{}`.

They create the same upload records as `/v1` (same profiles, server-generated keys,
owner scoping, pipeline). Two differences, both because Uppy never sends a size:

- the record's size is `UNDECLARED_SIZE` until the object lands; the landed size is
  recorded then. Storage enforces the profile's byte range for a POST upload
  (`content-length-range`); for multipart the gateway checks the stored parts before
  completing and the completed object after, and rejects an oversized one.
- part URLs sign no length (Uppy chooses its own part size).

Errors are `{error, message}` with a precise status (Uppy 3-5 show `message`; Companion
answers `{error}`); a missing or bad token is answered by the gateway's auth
middleware before these handlers run (401 problem+json; Uppy only looks at the status).
"""

from __future__ import annotations

import functools
import logging
import math
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, NoReturn

import orjson
from aiohttp import web
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

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
from services.gateway.errors import Problem
from services.gateway.landing import landed_event, record_landing
from services.gateway.lifecycle import Status
from services.gateway.multipart import stored_parts
from services.gateway.policy import check_declared, normalise_content_type
from services.gateway.recorder import UNDECLARED_SIZE
from services.gateway.views import head_object
from shared.keys import object_key, upload_id_from_key
from shared.post_policy import PostPolicySigner
from shared.s3 import credentials, is_not_found
from shared.settings import S3_MAX_PART, S3_MAX_PARTS, S3_MIN_PART, Settings, UploadPolicy

log = logging.getLogger(__name__)

ACTOR = "gateway"
POST_SIGNER = web.AppKey("post_signer", PostPolicySigner)
LIST_PAGE = 1000  # S3's own maximum per ListParts call
MAX_BATCH = 1000  # part URLs per batch request
# Statuses in which the object has landed and is (or was) on its way through the pipeline.
LANDED = frozenset({Status.UPLOADED, Status.SCANNING, Status.PROCESSING, Status.READY})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class CompanionError(Exception):
    """An error answered as `{error}` with `status`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    """`{error, message}`: Companion's `error`, plus the `message` older Uppy displays."""
    return web.Response(
        body=orjson.dumps({"error": message, "message": message}),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def companion_errors(handler: Handler) -> Handler:
    """Answer every failure of a Companion route as `{error}` (Uppy reads no problem+json)."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except CompanionError as exc:
            return error_response(exc.status, exc.message)
        except Problem as problem:  # from the shared helpers (storage HEAD, part listing)
            return error_response(problem.status, problem.detail, problem.headers)
        except web.HTTPException as exc:  # e.g. 413 from reading an oversized body
            if exc.status < 400:
                raise
            return error_response(exc.status, exc.text or exc.reason)

    return wrapped


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


# -- rules (pure) -------------------------------------------------------------


def choose_profile(
    settings: Settings, content_type: str, requested: str | None, *, multipart: bool
) -> tuple[str, UploadPolicy]:
    """The profile an Uppy upload falls under.

    `metadata[profile]` names it; otherwise the default profile if it takes the type,
    else the tightest profile (smallest maximum) that does. Multipart uploads need a
    profile that allows multipart.
    """
    profiles = settings.profiles
    if requested:
        policy = profiles.get(requested)
        if policy is None:
            raise CompanionError(
                422,
                f"unknown upload profile {requested!r}; use one of {', '.join(sorted(profiles))}",
            )
        if multipart and policy.multipart_threshold is None:
            raise CompanionError(
                422, f"the {requested} profile takes single-request uploads only, not multipart"
            )
        return requested, policy
    ctype = normalise_content_type(content_type)
    names = [
        name
        for name, policy in profiles.items()
        if ctype in policy.content_types and (not multipart or policy.multipart_threshold)
    ]
    if not names:
        how = "a multipart upload" if multipart else "an upload"
        raise CompanionError(422, f"no upload profile takes {ctype or 'an empty type'} as {how}")
    if settings.default_profile in names:
        return settings.default_profile, profiles[settings.default_profile]
    name = min(names, key=lambda n: (profiles[n].max_size, n))
    return name, profiles[name]


def single_request_max(policy: UploadPolicy) -> int:
    """The largest single POST a profile allows (S3 takes at most 5 GiB in one request)."""
    return min(policy.max_size, S3_MAX_PART)


def max_part_number(policy: UploadPolicy) -> int:
    """No file within the profile needs a higher part number (parts are ≥ 5 MiB)."""
    return max(1, min(S3_MAX_PARTS, math.ceil(policy.max_size / S3_MIN_PART)))


def parse_part_number(raw: str, policy: UploadPolicy) -> int:
    highest = max_part_number(policy)
    if not raw.isdigit() or not 1 <= int(raw) <= highest:
        raise CompanionError(400, f"part numbers are integers from 1 to {highest}; got {raw!r}")
    return int(raw)


def etag_value(etag: str) -> str:
    """An ETag without the quotes S3 puts around it (clients send either form)."""
    return etag.strip().strip('"')


# -- request models -------------------------------------------------------------


class _Lenient(BaseModel):
    # Uppy versions differ in what else they send; unknown fields are ignored.
    model_config = ConfigDict(extra="ignore")


class CreateMultipart(_Lenient):
    filename: StrictStr
    type: StrictStr
    metadata: dict[str, Any] | None = None


class CompletedPart(_Lenient):
    PartNumber: StrictInt
    ETag: StrictStr


class CompleteMultipart(_Lenient):
    parts: list[CompletedPart] = Field(min_length=1, max_length=S3_MAX_PARTS)


# -- request plumbing -------------------------------------------------------------


def _owner(request: web.Request) -> str:
    try:
        return request[OWNER]  # the auth middleware sets it on every /s3 path
    except KeyError:
        raise CompanionError(401, "authentication required") from None


def _required(request: web.Request, name: str) -> str:
    value = request.query.get(name, "")
    if not value:
        raise CompanionError(400, f"the {name!r} query parameter is required")
    return value


async def _parse(request: web.Request, model: type[BaseModel]) -> Any:
    raw = await request.read()  # bounded by the app's client_max_size → 413
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise CompanionError(400, "the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise CompanionError(400, "the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        raise CompanionError(400, f"{field}: {first['msg']}") from None


def _storage_error(exc: Exception) -> CompanionError:
    log.warning("storage call failed: %s", exc)
    return CompanionError(503, "storage could not be reached; try again")


async def _create_record(
    request: web.Request,
    *,
    owner: str,
    filename: str,
    content_type: str,
    profile_name: str,
    policy: UploadPolicy,
    multipart: bool,
) -> store.Upload:
    """Validate the declaration, open the multipart upload if needed, record the upload."""
    app = request.app
    settings = app[SETTINGS]
    metrics = app[METRICS]
    # Uppy never declares a size; the size rule is enforced when the bytes land.
    declared, errors = check_declared(
        policy, filename=filename, content_type=content_type, size=policy.min_size, sha256=None
    )
    if declared is None:
        metrics.uploads_created.labels(profile_name, "rejected").inc()
        raise CompanionError(422, "; ".join(f"{e.field}: {e.message}" for e in errors))
    upload_id = uuid.uuid4()
    key = object_key(settings.upload_prefix, owner, upload_id)
    mpu_id = None
    if multipart:
        try:
            created = await app[S3].create_multipart_upload(
                Bucket=settings.bucket,
                Key=key,
                ContentType=declared.content_type,
                ServerSideEncryption="AES256",
            )
        except (ClientError, BotoCoreError) as exc:
            raise _storage_error(exc) from None
        mpu_id = str(created["UploadId"])
    upload = store.Upload.pending(
        id=upload_id,
        owner=owner,
        profile=profile_name,
        filename=declared.filename,
        content_type=declared.content_type,
        size=UNDECLARED_SIZE,
        bucket=settings.bucket,
        key=key,
        ttl_seconds=settings.presign_ttl_seconds,
        correlation_id=request.get(REQUEST_ID) or str(upload_id),
        multipart_upload_id=mpu_id,
    )
    async with app[POOL].acquire() as conn:
        await store.insert_upload(conn, upload, actor=ACTOR)
    metrics.uploads_created.labels(profile_name, "created").inc()
    return upload


async def _load_multipart(request: web.Request) -> store.Upload:
    """The caller's multipart upload named by `key` and `{uploadId}`; anything else is 404."""
    owner = _owner(request)
    key = _required(request, "key")
    settings = request.app[SETTINGS]
    upload_id = upload_id_from_key(settings.upload_prefix, key)
    upload = None
    if upload_id is not None:
        upload = await store.get_upload(request.app[POOL], upload_id, owner=owner)
    if (
        upload is None
        or upload.key != key
        or upload.multipart_upload_id is None
        or upload.multipart_upload_id != request.match_info["uploadId"]
    ):
        raise CompanionError(404, "no such multipart upload")
    return upload


def _policy_of(request: web.Request, upload: store.Upload) -> UploadPolicy:
    policy = request.app[SETTINGS].profiles.get(upload.profile)
    if policy is None:  # the profile was removed from the configuration since
        raise CompanionError(409, f"the upload's profile {upload.profile!r} no longer exists")
    return policy


def _require_open(upload: store.Upload) -> None:
    if upload.status not in (Status.PENDING, Status.UPLOADING):
        raise CompanionError(
            409, f"the upload is {upload.status.value}; its parts can no longer be changed"
        )


async def _mark_uploading(request: web.Request, upload: store.Upload) -> None:
    if upload.status is Status.PENDING:
        await store.transition(
            request.app[POOL],
            upload.id,
            to=Status.UPLOADING,
            event_id=f"uploading:{upload.id}",
            actor=ACTOR,
            detail={"via": "companion"},
        )


def _location(request: web.Request, upload: store.Upload) -> str:
    return request.app[POST_SIGNER].bucket_url(upload.bucket) + upload.key


# -- handlers -----------------------------------------------------------------------


@companion_errors
async def params(request: web.Request) -> web.Response:
    """`GET /s3/params`: record an upload and sign a POST policy for it."""
    owner = _owner(request)
    filename = _required(request, "filename")
    content_type = _required(request, "type")
    settings = request.app[SETTINGS]
    name, policy = choose_profile(
        settings, content_type, request.query.get("metadata[profile]"), multipart=False
    )
    upload = await _create_record(
        request,
        owner=owner,
        filename=filename,
        content_type=content_type,
        profile_name=name,
        policy=policy,
        multipart=False,
    )
    ttl = settings.presign_ttl_seconds
    signed = request.app[POST_SIGNER].presign_upload(
        upload.bucket,
        upload.key,
        content_type=upload.content_type,
        min_size=policy.min_size,
        max_size=single_request_max(policy),
        expires_in=ttl,
        now=upload.created_at,
    )
    return _json({"method": "POST", "url": signed.url, "fields": signed.fields, "expires": ttl})


@companion_errors
async def create_multipart(request: web.Request) -> web.Response:
    """`POST /s3/multipart`: record an upload and open its multipart upload in storage."""
    owner = _owner(request)
    body: CreateMultipart = await _parse(request, CreateMultipart)
    requested = (body.metadata or {}).get("profile")
    name, policy = choose_profile(
        request.app[SETTINGS],
        body.type,
        requested if isinstance(requested, str) else None,
        multipart=True,
    )
    upload = await _create_record(
        request,
        owner=owner,
        filename=body.filename,
        content_type=body.type,
        profile_name=name,
        policy=policy,
        multipart=True,
    )
    return _json(
        {"key": upload.key, "uploadId": upload.multipart_upload_id, "bucket": upload.bucket}
    )


@companion_errors
async def sign_part(request: web.Request) -> web.Response:
    """`GET /s3/multipart/{uploadId}/{partNumber}`: one presigned UploadPart URL."""
    upload = await _load_multipart(request)
    number = parse_part_number(request.match_info["partNumber"], _policy_of(request, upload))
    _require_open(upload)
    ttl = request.app[SETTINGS].presign_ttl_seconds
    signed = request.app[PRESIGNER].presign_upload_part(
        upload.bucket,
        upload.key,
        upload_id=str(upload.multipart_upload_id),
        part_number=number,
        expires_in=ttl,
    )
    await _mark_uploading(request, upload)
    return _json({"url": signed.url, "expires": ttl})


@companion_errors
async def sign_batch(request: web.Request) -> web.Response:
    """`GET /s3/multipart/{uploadId}/batch?partNumbers=1,2`: part URLs for older clients."""
    upload = await _load_multipart(request)
    policy = _policy_of(request, upload)
    raw = [p.strip() for p in _required(request, "partNumbers").split(",")]
    if len(raw) > MAX_BATCH:
        raise CompanionError(400, f"at most {MAX_BATCH} part numbers per request")
    numbers = [parse_part_number(p, policy) for p in raw]
    _require_open(upload)
    ttl = request.app[SETTINGS].presign_ttl_seconds
    presigner = request.app[PRESIGNER]
    now = datetime.now(UTC)
    urls = {
        str(n): presigner.presign_upload_part(
            upload.bucket,
            upload.key,
            upload_id=str(upload.multipart_upload_id),
            part_number=n,
            expires_in=ttl,
            now=now,
        ).url
        for n in numbers
    }
    await _mark_uploading(request, upload)
    return _json({"presignedUrls": urls})


@companion_errors
async def list_parts(request: web.Request) -> web.Response:
    """`GET /s3/multipart/{uploadId}`: the parts storage holds (Uppy resumes from these)."""
    upload = await _load_multipart(request)
    _require_open(upload)
    held = await stored_parts(request.app[S3], upload)
    if held is None:
        raise CompanionError(404, "storage no longer holds this multipart upload")
    return _json(
        [
            {
                "PartNumber": p.part_number,
                "ETag": f'"{p.etag}"',
                "Size": p.size,
                "LastModified": p.last_modified.isoformat() if p.last_modified else None,
            }
            for p in held
        ]
    )


@companion_errors
async def complete(request: web.Request) -> web.Response:
    """`POST /s3/multipart/{uploadId}/complete`: check the parts, complete, start the pipeline."""
    upload = await _load_multipart(request)
    body: CompleteMultipart = await _parse(request, CompleteMultipart)
    app = request.app
    policy = _policy_of(request, upload)
    answer = {"location": _location(request, upload), "key": upload.key, "bucket": upload.bucket}
    if upload.status in LANDED:
        return _json(answer)  # a retried complete after it already worked
    _require_open(upload)

    wanted: dict[int, str] = {}
    for part in body.parts:
        number = parse_part_number(str(part.PartNumber), policy)
        if number in wanted:
            raise CompanionError(400, f"part {number} is listed twice")
        wanted[number] = etag_value(part.ETag)
    held = await stored_parts(app[S3], upload)
    if held is None:
        raise CompanionError(404, "storage no longer holds this multipart upload")
    by_number = {p.part_number: p for p in held}
    for number, etag in sorted(wanted.items()):
        stored = by_number.get(number)
        if stored is None:
            raise CompanionError(400, f"part {number} is not in storage")
        if stored.etag != etag:
            raise CompanionError(400, f"the ETag of part {number} does not match the stored part")
    total = sum(by_number[n].size for n in wanted)
    if total > policy.max_size:
        await _reject_too_large(request, upload, total, policy)

    try:
        await app[S3].complete_multipart_upload(
            Bucket=upload.bucket,
            Key=upload.key,
            UploadId=upload.multipart_upload_id,
            MultipartUpload={
                "Parts": [{"PartNumber": n, "ETag": f'"{wanted[n]}"'} for n in sorted(wanted)]
            },
        )
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in {"InvalidPart", "InvalidPartOrder", "EntityTooSmall"}:
            raise CompanionError(400, f"storage refused to complete the upload: {code}") from None
        if code == "NoSuchUpload":
            raise CompanionError(404, "storage no longer holds this multipart upload") from None
        raise _storage_error(exc) from None
    except BotoCoreError as exc:
        raise _storage_error(exc) from None

    head = await head_object(request, upload.bucket, upload.key)
    if head is None:
        raise CompanionError(503, "the completed object is not visible yet; try again")
    size = int(head.get("ContentLength", -1))
    if not policy.min_size <= size <= policy.max_size:  # the real object, checked again
        await _reject_too_large(request, upload, size, policy, stored=True)
    event = landed_event(upload, head, "gateway")
    await record_landing(app[POOL], app.get(PUBLISHER), app[METRICS], upload, event, actor=ACTOR)
    return _json(answer)


async def _reject_too_large(
    request: web.Request,
    upload: store.Upload,
    size: int,
    policy: UploadPolicy,
    *,
    stored: bool = False,
) -> NoReturn:
    """Drop the bytes, record `rejected`, and answer 413."""
    s3 = request.app[S3]
    try:
        if stored:
            await s3.delete_object(Bucket=upload.bucket, Key=upload.key)
        else:
            await s3.abort_multipart_upload(
                Bucket=upload.bucket, Key=upload.key, UploadId=upload.multipart_upload_id
            )
    except ClientError as exc:
        if not is_not_found(exc):
            raise _storage_error(exc) from None
    except BotoCoreError as exc:
        raise _storage_error(exc) from None
    limits = f"{policy.min_size}..{policy.max_size} bytes"
    await store.transition(
        request.app[POOL],
        upload.id,
        to=Status.REJECTED,
        event_id=f"size-out-of-range:{upload.id}",
        actor=ACTOR,
        detail={"code": "size_out_of_range", "actual": size, "allowed": limits},
        updates={
            "reason": f"the file is {size} bytes; the {upload.profile} profile allows {limits}"
        },
    )
    request.app[METRICS].transitions.labels(Status.REJECTED.value).inc()
    raise CompanionError(
        413, f"the file is {size} bytes; the {upload.profile} profile allows {limits}"
    )


@companion_errors
async def abort(request: web.Request) -> web.Response:
    """`DELETE /s3/multipart/{uploadId}`: abort in storage and record `aborted`."""
    upload = await _load_multipart(request)
    if upload.status in (Status.ABORTED, Status.EXPIRED):
        return _json({})
    _require_open(upload)
    try:
        await request.app[S3].abort_multipart_upload(
            Bucket=upload.bucket, Key=upload.key, UploadId=upload.multipart_upload_id
        )
    except ClientError as exc:
        if not is_not_found(exc):
            raise _storage_error(exc) from None
    except BotoCoreError as exc:
        raise _storage_error(exc) from None
    result = await store.transition(
        request.app[POOL],
        upload.id,
        to=Status.ABORTED,
        event_id=f"aborted:{upload.id}",
        actor=ACTOR,
        detail={"by": "owner", "via": "companion"},
    )
    if result is not None and result.entry is not None:
        request.app[METRICS].transitions.labels(Status.ABORTED.value).inc()
    return _json({})


# -- wiring and description ---------------------------------------------------------


def add_companion_routes(app: web.Application) -> None:
    """Register the `/s3/params` and `/s3/multipart...` routes."""
    settings = app[SETTINGS]
    app[POST_SIGNER] = PostPolicySigner(
        endpoint_url=settings.browser_s3_endpoint,
        region=settings.s3_region,
        credentials=credentials(settings),
        addressing_style=settings.s3_addressing_style,
    )
    r = app.router
    r.add_get("/s3/params", params)
    r.add_post("/s3/multipart", create_multipart)
    r.add_get("/s3/multipart/{uploadId}/batch", sign_batch)
    r.add_get(r"/s3/multipart/{uploadId}/{partNumber:\d+}", sign_part)
    r.add_post("/s3/multipart/{uploadId}/complete", complete)
    r.add_get("/s3/multipart/{uploadId}", list_parts)
    r.add_delete("/s3/multipart/{uploadId}", abort)


def _error_responses(*statuses: int) -> dict[str, Any]:
    schema = {
        "type": "object",
        "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
        "required": ["error"],
    }
    return {
        str(s): {"description": "Error", "content": {"application/json": {"schema": schema}}}
        for s in statuses
    }


def _ok(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "200": {"description": description, "content": {"application/json": {"schema": schema}}}
    }


def _query(name: str, description: str, required: bool = True) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": {"type": "string"},
    }


_STR = {"type": "string"}
_UPLOAD_ID = {
    "name": "uploadId",
    "in": "path",
    "required": True,
    "description": "The storage's multipart upload id, as returned by POST /s3/multipart",
    "schema": _STR,
}
_KEY = _query("key", "The object key returned when the upload was created")
_TAG = ["Uppy Companion compatibility"]

# (method, path) → OpenAPI operation for the routes added here.
OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("GET", "/s3/params"): {
        "tags": _TAG,
        "summary": "Record an upload and sign a POST policy (single-request upload)",
        "parameters": [
            _query("filename", "The user's file name (stored, never used as a key)"),
            _query("type", "Content type; must be allowed by the profile"),
            _query("metadata[profile]", "Upload profile; chosen by type if absent", False),
        ],
        "responses": _ok(
            "POST the fields and then the file to url; the object is url + fields.key",
            {
                "type": "object",
                "properties": {
                    "method": {"const": "POST"},
                    "url": _STR,
                    "fields": {"type": "object", "additionalProperties": _STR},
                    "expires": {"type": "integer"},
                },
            },
        )
        | _error_responses(400, 401, 422),
    },
    ("POST", "/s3/multipart"): {
        "tags": _TAG,
        "summary": "Record an upload and start a multipart upload in storage",
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "filename": _STR,
                            "type": _STR,
                            "metadata": {"type": "object"},
                        },
                        "required": ["filename", "type"],
                    }
                }
            },
        },
        "responses": _ok(
            "Started",
            {
                "type": "object",
                "properties": {"key": _STR, "uploadId": _STR, "bucket": _STR},
            },
        )
        | _error_responses(400, 401, 413, 422),
    },
    ("GET", "/s3/multipart/{uploadId}/{partNumber}"): {
        "tags": _TAG,
        "summary": "Sign one UploadPart URL (PUT the raw bytes)",
        "parameters": [
            _UPLOAD_ID,
            {"name": "partNumber", "in": "path", "required": True, "schema": {"type": "integer"}},
            _KEY,
        ],
        "responses": _ok(
            "Signed",
            {"type": "object", "properties": {"url": _STR, "expires": {"type": "integer"}}},
        )
        | _error_responses(400, 401, 404, 409),
    },
    ("GET", "/s3/multipart/{uploadId}/batch"): {
        "tags": _TAG,
        "summary": "Sign several UploadPart URLs (older Uppy clients)",
        "parameters": [_UPLOAD_ID, _KEY, _query("partNumbers", "Comma-separated part numbers")],
        "responses": _ok(
            "Signed",
            {
                "type": "object",
                "properties": {"presignedUrls": {"type": "object", "additionalProperties": _STR}},
            },
        )
        | _error_responses(400, 401, 404, 409),
    },
    ("GET", "/s3/multipart/{uploadId}"): {
        "tags": _TAG,
        "summary": "The parts storage holds (resume)",
        "parameters": [_UPLOAD_ID, _KEY],
        "responses": _ok(
            "Stored parts",
            {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "PartNumber": {"type": "integer"},
                        "ETag": _STR,
                        "Size": {"type": "integer"},
                        "LastModified": _STR,
                    },
                },
            },
        )
        | _error_responses(400, 401, 404, 409),
    },
    ("POST", "/s3/multipart/{uploadId}/complete"): {
        "tags": _TAG,
        "summary": "Complete the upload (ETags quoted or not); the pipeline starts",
        "parameters": [_UPLOAD_ID, _KEY],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "parts": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "properties": {
                                        "PartNumber": {"type": "integer"},
                                        "ETag": _STR,
                                    },
                                    "required": ["PartNumber", "ETag"],
                                },
                            }
                        },
                        "required": ["parts"],
                    }
                }
            },
        },
        "responses": _ok(
            "Completed",
            {
                "type": "object",
                "properties": {"location": _STR, "key": _STR, "bucket": _STR},
            },
        )
        | _error_responses(400, 401, 404, 409, 413),
    },
    ("DELETE", "/s3/multipart/{uploadId}"): {
        "tags": _TAG,
        "summary": "Abort the upload in storage",
        "parameters": [_UPLOAD_ID, _KEY],
        "responses": _ok("Aborted", {"type": "object"}) | _error_responses(400, 401, 404, 409),
    },
}
