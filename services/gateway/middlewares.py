"""The gateway's request pipeline, outermost first: request id, metrics, CORS,
problem+json, header limits, dependency errors, authentication; and the headers every
answer carries (`on_response_prepare`, so redirects and errors get them too)."""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable

import asyncpg
from aiohttp import web

from services.gateway.appkeys import OWNER, REQUEST_ID, SETTINGS, VERIFIER
from shared.problems import BadRequest, HeadersTooLarge, ServiceUnavailable, URITooLong

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Paths anyone may call; everything else needs a bearer token.
PUBLIC_PREFIXES = (
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/asyncapi.json",
    "/static/",
    "/dev/",
)
CORS_METHODS = "GET, POST, PUT, DELETE, OPTIONS"
CORS_MAX_AGE = "600"
SERVER = "clearance"
# What a missing table or column means: the schema is behind the code.
_SCHEMA_ERRORS = (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError)
_DOWN_ERRORS = (
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.InterfaceError,
    # What asyncpg raises on a connection the server has just terminated.
    asyncpg.exceptions.InternalClientError,
    ConnectionError,
    TimeoutError,
)


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    rid = request.headers.get("X-Request-ID", "")
    if not rid or len(rid) > 128 or not rid.isprintable() or not rid.isascii():
        rid = os.urandom(16).hex()  # 128 random bits, without building a UUID
    request[REQUEST_ID] = rid
    return await handler(request)


async def common_headers(request: web.Request, response: web.StreamResponse) -> None:
    """On every answer: its request id, no MIME sniffing, no server version."""
    rid = request.get(REQUEST_ID)
    if rid:
        response.headers["X-Request-ID"] = rid
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Server"] = SERVER


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """CORS for the configured origins only; preflights are answered here and cached."""
    origin = request.headers.get("Origin")
    allowed = origin is not None and origin in request.app[SETTINGS].cors_origins
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        if not allowed:
            return web.Response(status=403, headers={"Vary": "Origin"})
        assert origin is not None
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Allow-Methods": CORS_METHODS,
                "Access-Control-Allow-Headers": request.headers.get(
                    "Access-Control-Request-Headers", "authorization, content-type"
                ),
                "Access-Control-Max-Age": CORS_MAX_AGE,
                "Vary": "Origin",
            },
        )
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # a redirect (download) is an answer too
        if allowed and exc.status < 400:
            _allow(exc, origin)
        raise
    if allowed:
        _allow(response, origin)
    return response


def _allow(response: web.StreamResponse, origin: str | None) -> None:
    assert origin is not None
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Access-Control-Expose-Headers"] = "Location, X-Request-ID"
    response.headers.add("Vary", "Origin")


# Per request head: the request target and each header field at most this long. The
# HTTP parser's own limits (`parser_limits`) are set above these and above the settings'
# field count, so a head a little over reaches this middleware and gets a precise 414
# or 431 problem; only one far beyond them gets the parser's plain-text 400.
MAX_TARGET_BYTES = 8 * 1024
MAX_FIELD_BYTES = 8 * 1024


def parser_limits(max_headers: int) -> dict[str, int]:
    """aiohttp's `handler_args` for the HTTP parser: twice the limits checked here."""
    return {
        "max_headers": 2 * max_headers,
        "max_field_size": 2 * MAX_FIELD_BYTES,
        "max_line_size": 2 * max(MAX_TARGET_BYTES, MAX_FIELD_BYTES),
    }


@web.middleware
async def header_limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The request target (414), the number of header fields, each field and all of them
    together (431) stay within their limits."""
    settings = request.app[SETTINGS]
    if len(request.raw_path) > MAX_TARGET_BYTES:
        raise URITooLong(
            f"the request target is {len(request.raw_path)} bytes;"
            f" at most {MAX_TARGET_BYTES} are accepted"
        )
    fields = request.raw_headers
    if len(fields) > settings.max_headers:
        raise HeadersTooLarge(
            f"the request has {len(fields)} header fields; at most {settings.max_headers}"
            " are accepted"
        )
    size = 0
    for name, value in fields:
        field = len(name) + len(value) + 4
        if field > MAX_FIELD_BYTES:
            raise HeadersTooLarge(
                f"the header field {name[:64].decode('latin-1')!r} is {field} bytes;"
                f" at most {MAX_FIELD_BYTES} are accepted"
            )
        size += field
    limit = settings.max_header_bytes
    if size > limit:
        raise HeadersTooLarge(f"the request headers are {size} bytes; at most {limit} are accepted")
    return await handler(request)


@web.middleware
async def dependency_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A database that is down or not migrated is a 503 (try again), never a 500."""
    try:
        return await handler(request)
    except _SCHEMA_ERRORS as exc:
        log.error("database schema is behind the code: %s", exc)
        raise ServiceUnavailable(
            "the database schema is not at the version this gateway needs; "
            "an operator must run `clearance migrate`",
            retry_after=30,
        ) from None
    except _DOWN_ERRORS as exc:
        log.warning("database unavailable: %s", exc)
        raise ServiceUnavailable("the database is unavailable; try again") from None
    except asyncpg.DataError as exc:  # e.g. a NUL byte in text: bad input, not a crash
        raise BadRequest(f"the request carries a value that can't be stored: {exc}") from None


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    path = request.path
    if path != "/" and not path.startswith(PUBLIC_PREFIXES) and request.method != "OPTIONS":
        request[OWNER] = request.app[VERIFIER].owner(request.headers.get("Authorization"))
    return await handler(request)
