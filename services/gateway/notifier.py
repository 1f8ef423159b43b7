"""The gateway's announcers: the outbox relay and the webhook dispatcher, as app contexts.

Both run in every gateway replica (the gateway is the only database writer, and one
fewer process kind to deploy); `FOR UPDATE SKIP LOCKED` claims keep replicas from
publishing or POSTing one row twice at once. Both wake on the NOTIFY every status
change sends (`live.Listener`), on this process's own creates (which NOTIFY nobody:
`Listener.announce`) and poll besides, and both finish the work under way
on shutdown before the connections they use close.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from services.gateway.appkeys import LISTENER, METRICS, POOL, SETTINGS
from services.gateway.outbox import OutboxMetrics, OutboxRelay
from services.gateway.webhooks import WebhookDispatcher, WebhookMetrics
from shared.amqp.topology import connect
from shared.tasks import cancel_and_wait

log = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 10.0


async def _stop(task: asyncio.Task[None], wake: asyncio.Event, grace: float) -> None:
    wake.set()
    try:
        await asyncio.wait_for(asyncio.shield(task), grace)
    except TimeoutError:
        log.warning("%s still busy after %.0f s; cancelling", task.get_name(), grace)
        await cancel_and_wait(task)


async def outbox_relay_context(app: web.Application) -> AsyncIterator[None]:
    """The relay's own broker link (`notifications_amqp_url`) and task, for the app's life."""
    settings = app[SETTINGS]
    connection = await connect(
        settings, name="clearance-gateway-outbox", url=settings.notifications_amqp_url
    )
    try:
        relay = OutboxRelay(settings, app[POOL], connection, OutboxMetrics(app[METRICS].registry))
        await relay.open()
        with app[LISTENER].subscribe_all() as wake:
            task = asyncio.create_task(relay.run(wake), name="outbox-relay")
            try:
                yield
            finally:
                relay.stop()
                # A pass under way finishes (its confirmed rows are deleted); the rest
                # stays in the outbox for the next start or another replica.
                await _stop(task, wake, STOP_GRACE_SECONDS)
        await relay.close()
    finally:
        await connection.close()


async def webhooks_context(app: web.Application) -> AsyncIterator[None]:
    """The webhook dispatcher, when endpoints are configured."""
    settings = app[SETTINGS]
    if not settings.webhooks:
        yield
        return
    connector = aiohttp.TCPConnector(limit=settings.webhook_concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        dispatcher = WebhookDispatcher(
            settings, app[POOL], session, WebhookMetrics(app[METRICS].registry)
        )
        with app[LISTENER].subscribe_all() as wake:
            task = asyncio.create_task(dispatcher.run(wake), name="webhook-dispatcher")
            try:
                yield
            finally:
                dispatcher.stop()
                await _stop(task, wake, settings.webhook_timeout_seconds + STOP_GRACE_SECONDS)
