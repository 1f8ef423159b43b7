"""Uppy Companion-compatible `/s3/...` routes, so stock `@uppy/aws-s3` works unchanged.

A thin adapter over `UploadService`, like `/v1`: it translates Uppy's shapes
(`companion_models`) and answers errors as `{error, message}` (Uppy reads no
problem+json). The shapes are the ones `@uppy/aws-s3` really sends (6.x with
`companionEndpoint`; 3.x-5.x with `companionUrl` and `companionHeaders`):

- `GET /s3/params?filename=&type=&metadata[profile]=` → a presigned **POST policy**
  `{method: "POST", url, fields, expires}`;
- `POST /s3/multipart` `{filename, type, metadata}` → `{key, uploadId, bucket}`, then
  `GET /s3/multipart/{uploadId}/{partNumber}?key=` → `{url, expires}` per part (older
  clients: `GET .../batch?key=&partNumbers=1,2` → `{presignedUrls}`),
  `GET /s3/multipart/{uploadId}?key=` → the stored parts,
  `POST .../complete?key=` `{parts: [{PartNumber, ETag}]}` → `{location, key, bucket}`,
  `DELETE /s3/multipart/{uploadId}?key=` → `{}`.

Uppy's `meta` (`metadata` in the body, `metadata[k]=v` in the query) becomes the
upload's application metadata, less Uppy's own `name`, `type` and `relativePath`, and
less `profile`, which picks the profile (`services.gateway.metadata`).

Uppy never declares a size: storage enforces the profile's byte range for a POST
upload (`content-length-range`); for multipart the service checks the stored parts
before completing and the completed object after. Part URLs sign no length (Uppy
chooses its own part size). A missing or bad token is answered by the gateway's auth
middleware before these handlers run (401 problem+json; Uppy only looks at the status).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

from aiohttp import web
from pydantic import BaseModel

from services.gateway import store
from services.gateway.appkeys import SETTINGS, UPLOADS
from services.gateway.base import (
    correlation_id,
    json_response,
    owner_of,
    read_model,
    whole_number,
)
from services.gateway.companion_models import (
    CompanionError,
    Completed,
    CompleteMultipart,
    CreateMultipart,
    FormUpload,
    HeldPart,
    MultipartStarted,
    SignedPartUrl,
    SignedPartUrls,
)
from services.gateway.metadata import MetadataRefused, from_query, from_uppy
from services.gateway.policy import PartListRefused, PartsGone, PolicyRefused
from shared.keys import upload_id_from_key
from shared.problems import BadRequest, NotFound, Problem, ValidationFailed, from_http_exception
from shared.status import Status

MAX_BATCH = 1000  # part URLs per batch request

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Where Uppy's (and Companion's) statuses differ from /v1's for the same refusal.
STATUS_FOR: tuple[tuple[type[Problem], int], ...] = (
    (PolicyRefused, 422),
    (MetadataRefused, 422),
    (ValidationFailed, 400),
    (PartsGone, 404),
    (PartListRefused, 400),
)


def error_response(problem: Problem) -> web.Response:
    """`{error, message}` with the status Uppy expects; field errors join the message."""
    status = next((s for kind, s in STATUS_FOR if isinstance(problem, kind)), problem.status)
    message = problem.detail
    if problem.errors:
        message += ": " + "; ".join(f"{e.field}: {e.message}" for e in problem.errors[:5])
    response = json_response(CompanionError(error=message, message=message), status=status)
    response.headers.update(problem.headers)
    return response


def companion_errors(handler: Handler) -> Handler:
    """Answer every refusal of a Companion route as `{error}`."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except Problem as problem:
            return error_response(problem)
        except web.HTTPException as exc:  # e.g. 413 from reading an oversized body
            if exc.status < 400:
                raise
            return error_response(from_http_exception(exc))

    return wrapped


def _required(request: web.Request, name: str) -> str:
    value = request.query.get(name, "")
    if not value:
        raise BadRequest(f"the {name!r} query parameter is required")
    return value


async def _load_multipart(request: web.Request) -> store.Upload:
    """The caller's multipart upload named by `key` and `{uploadId}`; anything else is 404."""
    owner = owner_of(request)
    key = _required(request, "key")
    upload_id = upload_id_from_key(request.app[SETTINGS].upload_prefix, key)
    missing = NotFound("no such multipart upload")
    if upload_id is None:
        raise missing
    upload = await request.app[UPLOADS].get(upload_id, owner)
    if upload.key != key or upload.multipart_upload_id != request.match_info["uploadId"]:
        raise missing
    return upload


def _ok(model: BaseModel | list[BaseModel]) -> web.Response:
    if isinstance(model, list):
        return json_response([m.model_dump(mode="json") for m in model])
    return json_response(model)


@companion_errors
async def params(request: web.Request) -> web.Response:
    """`GET /s3/params`: record an upload and sign a POST policy for it."""
    uploads = request.app[UPLOADS]
    meta, errors = from_query(request.query.items())
    if errors:
        raise MetadataRefused("invalid application metadata", errors=errors)
    upload = await uploads.create(
        owner_of(request),
        filename=_required(request, "filename"),
        content_type=_required(request, "type"),
        size=None,
        profile=meta.get("profile") or None,
        metadata=from_uppy(meta),
        correlation_id=correlation_id(request),
    )
    signed = uploads.sign_form(upload)
    ttl = uploads.settings.presign_ttl_seconds
    return _ok(FormUpload(url=signed.url, fields=signed.fields, expires=ttl))


@companion_errors
async def create_multipart(request: web.Request) -> web.Response:
    """`POST /s3/multipart`: record an upload and open its multipart upload in storage."""
    owner = owner_of(request)
    body = await read_model(request, CreateMultipart)
    requested = (body.metadata or {}).get("profile")
    upload = await request.app[UPLOADS].create(
        owner,
        filename=body.filename,
        content_type=body.type,
        size=None,
        profile=requested if isinstance(requested, str) and requested else None,
        metadata=from_uppy(body.metadata),
        multipart=True,
        correlation_id=correlation_id(request),
    )
    assert upload.multipart_upload_id is not None
    return _ok(
        MultipartStarted(key=upload.key, uploadId=upload.multipart_upload_id, bucket=upload.bucket)
    )


@companion_errors
async def sign_part(request: web.Request) -> web.Response:
    """`GET /s3/multipart/{uploadId}/{partNumber}`: one presigned UploadPart URL."""
    upload = await _load_multipart(request)
    raw = request.match_info["partNumber"]
    number = whole_number(raw)
    if number is None:  # answered here, so the refusal is Uppy's shape, not a bare 404
        raise BadRequest(f"the part number is a positive integer; got {raw[:20]!r}")
    uploads = request.app[UPLOADS]
    [signed] = await uploads.sign_parts(upload, [number], via="companion")
    return _ok(SignedPartUrl(url=signed.url, expires=uploads.settings.presign_ttl_seconds))


@companion_errors
async def sign_batch(request: web.Request) -> web.Response:
    """`GET /s3/multipart/{uploadId}/batch?partNumbers=1,2`: part URLs for older clients."""
    upload = await _load_multipart(request)
    raw = [p.strip() for p in _required(request, "partNumbers").split(",")]
    if len(raw) > MAX_BATCH:
        raise BadRequest(f"at most {MAX_BATCH} part numbers per request")
    parsed = [whole_number(p) for p in raw]
    bad = [p for p, n in zip(raw, parsed, strict=True) if n is None]
    if bad:
        raise BadRequest(f"part numbers are positive integers; got {[b[:20] for b in bad[:5]]}")
    numbers = [n for n in parsed if n is not None]
    signed = await request.app[UPLOADS].sign_parts(upload, numbers, via="companion")
    urls = {str(n): s.url for n, s in zip(numbers, signed, strict=True)}
    return _ok(SignedPartUrls(presignedUrls=urls))


@companion_errors
async def list_parts(request: web.Request) -> web.Response:
    """`GET /s3/multipart/{uploadId}`: the parts storage holds (Uppy resumes from these)."""
    held = await request.app[UPLOADS].stored_parts(await _load_multipart(request))
    return _ok(
        [
            HeldPart(
                PartNumber=p.part_number,
                ETag=f'"{p.etag}"',
                Size=p.size,
                LastModified=p.last_modified.isoformat() if p.last_modified else None,
            )
            for p in held
        ]
    )


@companion_errors
async def complete(request: web.Request) -> web.Response:
    """`POST /s3/multipart/{uploadId}/complete`: check the parts, complete, start the pipeline."""
    upload = await _load_multipart(request)
    body = await read_model(request, CompleteMultipart)
    uploads = request.app[UPLOADS]
    # Uppy retries a complete whose answer it lost: one that already worked succeeds.
    await uploads.complete(upload, [(p.PartNumber, p.ETag) for p in body.parts])
    location = uploads.presigner.bucket_url(upload.bucket) + upload.key
    return _ok(Completed(location=location, key=upload.key, bucket=upload.bucket))


@companion_errors
async def abort(request: web.Request) -> web.Response:
    """`DELETE /s3/multipart/{uploadId}`: abort in storage and record `aborted`."""
    upload = await _load_multipart(request)
    if upload.status not in (Status.ABORTED, Status.EXPIRED):
        await request.app[UPLOADS].abort(upload, via="companion")
    return json_response({})


def add_companion_routes(app: web.Application) -> None:
    """Register the `/s3/params` and `/s3/multipart...` routes."""
    r = app.router
    r.add_get("/s3/params", params)
    r.add_post("/s3/multipart", create_multipart)
    r.add_get("/s3/multipart/{uploadId}/batch", sign_batch)
    # After `/batch`: routes match in the order they are added.
    r.add_get("/s3/multipart/{uploadId}/{partNumber}", sign_part)
    r.add_post("/s3/multipart/{uploadId}/complete", complete)
    r.add_get("/s3/multipart/{uploadId}", list_parts)
    r.add_delete("/s3/multipart/{uploadId}", abort)
