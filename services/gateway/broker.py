"""The gateway's broker side: a confirming publisher (for `complete` and the reconciler)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from services.gateway.appkeys import AMQP, PUBLISHER, SETTINGS
from shared.amqp.publisher import Publisher
from shared.amqp.topology import connect, declare_topology
from shared.pipeline import QUEUES

log = logging.getLogger(__name__)


async def broker_context(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    connection = await connect(settings)
    try:
        channel = await connection.channel()
        await declare_topology(channel, settings, QUEUES)
        await channel.close()
        publisher = await Publisher.open(connection, settings)
        app[AMQP] = connection
        app[PUBLISHER] = publisher
        try:
            yield
        finally:
            await publisher.close()
    finally:
        await connection.close()
