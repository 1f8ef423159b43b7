"""The gateway's application factory: settings in, a wired aiohttp app out."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import orjson
from aiohttp import web
from botocore.exceptions import ClientError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.gateway import asyncapi, openapi
from services.gateway.appkeys import (
    AMQP,
    DOCUMENTS,
    LISTENER,
    METRICS,
    POOL,
    PRESIGNER,
    PUBLISHER,
    S3,
    S3_REQUESTS,
    SETTINGS,
    UPLOADS,
    VERIFIER,
)
from services.gateway.auth import TokenVerifier
from services.gateway.broker import broker_context, recorder_context
from services.gateway.companion import add_companion_routes
from services.gateway.live import EventsView, listener_context
from services.gateway.metrics import GatewayMetrics, metrics_middleware
from services.gateway.middlewares import (
    auth_middleware,
    common_headers,
    cors_middleware,
    dependency_middleware,
    header_limit_middleware,
    parser_limits,
    request_id_middleware,
)
from services.gateway.notifier import outbox_relay_context, webhooks_context
from services.gateway.reconciler import reconciler_context
from services.gateway.s3_requests import S3Requests
from services.gateway.storage import Storage
from services.gateway.uploads import UploadService
from services.gateway.v1 import CompleteView, DownloadView, PartsView, UploadsView, UploadView
from services.gateway.web import add_web_routes
from shared.db import create_pool, schema_problem
from shared.problems import problem_middleware
from shared.s3 import browser_presigner, is_not_found, s3_client, storage_signer
from shared.settings import Settings

log = logging.getLogger(__name__)

READY_TIMEOUT = 2.0  # seconds per dependency probe
# Storage calls on the request path: one pool of kept-alive connections, bounded waits.
STORAGE_TIMEOUT = aiohttp.ClientTimeout(total=30, sock_connect=5, sock_read=20)
STORAGE_CONNECTIONS = 64

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def database_context(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    pool = await create_pool(
        settings.database_url, min_size=settings.db_pool_min, max_size=settings.db_pool_max
    )
    app[POOL] = pool
    try:
        yield
    finally:
        await pool.close()


async def _storage(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    connector = aiohttp.TCPConnector(limit=STORAGE_CONNECTIONS, keepalive_timeout=30)
    async with (
        aiohttp.ClientSession(
            connector=connector, timeout=STORAGE_TIMEOUT, auto_decompress=False
        ) as session,
        s3_client(settings) as client,
    ):
        app[S3] = client
        app[S3_REQUESTS] = S3Requests(session, storage_signer(settings))
        yield


async def _uploads(app: web.Application) -> AsyncIterator[None]:
    listener = app[LISTENER]
    app[UPLOADS] = UploadService(
        app[SETTINGS],
        app[POOL],
        Storage(app[S3], app[S3_REQUESTS]),
        app[PRESIGNER],
        app.get(PUBLISHER),
        app[METRICS],
        # Announcers here: woken in-process; elsewhere (`clearance announcer`): by NOTIFY.
        announce=(
            listener.announce if app[SETTINGS].gateway_announcers else listener.announce_elsewhere
        ),
    )
    yield
    await app[UPLOADS].creates.close()  # before the pool closes


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


class SchemaBehind(Exception):
    """The database is reachable but not migrated to the version the code needs."""


class MissingBucket(Exception):
    """Storage answers but the upload bucket does not exist."""


async def _check(name: str, probe: Awaitable[object]) -> tuple[str, str]:
    try:
        await asyncio.wait_for(probe, READY_TIMEOUT)
    except Exception as exc:  # any failure means "not ready"; the reason is reported
        return name, f"error: {type(exc).__name__}: {exc}"[:200]
    return name, "ok"


async def readyz(request: web.Request) -> web.Response:
    app = request.app
    settings = app[SETTINGS]

    async def broker() -> None:
        conn = app.get(AMQP)
        if conn is None or conn.is_closed:
            raise ConnectionError("not connected to the broker")

    async def database() -> None:
        async with app[POOL].acquire() as conn:
            problem = await schema_problem(conn)
        if problem:
            raise SchemaBehind(problem)

    async def storage() -> None:
        try:
            await app[S3].head_bucket(Bucket=settings.bucket)
        except ClientError as exc:
            if is_not_found(exc):
                raise MissingBucket(
                    f"bucket {settings.bucket!r} does not exist: run `clearance init`"
                ) from None
            raise

    results = await asyncio.gather(
        _check("database", database()),
        _check("storage", storage()),
        _check("broker", broker()),
    )
    checks = dict(results)
    ok = all(v == "ok" for v in checks.values())
    return web.Response(
        body=orjson.dumps({"status": "ok" if ok else "unavailable", "checks": checks}),
        status=200 if ok else 503,
        content_type="application/json",
    )


async def metrics_view(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    resp = web.Response(body=body)
    resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return resp


async def openapi_view(request: web.Request) -> web.Response:
    built = request.app[DOCUMENTS]
    if "openapi" not in built:
        built["openapi"] = orjson.dumps(openapi.document(request.app))
    return web.Response(body=built["openapi"], content_type="application/json")


async def asyncapi_view(request: web.Request) -> web.Response:
    built = request.app[DOCUMENTS]
    if "asyncapi" not in built:
        exchange = request.app[SETTINGS].notifications_exchange
        built["asyncapi"] = orjson.dumps(asyncapi.document(exchange))
    return web.Response(body=built["asyncapi"], content_type="application/json")


def create_app(
    settings: Settings,
    *,
    with_broker: bool = True,
    with_recorder: bool = True,
    with_reconciler: bool = True,
    with_outbox_relay: bool | None = None,
) -> web.Application:
    """Build the gateway. Resources open on start-up and close on clean-up, in order.

    With several gateway processes, one runs the recorder and the reconciler; every
    one runs the announcers unless `gateway_announcers` is off (then `clearance
    announcer` does): the relay of public events (`with_outbox_relay`, default:
    `with_broker`) and, whenever endpoints are configured, the webhook dispatcher.
    """
    announcers = settings.gateway_announcers
    metrics = GatewayMetrics()
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[
            request_id_middleware,
            metrics_middleware(metrics),
            cors_middleware,
            problem_middleware,
            header_limit_middleware,
            dependency_middleware,
            auth_middleware,
        ],
        handler_args={
            **parser_limits(settings.max_headers),
            # Closes a connection that has not sent a whole request head this long after
            # connecting or after its last answer (aiohttp's keep-alive timer covers both).
            "keepalive_timeout": settings.http_idle_timeout_seconds,
        },
    )
    app.on_response_prepare.append(common_headers)
    app[SETTINGS] = settings
    app[DOCUMENTS] = {}
    app[METRICS] = metrics
    app[VERIFIER] = TokenVerifier(settings)
    app[PRESIGNER] = browser_presigner(settings)
    app.cleanup_ctx.append(database_context)
    app.cleanup_ctx.append(_storage)
    app.cleanup_ctx.append(listener_context)
    if with_broker:
        app.cleanup_ctx.append(broker_context)
    app.cleanup_ctx.append(_uploads)
    if with_broker and with_recorder:
        app.cleanup_ctx.append(recorder_context)
    if with_reconciler:
        app.cleanup_ctx.append(reconciler_context)
    if (with_broker and announcers) if with_outbox_relay is None else with_outbox_relay:
        app.cleanup_ctx.append(outbox_relay_context)
    if announcers:
        app.cleanup_ctx.append(webhooks_context)

    r = app.router
    r.add_get("/healthz", healthz)
    r.add_get("/readyz", readyz)
    r.add_get("/metrics", metrics_view)
    r.add_get("/openapi.json", openapi_view)
    r.add_get("/asyncapi.json", asyncapi_view)
    r.add_view("/v1/uploads", UploadsView)
    r.add_view("/v1/uploads/{id}", UploadView)
    r.add_view("/v1/uploads/{id}/parts", PartsView)
    r.add_view("/v1/uploads/{id}/complete", CompleteView)
    r.add_view("/v1/uploads/{id}/download", DownloadView)
    r.add_view("/v1/uploads/{id}/events", EventsView)
    add_companion_routes(app)
    add_web_routes(app)
    return app
