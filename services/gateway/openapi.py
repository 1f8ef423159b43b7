"""OpenAPI 3.1 document built from the pydantic models and the routes that exist.

Schemas come straight from the models (`model_json_schema`), so they can't drift; a
test checks that every registered route is described here and vice versa.
"""

from __future__ import annotations

import copy
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from services.gateway import companion_models as c
from services.gateway import models as m
from services.gateway import web as web_routes
from services.gateway.appkeys import SETTINGS
from shared.settings import S3_MAX_PARTS, Settings

JSON = "application/json"
PROBLEM = "application/problem+json"


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _ok(status: int, model: type[BaseModel] | None, description: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"description": description}
    if model is not None:
        entry["content"] = {JSON: {"schema": _ref(model)}}
    return {str(status): entry}


def _problems(*statuses: int) -> dict[str, Any]:
    return {
        str(s): {"description": "Problem", "content": {PROBLEM: {"schema": _ref(m.ProblemDetails)}}}
        for s in statuses
    }


def _body(model: type[BaseModel], required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {JSON: {"schema": _ref(model)}}}


ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}
AUTH: list[dict[str, list[str]]] = [{"bearer": []}]

# (method, path) → operation. Keep in step with `create_app`; a test enforces it.
OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/v1/uploads"): {
        "summary": "Declare a file and get presigned upload URL(s)",
        "requestBody": _body(m.CreateUpload),
        "responses": _ok(201, m.UploadCreated, "Upload created")
        | _problems(400, 401, 413, 415, 422),
    },
    ("GET", "/v1/uploads"): {
        "summary": "The caller's uploads, newest first",
        "parameters": [
            {"name": "status", "in": "query", "schema": {"$ref": "#/components/schemas/Status"}},
            {
                "name": "limit",
                "in": "query",
                "schema": {"type": "integer", "minimum": 1, "maximum": 100},
            },
            {"name": "cursor", "in": "query", "schema": {"type": "string"}},
        ],
        "responses": _ok(200, m.UploadPage, "A page of uploads") | _problems(401, 422),
    },
    ("GET", "/v1/uploads/{id}"): {
        "summary": "One upload with its timeline and, when ready, thumbnail URLs",
        "parameters": [ID],
        "responses": _ok(200, m.UploadRecord, "The upload") | _problems(401, 404),
    },
    ("DELETE", "/v1/uploads/{id}"): {
        "summary": "Abort an upload in progress, or delete a finished one",
        "parameters": [ID],
        "responses": {"204": {"description": "Gone"}} | _problems(401, 404, 409),
    },
    ("POST", "/v1/uploads/{id}/parts"): {
        "summary": "Sign a batch of part URLs (multipart uploads)",
        "parameters": [ID],
        "requestBody": _body(m.SignPartsRequest),
        "responses": _ok(200, m.SignedParts, "Signed part URLs")
        | _problems(400, 401, 404, 409, 415, 422),
    },
    ("GET", "/v1/uploads/{id}/parts"): {
        "summary": "The parts storage holds (resume after a crash)",
        "parameters": [ID],
        "responses": _ok(200, m.StoredParts, "Stored parts") | _problems(401, 404, 409),
    },
    ("POST", "/v1/uploads/{id}/complete"): {
        "summary": "Tell the gateway the bytes have landed",
        "parameters": [ID],
        "requestBody": _body(m.CompleteUpload, required=False),
        "responses": _ok(202, m.Accepted, "Accepted for scanning")
        | _problems(400, 401, 404, 409, 415, 422),
    },
    ("GET", "/v1/uploads/{id}/download"): {
        "summary": "Redirect to a short-lived download URL (ready uploads only)",
        "parameters": [ID],
        "responses": {"302": {"description": "Redirect to storage"}} | _problems(401, 404, 409),
    },
    ("GET", "/v1/uploads/{id}/events"): {
        "summary": "Server-Sent Events: one `status` event per transition; ends at a final state",
        "parameters": [
            ID,
            {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"}},
        ],
        "responses": {
            "200": {
                "description": (
                    "An event stream: `retry: 2000`, then per transition `id: <seq>`,"
                    " `event: status` and `data: <StatusEvent as JSON>`; `: heartbeat`"
                    " comments in between"
                ),
                "content": {
                    "text/event-stream": {
                        "schema": {"type": "string"},
                        "itemSchema": _ref(m.StatusEvent),
                    }
                },
            }
        }
        | _problems(401, 404),
    },
    ("GET", "/healthz"): {
        "summary": "Liveness",
        "security": [],
        "responses": {"200": {"description": "Alive"}},
    },
    ("GET", "/readyz"): {
        "summary": "Readiness of database, storage and broker",
        "security": [],
        "responses": {"200": {"description": "Ready"}, "503": {"description": "Not ready"}},
    },
    ("GET", "/metrics"): {
        "summary": "Prometheus metrics",
        "security": [],
        "responses": {"200": {"description": "Metrics in the text exposition format"}},
    },
    ("GET", "/openapi.json"): {
        "summary": "This document",
        "security": [],
        "responses": {"200": {"description": "OpenAPI 3.1"}},
    },
    ("GET", "/asyncapi.json"): {
        "summary": "The public events (message stream and webhooks) as AsyncAPI 3.0",
        "security": [],
        "responses": {"200": {"description": "AsyncAPI 3.0"}},
    },
}

_UPPY = ["Uppy Companion compatibility"]
_UPLOAD_ID = {
    "name": "uploadId",
    "in": "path",
    "required": True,
    "description": "The storage's multipart upload id, as returned by POST /s3/multipart",
    "schema": {"type": "string"},
}


def _query(name: str, description: str, required: bool = True) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": {"type": "string"},
    }


def _uppy_errors(*statuses: int) -> dict[str, Any]:
    return {
        str(s): {"description": "Error", "content": {JSON: {"schema": _ref(c.CompanionError)}}}
        for s in statuses
    }


def _uppy(summary: str, answer: dict[str, Any], *statuses: int, **more: Any) -> dict[str, Any]:
    return {
        "tags": _UPPY,
        "summary": summary,
        "responses": {"200": {"description": "OK", "content": {JSON: {"schema": answer}}}}
        | _uppy_errors(*statuses),
        **more,
    }


_KEY = _query("key", "The object key returned when the upload was created")

COMPANION_OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("GET", "/s3/params"): _uppy(
        "Record an upload and sign a POST policy (single-request upload)",
        _ref(c.FormUpload),
        400,
        401,
        422,
        parameters=[
            _query("filename", "The user's file name (stored, never used as a key)"),
            _query("type", "Content type; must be allowed by the profile"),
            {
                "name": "metadata",
                "in": "query",
                "style": "deepObject",
                "explode": True,
                "required": False,
                "description": (
                    "Uppy's file meta as `metadata[k]=v`: `metadata[profile]` picks the upload"
                    " profile (chosen by type if absent); Uppy's own name, type and"
                    " relativePath are ignored; the rest is the upload's application metadata"
                ),
                "schema": {
                    "type": "object",
                    "properties": {"profile": {"type": "string"}},
                    "additionalProperties": {"type": "string"},
                },
            },
        ],
    ),
    ("POST", "/s3/multipart"): _uppy(
        "Record an upload and start a multipart upload in storage",
        _ref(c.MultipartStarted),
        400,
        401,
        413,
        415,
        422,
        requestBody=_body(c.CreateMultipart),
    ),
    ("GET", "/s3/multipart/{uploadId}/{partNumber}"): _uppy(
        "Sign one UploadPart URL (PUT the raw bytes)",
        _ref(c.SignedPartUrl),
        400,
        401,
        404,
        409,
        parameters=[
            _UPLOAD_ID,
            {
                "name": "partNumber",
                "in": "path",
                "required": True,
                "schema": {"type": "integer", "minimum": 1, "maximum": S3_MAX_PARTS},
            },
            _KEY,
        ],
    ),
    ("GET", "/s3/multipart/{uploadId}/batch"): _uppy(
        "Sign several UploadPart URLs (older Uppy clients)",
        _ref(c.SignedPartUrls),
        400,
        401,
        404,
        409,
        parameters=[_UPLOAD_ID, _KEY, _query("partNumbers", "Comma-separated part numbers")],
    ),
    ("GET", "/s3/multipart/{uploadId}"): _uppy(
        "The parts storage holds (resume)",
        {"type": "array", "items": _ref(c.HeldPart)},
        400,
        401,
        404,
        409,
        parameters=[_UPLOAD_ID, _KEY],
    ),
    ("POST", "/s3/multipart/{uploadId}/complete"): _uppy(
        "Complete the upload (ETags quoted or not); the pipeline starts",
        _ref(c.Completed),
        400,
        401,
        404,
        409,
        413,
        415,
        parameters=[_UPLOAD_ID, _KEY],
        requestBody=_body(c.CompleteMultipart),
    ),
    ("DELETE", "/s3/multipart/{uploadId}"): _uppy(
        "Abort the upload in storage",
        {"type": "object"},
        400,
        401,
        404,
        409,
        parameters=[_UPLOAD_ID, _KEY],
    ),
}

SCHEMAS: tuple[type[BaseModel], ...] = (
    m.CreateUpload,
    m.UploadCreated,
    m.UploadPage,
    m.UploadRecord,
    m.CompleteUpload,
    m.Accepted,
    m.SignPartsRequest,
    m.SignedParts,
    m.StoredParts,
    m.ProblemDetails,
    m.StatusEvent,
    c.FormUpload,
    c.CreateMultipart,
    c.MultipartStarted,
    c.SignedPartUrl,
    c.SignedPartUrls,
    c.HeldPart,
    c.CompleteMultipart,
    c.Completed,
    c.CompanionError,
)


def _string_branch(prop: dict[str, Any]) -> dict[str, Any]:
    """The non-null alternative of an optional property (the property itself otherwise)."""
    for branch in prop.get("anyOf", []):
        if branch.get("type") != "null":
            return branch  # type: ignore[no-any-return]
    return prop


def _declared_bounds(
    components: dict[str, Any], paths: dict[str, dict[str, Any]], settings: Settings
) -> None:
    """What the profiles accept, in the document: names, types, sizes, name lengths.

    Single-field bounds only: a type one profile allows and another refuses, or a
    name with a path in it, is still answered 422 with the reason.
    """
    profiles = settings.profiles.values()
    names = sorted(settings.profiles)
    types = sorted({t for p in profiles for t in p.content_types})
    filename = {
        "minLength": min(p.filename_min for p in profiles),
        "maxLength": max(p.filename_max for p in profiles),
    }
    size = {
        "minimum": min(p.min_size for p in profiles),
        "maximum": max(p.max_size for p in profiles),
    }
    create = components["CreateUpload"]["properties"]
    create["filename"] |= filename
    create["content_type"] |= {"enum": types}
    create["size"] |= size
    _string_branch(create["profile"])["enum"] = names
    uppy = components["CreateMultipart"]["properties"]
    uppy["filename"] |= filename
    uppy["type"] |= {"enum": types}
    form = copy.deepcopy(paths["/s3/params"]["get"])  # the module's operations stay as they are
    for param in form["parameters"]:
        param["schema"] |= {"filename": filename, "type": {"enum": types}}.get(param["name"], {})
    paths["/s3/params"]["get"] = form


def document(app: web.Application | None = None) -> dict[str, Any]:
    components: dict[str, Any] = {}
    for model in SCHEMAS:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in {**schema.pop("$defs", {}), model.__name__: schema}.items():
            if components.setdefault(name, sub) != sub:
                raise RuntimeError(f"two models are both called {name} in the document")
    settings = app[SETTINGS] if app is not None else Settings()
    paths: dict[str, dict[str, Any]] = {}
    operations = OPERATIONS | COMPANION_OPERATIONS | web_routes.OPERATIONS
    if app is not None and settings.dev_token_endpoint:
        operations |= web_routes.DEV_OPERATIONS
    for (method, path), op in sorted(operations.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        paths.setdefault(path, {})[method.lower()] = op
    _declared_bounds(components, paths, settings)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Clearance gateway",
            "version": "1",
            "description": "Direct-to-storage uploads with scanning, processing and live status.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
        "security": AUTH,
    }
