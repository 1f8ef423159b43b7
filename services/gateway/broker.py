"""The gateway's broker side: a confirming publisher (for `complete` and the
reconciler) and the status recorder consuming every pipeline event."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from services.gateway.appkeys import AMQP, METRICS, PUBLISHER, SETTINGS, UPLOADS
from services.gateway.recorder import StatusRecorder
from shared.amqp.broker import open_broker
from shared.amqp.consumer import Consumer
from shared.amqp.metrics import ConsumerMetrics
from shared.pipeline import all_queues, recorder_queue

DRAIN_SECONDS = 10.0
# Events the recorder applies at once (of different uploads; one upload's in order).
RECORDER_PREFETCH = 32


async def broker_context(app: web.Application) -> AsyncIterator[None]:
    """The broker link and its confirming publisher, for the app's lifetime."""
    settings = app[SETTINGS]
    async with open_broker(settings, "gateway", all_queues(settings)) as broker:
        app[AMQP] = broker.connection
        app[PUBLISHER] = broker.publisher
        yield


async def recorder_context(app: web.Application) -> AsyncIterator[None]:
    """Consume the recorder queue; on shutdown stop consuming and let in-flight moves commit."""
    settings = app[SETTINGS]
    recorder = Consumer(
        app[AMQP],
        settings,
        recorder_queue(settings),
        StatusRecorder(app[UPLOADS]),
        metrics=ConsumerMetrics(app[METRICS].registry),
        # Several uploads at once; one upload's events one at a time, in queue order
        # (the recorder's `InOrder`): timelines never skip a stage. With prefetch 1 a
        # burst of uploads queued behind one serial writer (seconds per upload).
        prefetch=RECORDER_PREFETCH,
    )
    await recorder.start()
    try:
        yield
    finally:
        await recorder.drain(DRAIN_SECONDS)
