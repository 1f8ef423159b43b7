"""Errors as values at the HTTP edge: RFC 9457 problem+json, for every Clearance server.

Domain code raises a `Problem` subclass (not found, conflict, too large, …); one
middleware turns it, and aiohttp's own 4xx, into `application/problem+json`. An
unexpected exception is logged with an error id and answered with a 500 that says
nothing about its cause. The gateway and the relay both use this module.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
# A client that sends thousands of bad fields gets the first ones and a count.
MAX_FIELD_ERRORS = 20

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class FieldError:
    """One invalid field of a request: where (`a.b.0`) and what is wrong with it."""

    field: str
    message: str


class Problem(Exception):
    """An error answered as problem+json. Subclasses fix the status and type."""

    status = 400
    slug = "bad-request"
    title = "Bad request"

    def __init__(
        self,
        detail: str,
        *,
        errors: Sequence[FieldError] = (),
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = list(errors)
        self.extra = extra
        self.headers: dict[str, str] = dict(headers or {})

    def body(self, instance: str | None = None) -> dict[str, Any]:
        """The RFC 9457 document (at most `MAX_FIELD_ERRORS` field errors, and their count)."""
        doc: dict[str, Any] = {
            "type": f"/problems/{self.slug}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            doc["instance"] = instance
        if self.errors:
            doc["errors"] = [
                {"field": e.field, "message": e.message} for e in self.errors[:MAX_FIELD_ERRORS]
            ]
            if len(self.errors) > MAX_FIELD_ERRORS:
                doc["error_count"] = len(self.errors)
        doc.update(self.extra)
        return doc

    def response(self, request: web.Request | None = None) -> web.Response:
        """The problem+json answer (its `instance` is the request's path)."""
        body = self.body(request.path if request is not None else None)
        return web.Response(
            body=orjson.dumps(body),
            status=self.status,
            content_type=PROBLEM_JSON,
            headers=self.headers,
        )


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

    def __init__(self, detail: str, *, realm: str = "clearance") -> None:
        super().__init__(detail, headers={"WWW-Authenticate": f'Bearer realm="{realm}"'})


class NotFound(Problem):
    status = 404
    slug = "not-found"
    title = "Not found"


class MethodNotAllowed(Problem):
    status = 405
    slug = "method-not-allowed"
    title = "Method not allowed"


class RequestTimeout(Problem):
    status = 408
    slug = "request-timeout"
    title = "Request timeout"


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


class TooManyRequests(Problem):
    status = 429
    slug = "too-many-requests"
    title = "Too many requests"

    def __init__(self, detail: str, *, retry_after: int, **extra: Any) -> None:
        super().__init__(detail, headers={"Retry-After": str(max(1, retry_after))}, **extra)


class URITooLong(Problem):
    status = 414
    slug = "uri-too-long"
    title = "URI too long"


class HeadersTooLarge(Problem):
    status = 431
    slug = "request-header-fields-too-large"
    title = "Request header fields too large"


class ServiceUnavailable(Problem):
    status = 503
    slug = "unavailable"
    title = "A dependency is unavailable"

    def __init__(self, detail: str, *, retry_after: int = 5, **extra: Any) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)}, **extra)


class _HttpProblem(Problem):
    """aiohttp's own 4xx (e.g. 411, 414, 431), with its status and phrase."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        phrase = HTTPStatus(status).phrase
        self.status, self.title = status, phrase
        self.slug = phrase.lower().replace(" ", "-")


class _InternalError(Problem):
    status = 500
    slug = "internal-error"
    title = "Internal server error"


def from_http_exception(exc: web.HTTPException) -> Problem:
    """The problem for one of aiohttp's own error answers (404, 405, 413, …)."""
    if exc.status == 404:
        return NotFound("no such resource")
    if exc.status == 405:
        allow = exc.headers.get("Allow")
        return MethodNotAllowed(exc.reason, headers={"Allow": allow} if allow else None)
    if exc.status == 413:
        return PayloadTooLarge(exc.text or "request body too large")
    return _HttpProblem(exc.status, exc.text or HTTPStatus(exc.status).phrase)


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map domain errors and aiohttp's own 4xx to problem+json; never leak a 500's cause."""
    try:
        return await handler(request)
    except Problem as problem:
        return problem.response(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return from_http_exception(exc).response(request)
    except Exception:
        error_id = uuid.uuid4().hex
        log.exception("unhandled error %s on %s %s", error_id, request.method, request.path)
        return _InternalError("an unexpected error occurred", error_id=error_id).response(request)
