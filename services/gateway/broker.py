"""The gateway's broker side: a confirming publisher (for `complete` and the
reconciler) and the status recorder consuming every pipeline event."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from services.gateway.appkeys import AMQP, METRICS, POOL, PUBLISHER, SETTINGS
from services.gateway.recorder import StatusRecorder
from shared.amqp.consumer import Consumer
from shared.amqp.metrics import ConsumerMetrics
from shared.amqp.publisher import Publisher
from shared.amqp.topology import connect, declare_topology
from shared.pipeline import all_queues, recorder_queue

DRAIN_SECONDS = 10.0


async def broker_context(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    connection = await connect(settings, name="clearance-gateway")
    try:
        channel = await connection.channel()
        await declare_topology(channel, settings, all_queues(settings))
        await channel.close()
        publisher = await Publisher.open(connection, settings)
        app[AMQP] = connection
        app[PUBLISHER] = publisher
        recorder = Consumer(
            connection,
            settings,
            recorder_queue(settings),
            StatusRecorder(app[POOL], app[METRICS]),
            metrics=ConsumerMetrics(app[METRICS].registry),
            # One at a time, in queue order: `object.created` is recorded before the
            # scanner's `scan.started` that follows it, so timelines never skip a stage.
            prefetch=1,
        )
        await recorder.start()
        try:
            yield
        finally:
            # Stop consuming and let in-flight transitions commit before closing.
            await recorder.drain(DRAIN_SECONDS)
            await publisher.close()
    finally:
        await connection.close()
