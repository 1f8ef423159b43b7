"""The transactional outbox: public events written with their change, relayed with confirms.

Writing: `NotificationOutbox.add` runs inside `store.transition`, in the transaction of
the status change; a create's event is written by the create's own statement
(`store.insert_upload` / `insert_admitted_upload`, from `NotificationOutbox.draft`). It stores the
change's `UploadEvent` once for the broker (`outbox`) and once per webhook endpoint
that subscribed to its type (`webhook_deliveries`, see `webhooks`), in one statement.
A change is therefore committed with its events or not at all: a crash after the
commit loses nothing, and a broker outage only delays the stream.

Relaying: `OutboxRelay` (a task of every gateway replica) claims rows with
`FOR UPDATE SKIP LOCKED`, publishes them to the `notifications_exchange` topic
exchange (routing key = event type) with publisher confirms, and deletes each row
only after its confirm, in the claiming transaction. It wakes on the NOTIFY that
every status change sends and on its own process's creates (`Listener.announce`), and
polls every `outbox_poll_seconds` besides (another replica's rows, should it end first).

Order: an upload's events are published in the order of their changes. Rows of one
upload get increasing ids in commit order (its changes are serialised by the row
lock); a pass publishes a row only if every older row of the same upload is in its
own claim (another replica's claim blocks it), and publishes its claim in waves: the
first pending event of each upload, then the second, … each wave written to the broker
in one write (`publish_all_confirmed`) and confirmed before the next starts, and the
pass stopped at the first failure. After a lost confirm, an
event may be published twice (same `message_id` = event id); never out of order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import aio_pika
import aio_pika.abc
import asyncpg
import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.gateway import webhooks
from services.gateway.notifications import event_id, event_type, upload_event
from services.gateway.store import DATABASE_ERRORS, DRAFT_SEQ, EventDraft, TimelineEntry, Upload
from shared.amqp.publisher import JsonProperties, Outgoing, PublishFailed, publish_all_confirmed
from shared.settings import Settings

if TYPE_CHECKING:
    from services.gateway.store import Conn

log = logging.getLogger(__name__)

APP_ID = "clearance-gateway"
# After a failed pass (broker or database trouble), wait this long before the next.
RETRY_SECONDS = (0.5, 1.0, 2.0, 5.0)


# A change's event for the broker and one delivery per subscribed endpoint ($6): one
# statement, one round trip (the CTE's insert runs whether or not its rows are read).
_ADD = """
WITH queued AS (
    INSERT INTO outbox (event_id, upload_id, routing_key, correlation_id, body)
    VALUES ($1, $2, $3, $4, $5) ON CONFLICT (event_id) DO NOTHING
)
INSERT INTO webhook_deliveries (endpoint, event_id, event_type, upload_id, body)
SELECT unnest($6::text[]), $1, $3, $2, $5
ON CONFLICT (endpoint, event_id) DO NOTHING
"""


class NotificationOutbox:
    """`store.Outbox`: a change's event for the broker and for each subscribed webhook."""

    def __init__(self, settings: Settings) -> None:
        self._endpoints = settings.webhooks

    def draft(self, upload: Upload, actor: str) -> EventDraft:
        """The create's event, for `store.insert_upload` to write in its statement.

        Every create writes one, so its JSON is written directly: the same bytes as
        `upload_event(...).model_dump_json()` (`tests/unit/test_event_drafts.py`), for
        a new upload (nothing detected, no thumbnails): ~8 µs here instead of ~18.
        """
        if upload.detected is not None or upload.thumbnails:
            raise ValueError("a draft is the event of a new upload")
        kind = event_type(upload.status)
        body = orjson.dumps(
            {
                "event_id": event_id(upload.id, DRAFT_SEQ),
                "type": kind,
                "occurred_at": upload.created_at,
                "upload_id": upload.id,
                "owner": upload.owner,
                "status": upload.status,
                "reason": upload.reason,
                "profile": upload.profile,
                "filename": upload.filename,
                "content_type": upload.content_type,
                "size": upload.size,
                "metadata": upload.metadata,
                "detected": None,
                "thumbnails": [],
                "timeline_entry": {
                    "seq": DRAFT_SEQ,
                    "status": upload.status,
                    "at": upload.created_at,
                    "actor": actor,
                    "detail": {},
                },
                "correlation_id": upload.correlation_id,
            },
            option=orjson.OPT_UTC_Z,
        )
        return EventDraft(
            routing_key=kind,
            body=body.decode(),
            subscribers=webhooks.subscribers(self._endpoints, kind),
        )

    async def add(self, conn: Conn, upload: Upload, entry: TimelineEntry) -> None:
        event = upload_event(upload, entry)
        await conn.execute(
            _ADD,
            event.event_id,
            upload.id,
            event.type,
            upload.correlation_id,
            event.model_dump_json(),
            webhooks.subscribers(self._endpoints, event.type),
        )


class OutboxMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.published = Counter(
            "clearance_outbox_published_total",
            "Public events the broker confirmed (and removed from the outbox)",
            registry=registry,
        )
        self.failures = Counter(
            "clearance_outbox_publish_failures_total",
            "Publishes the broker did not confirm (retried from the outbox)",
            registry=registry,
        )
        self.lag = Histogram(
            "clearance_outbox_lag_seconds",
            "From writing an event (the change's commit) to the broker's confirm",
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
        )
        self.backlog = Gauge(
            "clearance_outbox_backlog",
            "Events waiting in the outbox after the last relay pass",
            registry=registry,
        )


# The oldest unclaimed rows, less those whose upload has an older row claimed by
# another replica (which publishes that one first).
_CLAIM = """
WITH claimed AS (
    SELECT id FROM outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED
)
SELECT o.id, o.event_id, o.upload_id, o.routing_key, o.correlation_id, o.body, o.created_at
FROM outbox o JOIN claimed c ON c.id = o.id
WHERE NOT EXISTS (
    SELECT 1 FROM outbox older
    WHERE older.upload_id = o.upload_id AND older.id < o.id
      AND older.id NOT IN (SELECT id FROM claimed)
)
ORDER BY o.id
"""


def waves(rows: Sequence[asyncpg.Record]) -> list[list[asyncpg.Record]]:
    """Rows (in id order) → the first of each upload, then the second, and so on."""
    grouped: list[list[asyncpg.Record]] = []
    seen: dict[uuid.UUID, int] = {}
    for row in rows:
        n = seen.get(row["upload_id"], 0)
        seen[row["upload_id"]] = n + 1
        if n == len(grouped):
            grouped.append([])
        grouped[n].append(row)
    return grouped


def _outgoing(row: asyncpg.Record) -> Outgoing:
    return Outgoing(
        routing_key=row["routing_key"],
        body=row["body"].encode(),
        properties=JsonProperties(
            message_id=row["event_id"],
            correlation_id=row["correlation_id"],
            message_type=row["routing_key"],
            timestamp=row["created_at"],
            app_id=APP_ID,
            headers={"upload_id": str(row["upload_id"])},
        ),
    )


def linger_seconds(settings: Settings, published: int) -> float:
    """How long the relay waits after a wake-up, given what its last drain published.

    Each pass costs a claim, a broker write, a delete and a commit whatever it carries,
    about as much as publishing a dozen events. Under load (a drain of at least
    `outbox_busy_events`) waiting `outbox_busy_linger_seconds` lets one pass carry
    several times as many; a quiet relay keeps the short linger, so an event's latency
    grows only while events are plentiful.
    """
    if published >= settings.outbox_busy_events:
        return max(settings.outbox_linger_seconds, settings.outbox_busy_linger_seconds)
    return settings.outbox_linger_seconds


class OutboxRelay:
    """Drains the outbox to the notifications exchange; one per gateway replica."""

    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool[Any],
        connection: aio_pika.abc.AbstractRobustConnection,
        metrics: OutboxMetrics,
    ) -> None:
        self._settings = settings
        self._pool = pool
        self._connection = connection
        self._metrics = metrics
        self._channel: aio_pika.abc.AbstractChannel | None = None
        self._stopping = False

    async def open(self) -> None:
        """A confirming channel and the (durable, topic) notifications exchange."""
        channel = self._connection.channel(publisher_confirms=True)
        await channel
        await channel.declare_exchange(
            self._settings.notifications_exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        self._channel = channel

    async def close(self) -> None:
        if self._channel is not None and not self._channel.is_closed:
            await self._channel.close()

    def stop(self) -> None:
        """Finish the pass under way, then stop."""
        self._stopping = True

    async def run(self, wake: asyncio.Event) -> None:
        """Drain on every wake-up and poll; back off while the broker or database fails."""
        failures = 0
        while not self._stopping:
            wake.clear()
            try:
                published = await self.drain()
            except Exception as exc:
                # The relay must outlive any failure: the broker or the database being
                # away (expected, a warning) or a bug (logged with its trace).
                expected = isinstance(exc, (PublishFailed, *DATABASE_ERRORS))
                self._metrics.failures.inc()
                delay = RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)]
                failures += 1
                log.log(
                    logging.WARNING if expected else logging.ERROR,
                    "outbox relay pass failed (%s: %s); again in %.1f s",
                    type(exc).__name__,
                    exc,
                    delay,
                    exc_info=not expected,
                )
                await asyncio.sleep(delay)
                continue
            failures = 0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self._settings.outbox_poll_seconds)
            # Let the changes committed right after this one join its pass: under load,
            # one claim, one delete and one commit serve many events, not one each.
            linger = linger_seconds(self._settings, published)
            if linger and not self._stopping:
                await asyncio.sleep(linger)

    async def drain(self) -> int:
        """Publish until the outbox holds nothing this replica may publish; how many."""
        total = 0
        drained = False
        try:
            while not self._stopping:
                if not self._connection.connected.is_set():
                    raise PublishFailed("not connected to the broker")
                published, claimed = await self.pass_once()
                total += published
                if claimed < self._settings.outbox_batch_size or published == 0:
                    # Everything claimable went out: nothing is waiting for this replica.
                    drained = published == claimed
                    break
        finally:
            if drained:
                self._metrics.backlog.set(0)
            else:  # a partial pass (a failure, another replica's claims): count them
                with contextlib.suppress(*DATABASE_ERRORS):
                    backlog = await self._pool.fetchval("SELECT count(*) FROM outbox")
                    self._metrics.backlog.set(backlog)
        return total

    async def pass_once(self) -> tuple[int, int]:
        """One claim, published wave by wave; returns (published, claimed)."""
        assert self._channel is not None, "open() first"
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(_CLAIM, self._settings.outbox_batch_size)
            confirmed: list[int] = []
            failure: PublishFailed | None = None
            for wave in waves(rows):
                results = await publish_all_confirmed(
                    self._channel,
                    self._settings.notifications_exchange,
                    [_outgoing(row) for row in wave],
                    timeout=self._settings.outbox_publish_timeout_seconds,
                    mandatory=False,  # an application may listen through webhooks only
                )
                for row, result in zip(wave, results, strict=True):
                    if result is None:
                        confirmed.append(row["id"])
                    else:
                        failure = result
                if failure is not None:
                    break
            if confirmed:
                await conn.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])", confirmed)
        if confirmed:
            now = datetime.now(UTC)
            sent = {row["id"]: row for row in rows}
            for row_id in confirmed:
                self._metrics.lag.observe((now - sent[row_id]["created_at"]).total_seconds())
            self._metrics.published.inc(len(confirmed))
        if failure is not None:
            raise failure
        return len(confirmed), len(rows)
