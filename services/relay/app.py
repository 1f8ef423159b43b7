"""The relay's application factory: storage notifications in, confirmed events out.

A webhook is answered 2xx only after the broker confirmed every event in its
body, and 503 when it did not, so a sender that retries (MinIO, AWS targets)
retries. SeaweedFS never retries; the metadata-log catch-up covers that. On AWS,
with `sqs_queue_url` set, the relay also long-polls S3's notifications from SQS
(`sqs.SqsIntake`) and deletes each message only after the broker's confirm.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime

import aio_pika.abc
import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.relay.catchup import SECOND_NS, CatchUp
from services.relay.formats import (
    Ignored,
    MalformedNotification,
    Outcome,
    Scope,
    parse_s3_event,
    parse_seaweedfs_webhook,
)
from services.relay.forwarding import Forwarder
from services.relay.metrics import RelayMetrics
from services.relay.sqs import SqsIntake, sqs_client
from shared.amqp.broker import open_broker
from shared.amqp.publisher import PublishFailed
from shared.amqp.topology import QueueSpec
from shared.events import ObjectCreated
from shared.pipeline import all_queues
from shared.problems import BadRequest, ServiceUnavailable, Unauthorized, problem_middleware
from shared.settings import Settings
from shared.tasks import cancel_and_wait

log = logging.getLogger(__name__)

# Entries of large multipart objects list every chunk; bodies of a few MiB happen.
MAX_BODY_BYTES = 16 * 1024 * 1024
# Answer within the sender's patience (the local stack gives SeaweedFS's webhook 5 s):
# an answer it never sees is a failure to it, whatever we did.
WEBHOOK_PUBLISH_TIMEOUT_S = 4.0
RETRY_AFTER_S = 5

SETTINGS = web.AppKey("settings", Settings)
SCOPE = web.AppKey("scope", Scope)
METRICS = web.AppKey("metrics", RelayMetrics)
FORWARDER = web.AppKey("forwarder", Forwarder)
CATCHUP = web.AppKey("catch_up", CatchUp)
SQS = web.AppKey("sqs", SqsIntake)
AMQP = web.AppKey("amqp", aio_pika.abc.AbstractRobustConnection)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _token_matches(header: str | None, expected: str) -> bool:
    scheme, _, token = (header or "").partition(" ")
    # Compared in constant time, and always compared, so timing says nothing.
    same = hmac.compare_digest(token.strip().encode(), expected.encode())
    return scheme.lower() == "bearer" and same


@web.middleware
async def webhook_auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Hooks need `Authorization: Bearer <webhook_token>`; health and metrics are open."""
    if request.path.startswith("/hooks/"):
        expected = request.app[SETTINGS].webhook_token.get_secret_value()
        if not _token_matches(request.headers.get("Authorization"), expected):
            raise Unauthorized("a valid webhook bearer token is required", realm="clearance-relay")
    return await handler(request)


async def _relay(request: web.Request, outcomes: Sequence[Outcome], source: str) -> web.Response:
    """Publish the events among `outcomes`; answer only once the broker confirmed them all."""
    metrics = request.app[METRICS]
    metrics.received.labels(source).inc(len(outcomes))
    events: list[ObjectCreated] = []
    ignored: list[dict[str, str]] = []
    for outcome in outcomes:
        if isinstance(outcome, Ignored):
            metrics.ignored.labels(source, outcome.code).inc()
            ignored.append({"reason": outcome.code, "detail": outcome.detail})
        else:
            events.append(outcome)
    try:
        sent = await request.app[FORWARDER].forward(
            events, source=source, timeout=WEBHOOK_PUBLISH_TIMEOUT_S
        )
    except PublishFailed as exc:
        log.warning("%s notification not relayed, answering 503: %s", source, exc)
        raise ServiceUnavailable(
            "the event broker did not confirm the event; send the notification again",
            retry_after=RETRY_AFTER_S,
        ) from exc
    for event in events:
        log.info("relayed %s %s (%s)", source, event.key, event.event_id)
    body = {"published": sent, "duplicates": len(events) - sent, "ignored": ignored}
    return web.json_response(body, dumps=lambda doc: orjson.dumps(doc).decode())


async def _read_outcomes(
    request: web.Request, source: str, parse: Callable[[bytes, Scope], Sequence[Outcome]]
) -> Sequence[Outcome]:
    body = await request.read()
    try:
        return parse(body, request.app[SCOPE])
    except MalformedNotification as exc:
        request.app[METRICS].malformed.labels(source).inc()
        log.warning("malformed %s notification: %s", source, exc.detail)
        raise BadRequest(exc.detail) from exc


async def seaweedfs_hook(request: web.Request) -> web.Response:
    """`POST /hooks/seaweedfs`: one SeaweedFS filer webhook event."""
    outcomes = await _read_outcomes(
        request, "seaweedfs", lambda body, scope: [parse_seaweedfs_webhook(body, scope)]
    )
    return await _relay(request, outcomes, "seaweedfs")


async def s3_hook(request: web.Request) -> web.Response:
    """`POST /hooks/s3`: an S3 event notification (AWS `Records`, MinIO webhook)."""
    outcomes = await _read_outcomes(request, "s3", parse_s3_event)
    return await _relay(request, outcomes, "s3")


def _iso(seconds: float | None) -> str | None:
    return datetime.fromtimestamp(seconds, UTC).isoformat() if seconds is not None else None


async def healthz(request: web.Request) -> web.Response:
    """Liveness, with what an operator wants to see: broker link and catch-up position."""
    app = request.app
    connection = app.get(AMQP)
    catch_up = app.get(CATCHUP)
    cursor = catch_up.cursor_ns if catch_up is not None else None
    forwarder = app.get(FORWARDER)
    sqs = app.get(SQS)
    body = {
        "status": "ok",
        "broker": "connected"
        if connection is not None and connection.connected.is_set()
        else "disconnected",
        "catch_up_cursor": _iso(cursor / SECOND_NS) if cursor is not None else None,
        "newest_event": _iso(forwarder.newest_published) if forwarder is not None else None,
        "sqs_last_receive": _iso(sqs.last_receive) if sqs is not None else None,
    }
    return web.json_response(body, dumps=lambda doc: orjson.dumps(doc).decode())


async def metrics_view(request: web.Request) -> web.Response:
    """Prometheus text exposition of the relay's registry."""
    response = web.Response(body=generate_latest(request.app[METRICS].registry))
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


def _broker(queues: Sequence[QueueSpec]) -> Callable[[web.Application], AsyncIterator[None]]:
    async def context(app: web.Application) -> AsyncIterator[None]:
        async with open_broker(app[SETTINGS], "relay", queues) as broker:
            app[AMQP] = broker.connection
            app[FORWARDER] = Forwarder(broker.publisher, app[METRICS])
            yield

    return context


def _catch_up(periodic: bool) -> Callable[[web.Application], AsyncIterator[None]]:
    async def context(app: web.Application) -> AsyncIterator[None]:
        catch_up = CatchUp(app[SETTINGS], app[FORWARDER], app[METRICS])
        app[CATCHUP] = catch_up
        task = (
            asyncio.create_task(catch_up.run_forever(), name="relay-catch-up") if periodic else None
        )

        def broker_back(_connection: object) -> None:
            # Webhooks answered 503 while it was away are lost (SeaweedFS never retries):
            # read them from the log now, not at the end of the interval.
            catch_up.wake()

        connection = app[AMQP]
        connection.reconnect_callbacks.add(broker_back)
        try:
            yield
        finally:
            connection.reconnect_callbacks.discard(broker_back)
            await cancel_and_wait(task)

    return context


async def _sqs(app: web.Application) -> AsyncIterator[None]:
    """Long-poll `sqs_queue_url` (AWS S3 notifications) for the app's lifetime."""
    settings = app[SETTINGS]
    async with sqs_client(settings) as client:
        intake = SqsIntake(settings, client, app[FORWARDER], app[METRICS], app[SCOPE])
        app[SQS] = intake
        task = asyncio.create_task(intake.run_forever(), name="relay-sqs")
        try:
            yield
        finally:
            # A receive under way is dropped: its messages come back after the
            # visibility timeout (their events are duplicates then, dropped by id).
            await cancel_and_wait(task)


def create_app(
    settings: Settings,
    *,
    queues: Sequence[QueueSpec] | None = None,
    periodic_catch_up: bool = True,
) -> web.Application:
    """Build the relay. The broker opens first and closes last; catch-up runs in between.

    `queues` is the topology declared at start (default: the pipeline's, `all_queues`).
    With `periodic_catch_up` off, catch-up runs only when `app[CATCHUP].run_once()`
    is called.
    """
    metrics = RelayMetrics()
    app = web.Application(
        client_max_size=MAX_BODY_BYTES,
        middlewares=[problem_middleware, webhook_auth_middleware],
    )
    app[SETTINGS] = settings
    app[SCOPE] = Scope.from_settings(settings)
    app[METRICS] = metrics
    app.cleanup_ctx.append(_broker(all_queues(settings) if queues is None else queues))
    app.cleanup_ctx.append(_catch_up(periodic_catch_up and settings.relay_catchup_enabled))
    if settings.sqs_queue_url:
        app.cleanup_ctx.append(_sqs)
    app.router.add_post("/hooks/seaweedfs", seaweedfs_hook)
    app.router.add_post("/hooks/s3", s3_hook)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_view)
    return app
