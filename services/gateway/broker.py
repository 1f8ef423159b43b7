"""The gateway's broker side: a confirming publisher (for `complete` and the
reconciler) and the status recorder consuming every pipeline event.

One recorder consumes at a time, however many gateway replicas run: each replica's
recorder waits for a PostgreSQL advisory lock named after the recorder queue (held
on a connection of its own) and consumes only while it holds it. Two recorders
would each take some of one upload's events and could apply them out of order (a
timeline skipping `uploaded`); the one that holds the lock applies them in queue
order. When the holder ends, however it ends, its connection closes, the lock is
free, and another replica's recorder takes over within `LEADER_POLL_SECONDS`; the
messages the old one had not acknowledged come back to the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import asyncpg
from aiohttp import web

from services.gateway.appkeys import AMQP, METRICS, PUBLISHER, SETTINGS, UPLOADS
from services.gateway.recorder import StatusRecorder
from shared.amqp.broker import open_broker
from shared.amqp.consumer import Consumer
from shared.amqp.metrics import ConsumerMetrics
from shared.db import connect_watched
from shared.pipeline import all_queues, recorder_queue
from shared.tasks import cancel_and_wait

log = logging.getLogger(__name__)

DRAIN_SECONDS = 10.0
# Events the recorder applies at once (of different uploads; one upload's in order).
RECORDER_PREFETCH = 32
# How often a recorder that is not the one consuming asks for the lock again.
LEADER_POLL_SECONDS = 1.0


async def broker_context(app: web.Application) -> AsyncIterator[None]:
    """The broker link and its confirming publisher, for the app's lifetime."""
    settings = app[SETTINGS]
    async with open_broker(settings, "gateway", all_queues(settings)) as broker:
        app[AMQP] = broker.connection
        app[PUBLISHER] = broker.publisher
        yield


async def recorder_context(app: web.Application) -> AsyncIterator[None]:
    """This replica's recorder: consuming whenever it holds the recorder's lock; on
    shutdown it stops consuming and lets in-flight moves commit."""
    # Once per app: each term of consuming gets a new consumer, the same counters.
    metrics = ConsumerMetrics(app[METRICS].registry)
    task = asyncio.create_task(_lead(app, metrics), name="recorder-leader")
    try:
        yield
    finally:
        await cancel_and_wait(task)


async def _lead(app: web.Application, metrics: ConsumerMetrics) -> None:
    """Wait for the lock, consume while holding it; again after losing it."""
    settings = app[SETTINGS]
    spec = recorder_queue(settings)
    while True:
        try:
            conn, lost = await connect_watched(settings.database_url)
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            log.warning("recorder: no database connection for its lock (%s); retrying", exc)
            await asyncio.sleep(LEADER_POLL_SECONDS)
            continue
        try:
            while not await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", spec.name):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), LEADER_POLL_SECONDS)
                if lost.is_set():
                    break
            else:
                await _consume_until(app, metrics, lost)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("recorder: its lock connection failed (%s); retrying", exc)
        except Exception:
            # Never a silent end of recording: log it and try again.
            log.exception("recorder: failed; retrying")
            await asyncio.sleep(LEADER_POLL_SECONDS)
        finally:
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)
        await asyncio.sleep(LEADER_POLL_SECONDS / 4)


async def _consume_until(
    app: web.Application, metrics: ConsumerMetrics, lost: asyncio.Event
) -> None:
    """Consume the recorder queue until the lock's connection is lost (or shutdown)."""
    settings = app[SETTINGS]
    recorder = Consumer(
        app[AMQP],
        settings,
        recorder_queue(settings),
        StatusRecorder(app[UPLOADS]),
        metrics=metrics,
        # Several uploads at once; one upload's events one at a time, in queue order
        # (the recorder's `InOrder`): timelines never skip a stage. With prefetch 1 a
        # burst of uploads queued behind one serial writer (seconds per upload).
        prefetch=RECORDER_PREFETCH,
    )
    await recorder.start()
    log.info("recorder: consuming (this replica holds the recorder's lock)")
    try:
        await lost.wait()
        log.warning("recorder: lost its lock's connection; stopping until it has the lock again")
    finally:
        # Shielded: a shutdown still lets the moves under way commit.
        await asyncio.shield(recorder.drain(DRAIN_SECONDS))
