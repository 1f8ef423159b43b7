"""Domain errors and the one middleware that turns them into RFC 9457 problem+json."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web

from services.gateway.policy import FieldError

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


class Problem(Exception):
    """An error answered as problem+json. Subclasses fix the status and type."""

    status = 400
    slug = "bad-request"
    title = "Bad request"

    def __init__(self, detail: str, *, errors: Sequence[FieldError] = (), **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = list(errors)
        self.extra = extra
        self.headers: dict[str, str] = {}

    def body(self, instance: str | None = None) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "type": f"/problems/{self.slug}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            doc["instance"] = instance
        if self.errors:
            doc["errors"] = [{"field": e.field, "message": e.message} for e in self.errors]
        doc.update(self.extra)
        return doc


class BadRequest(Problem):
    pass


class ValidationFailed(Problem):
    status = 422
    slug = "validation-error"
    title = "The request is not valid"


class Unauthorized(Problem):
    status = 401
    slug = "unauthorized"
    title = "Authentication required"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.headers["WWW-Authenticate"] = 'Bearer realm="clearance"'


class Forbidden(Problem):
    status = 403
    slug = "forbidden"
    title = "Forbidden"


class NotFound(Problem):
    status = 404
    slug = "not-found"
    title = "Not found"


class MethodNotAllowed(Problem):
    status = 405
    slug = "method-not-allowed"
    title = "Method not allowed"


class Conflict(Problem):
    status = 409
    slug = "conflict"
    title = "Conflict with the upload's state"


class PayloadTooLarge(Problem):
    status = 413
    slug = "payload-too-large"
    title = "Request body too large"


class UnsupportedMediaType(Problem):
    status = 415
    slug = "unsupported-media-type"
    title = "Unsupported media type"


class ServiceUnavailable(Problem):
    status = 503
    slug = "unavailable"
    title = "A dependency is unavailable"


def problem_response(problem: Problem, request: web.Request | None = None) -> web.Response:
    body = problem.body(request.path if request is not None else None)
    resp = web.Response(body=orjson.dumps(body), status=problem.status, content_type=PROBLEM_JSON)
    resp.headers.update(problem.headers)
    return resp


def _from_http_exception(exc: web.HTTPException) -> Problem:
    status = exc.status
    if status == 404:
        return NotFound("no such resource")
    if status == 405:
        p: Problem = MethodNotAllowed(f"{exc.reason}")
        allow = exc.headers.get("Allow")
        if allow:
            p.headers["Allow"] = allow
        return p
    if status == 413:
        return PayloadTooLarge(exc.text or "request body too large")
    p = Problem(exc.text or HTTPStatus(status).phrase)
    p.status = status
    p.slug = HTTPStatus(status).phrase.lower().replace(" ", "-")
    p.title = HTTPStatus(status).phrase
    return p


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map domain errors and aiohttp's own 4xx to problem+json; never leak a 500's cause."""
    try:
        return await handler(request)
    except Problem as problem:
        return problem_response(problem, request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return problem_response(_from_http_exception(exc), request)
    except Exception:
        error_id = uuid.uuid4().hex
        log.exception("unhandled error %s on %s %s", error_id, request.method, request.path)
        p = Problem("an unexpected error occurred", error_id=error_id)
        p.status, p.slug, p.title = 500, "internal-error", "Internal server error"
        return problem_response(p, request)
