"""The runtime both pipeline workers share: broker, storage, work ledger, one consumer,
metrics, SIGTERM.

A worker is a handler factory: given the open resources it returns the handler
and the dead-letter callback. This module owns their lifetimes: everything is
opened before consuming starts and closed after in-flight messages drained.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from shared.amqp.broker import open_broker
from shared.amqp.consumer import Consumer, Handler, OnDeadLetter, Reject, run_until_signalled
from shared.amqp.publisher import Publisher
from shared.amqp.topology import QueueSpec
from shared.events import UploadFailed, failed_id
from shared.keys import upload_id_from_key
from shared.ledger import WorkLedger, open_ledger
from shared.pipeline import all_queues
from shared.s3 import s3_client
from shared.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerResources:
    settings: Settings
    s3: Any  # aiobotocore S3 client
    publisher: Publisher
    ledger: WorkLedger


HandlerFactory = Callable[[WorkerResources], Awaitable[tuple[Handler, OnDeadLetter]]]


def failure_reporter(publisher: Publisher, stage: str) -> OnDeadLetter:
    """A dead-letter callback that marks the upload `failed` with the reason."""

    async def report(event: Any, reason: str) -> None:
        if event is None:
            return  # malformed: no upload to tell
        await publisher.publish(
            UploadFailed(
                event_id=failed_id(event.upload_id, stage),
                upload_id=event.upload_id,
                correlation_id=event.correlation_id,
                reason=f"{stage} failed after retries: {reason}"[:1000],
                stage=stage,
                producer=stage,
            )
        )

    return report


def ensure_upload_object(settings: Settings, bucket: str, key: str, upload_id: uuid.UUID) -> None:
    """Workers touch only upload objects: anything else is a poison message."""
    if bucket != settings.bucket or upload_id_from_key(settings.upload_prefix, key) != upload_id:
        raise Reject(f"{bucket}/{key} is not the object of upload {upload_id}")


@asynccontextmanager
async def worker_resources(
    settings: Settings, name: str
) -> AsyncIterator[tuple[Any, WorkerResources]]:
    """Broker connection (topology declared), confirming publisher, S3 client, work ledger."""
    async with (
        open_broker(settings, name, all_queues(settings)) as broker,
        s3_client(settings) as s3,
        open_ledger(settings) as ledger,
    ):
        yield broker.connection, WorkerResources(settings, s3, broker.publisher, ledger)


async def serve(
    settings: Settings,
    name: str,
    queue: Callable[[Settings], QueueSpec],
    factory: HandlerFactory,
    *,
    metrics_port: int | None,
) -> None:
    """Consume `queue` with the factory's handler until SIGTERM/SIGINT, then drain."""
    async with (
        worker_resources(settings, name) as (connection, resources),
        health_server(connection, settings.gateway_host, metrics_port),
    ):
        handler, on_dead_letter = await factory(resources)
        consumer = Consumer(
            connection, settings, queue(settings), handler, on_dead_letter=on_dead_letter
        )
        log.info("%s consuming %s", name, consumer.queue_name)
        await run_until_signalled([consumer], drain_timeout=settings.drain_timeout_seconds)
    log.info("%s stopped", name)


@asynccontextmanager
async def health_server(connection: Any, host: str, port: int | None) -> AsyncIterator[None]:
    """`/metrics` (Prometheus) and `/healthz` on `port` while the block runs; none if no port.

    `/healthz` answers 200 while the broker connection is up and 503 while it is
    down (the robust connection reconnects by itself), so an orchestrator's health
    check sees a worker that cannot consume.
    """
    if not port:
        yield
        return

    async def healthz(request: web.Request) -> web.Response:
        up = connection.connected.is_set() and not connection.is_closed
        return web.json_response(
            {
                "status": "ok" if up else "unavailable",
                "broker": "connected" if up else "disconnected",
            },
            status=200 if up else 503,
        )

    async def metrics(request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(REGISTRY))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        yield
    finally:
        await runner.cleanup()
