"""Webhooks: every public event POSTed to each subscribed endpoint, signed, at least once.

Scheduling is rows in PostgreSQL, not sleeps: `schedule` writes one
`webhook_deliveries` row per subscribed endpoint in the transaction of the change
(via the outbox), and the dispatcher (a task of every gateway replica) claims due rows
with `FOR UPDATE SKIP LOCKED` under a lease, so replicas never send one row at the
same time. A failed attempt (no 2xx within `webhook_timeout_seconds`, a refused
connection, a redirect) sets `next_attempt_at` from `webhook_retry_schedule_seconds`
(± `webhook_retry_jitter`); after the last attempt the row is `dead`, and
`clearance webhooks replay ID` sends it again. Every attempt is logged in
`webhook_attempts` (status code, latency, error).

Order: per endpoint and upload, a row is attempted only once every older row of the
same upload is no longer pending (delivered or dead), so a receiver that was down for
a while gets the events afterwards in the order of the changes. A replayed row is
the exception: it goes out when replayed.

Signing follows Standard Webhooks (the `standardwebhooks` package): `webhook-id` is
the event id (the same on every attempt, so receivers drop duplicates),
`webhook-timestamp` the attempt's time, `webhook-signature` `v1,<base64 HMAC-SHA256 of
"id.timestamp.body">`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from math import floor
from typing import TYPE_CHECKING, Any

import aiohttp
import asyncpg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from standardwebhooks import Webhook

from services.gateway.notifications import UploadEvent
from services.gateway.store import DATABASE_ERRORS, NOTIFY_CHANNEL
from shared.settings import Settings, WebhookEndpoint

if TYPE_CHECKING:
    from services.gateway.store import Conn, Queryable

log = logging.getLogger(__name__)

USER_AGENT = "Clearance-Webhooks/1"
# A claim outlives the attempt it covers by this much; a replica that dies mid-attempt
# leaves the row to the others once it expires.
LEASE_MARGIN_SECONDS = 30.0
MAX_ERROR_TEXT = 300
PRUNE_EVERY_SECONDS = 600.0
CLAIM_RETRY_SECONDS = 1.0
# Never spin: the shortest wait between two claims when nothing woke the dispatcher.
MIN_WAIT_SECONDS = 0.02
REPLAY_NOTIFY = "webhooks:replay"


def subscribers(endpoints: Iterable[WebhookEndpoint], event_type: str) -> list[str]:
    """The names of the endpoints that subscribed to `event_type`."""
    return [e.name for e in endpoints if e.wants(event_type)]


async def schedule(
    conn: Conn, endpoints: Iterable[WebhookEndpoint], event: UploadEvent, body: str
) -> None:
    """One delivery per endpoint that subscribed to the event's type (in the change's txn)."""
    names = subscribers(endpoints, event.type)
    if not names:
        return
    await conn.execute(
        "INSERT INTO webhook_deliveries (endpoint, event_id, event_type, upload_id, body)"
        " SELECT unnest($1::text[]), $2, $3, $4, $5"
        " ON CONFLICT (endpoint, event_id) DO NOTHING",
        names,
        event.event_id,
        event.type,
        event.upload_id,
        body,
    )


def retry_delay(
    settings: Settings, attempts: int, rng: random.Random | None = None
) -> float | None:
    """Seconds until the next attempt after `attempts` failed ones; None: that was the last."""
    delays = settings.webhook_retry_schedule_seconds
    if attempts > len(delays):
        return None
    jitter = settings.webhook_retry_jitter
    spread = (rng or random).uniform(-jitter, jitter) if jitter else 0.0
    return float(delays[attempts - 1] * (1 + spread))


def signed_headers(signer: Webhook, event_id: str, body: str, at: datetime) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt."""
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": event_id,
        "webhook-timestamp": str(floor(at.timestamp())),
        "webhook-signature": signer.sign(msg_id=event_id, timestamp=at, data=body),
    }


class WebhookMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.attempts = Counter(
            "clearance_webhook_attempts_total",
            "Delivery attempts by endpoint and result (ok, http_error, network_error, timeout)",
            ["endpoint", "result"],
            registry=registry,
        )
        self.attempt_seconds = Histogram(
            "clearance_webhook_attempt_seconds",
            "Time from sending a webhook to its answer (or failure)",
            ["endpoint"],
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.delivered = Counter(
            "clearance_webhook_delivered_total",
            "Events a receiver accepted (2xx)",
            ["endpoint"],
            registry=registry,
        )
        self.dead = Counter(
            "clearance_webhook_dead_total",
            "Events given up after the last attempt (replayable)",
            ["endpoint"],
            registry=registry,
        )
        self.lag = Histogram(
            "clearance_webhook_delivery_lag_seconds",
            "From the change's commit to the receiver's 2xx",
            ["endpoint"],
            registry=registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 60, 600, 3600, 36000),
        )
        self.in_flight = Gauge(
            "clearance_webhook_in_flight",
            "Attempts under way in this replica",
            registry=registry,
        )


@dataclass(frozen=True, slots=True)
class Claimed:
    id: int
    endpoint: str
    event_id: str
    upload_id: uuid.UUID
    body: str
    attempts: int
    lease: uuid.UUID
    created_at: datetime


_HEAD = """
NOT EXISTS (
    SELECT 1 FROM webhook_deliveries older
    WHERE older.state = 'pending' AND older.endpoint = d.endpoint
      AND older.upload_id = d.upload_id AND older.id < d.id
)
"""

_CLAIM = f"""
WITH due AS (
    SELECT d.id FROM webhook_deliveries d
    WHERE d.state = 'pending' AND d.endpoint = ANY($1::text[])
      AND d.next_attempt_at <= now()
      AND (d.locked_until IS NULL OR d.locked_until < now())
      AND {_HEAD}
    ORDER BY d.next_attempt_at, d.id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE webhook_deliveries w
SET lease = gen_random_uuid(), locked_until = now() + make_interval(secs => $3)
FROM due WHERE w.id = due.id
RETURNING w.id, w.endpoint, w.event_id, w.upload_id, w.body, w.attempts, w.lease, w.created_at
"""  # noqa: S608 - constant fragments

_NEXT_DUE = f"""
SELECT extract(epoch FROM min(greatest(d.next_attempt_at, coalesce(d.locked_until,
       d.next_attempt_at))) - now())
FROM webhook_deliveries d
WHERE d.state = 'pending' AND d.endpoint = ANY($1::text[]) AND {_HEAD}
"""  # noqa: S608 - constant fragments


class WebhookDispatcher:
    """Claims due deliveries and attempts them, at most `webhook_concurrency` at once."""

    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool[Any],
        session: aiohttp.ClientSession,
        metrics: WebhookMetrics,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self._settings = settings
        self._pool = pool
        self._session = session
        self._metrics = metrics
        self._rng = rng or random.Random()  # jitter, not secrets
        self._endpoints = {e.name: e for e in settings.webhooks}
        self._signers = {e.name: Webhook(e.secret.get_secret_value()) for e in settings.webhooks}
        self._names = list(self._endpoints)
        self._in_flight: dict[asyncio.Task[None], uuid.UUID] = {}
        self._finished = asyncio.Event()
        self._stopping = False
        self._pruned_at = 0.0

    @property
    def lease_seconds(self) -> float:
        return self._settings.webhook_timeout_seconds + LEASE_MARGIN_SECONDS

    def stop(self) -> None:
        """Claim nothing more; `run` returns once the attempts under way ended."""
        self._stopping = True
        self._finished.set()

    async def run(self, wake: asyncio.Event) -> None:
        """Claim and attempt until stopped; `wake` is set when deliveries may be due."""
        while not self._stopping:
            wake.clear()
            self._finished.clear()
            free = self._settings.webhook_concurrency - len(self._in_flight)
            wait: float | None = None  # None: until an attempt finishes
            if free > 0:
                try:
                    await self._prune()
                    claimed = await self.claim(free)
                    for delivery in claimed:
                        self._start(delivery)
                    if len(claimed) == free:
                        continue  # maybe more are due
                    wait = await self._next_due()
                except Exception as exc:
                    # The dispatcher must outlive any failure: the database being away
                    # (expected, a warning) or a bug (logged with its trace).
                    expected = isinstance(exc, DATABASE_ERRORS)
                    log.log(
                        logging.WARNING if expected else logging.ERROR,
                        "webhook claim failed (%s: %s); retrying",
                        type(exc).__name__,
                        exc,
                        exc_info=not expected,
                    )
                    wait = CLAIM_RETRY_SECONDS
            await _first_of((wake, self._finished), wait)
        await self._finish()

    async def claim(self, limit: int) -> list[Claimed]:
        rows = await self._pool.fetch(_CLAIM, self._names, limit, self.lease_seconds)
        return [Claimed(**dict(r)) for r in rows]

    async def _next_due(self) -> float:
        """Seconds until a delivery may be due (bounded by the poll interval)."""
        poll = self._settings.webhook_poll_seconds
        due = await self._pool.fetchval(_NEXT_DUE, self._names)
        if due is None:
            return poll
        return min(max(float(due), MIN_WAIT_SECONDS), poll)

    def _start(self, delivery: Claimed) -> None:
        task = asyncio.create_task(self.attempt(delivery), name=f"webhook-{delivery.id}")
        self._in_flight[task] = delivery.lease
        self._metrics.in_flight.set(len(self._in_flight))
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.pop(task, None)
        self._metrics.in_flight.set(len(self._in_flight))
        self._finished.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("webhook attempt crashed", exc_info=task.exception())

    async def attempt(self, delivery: Claimed) -> None:
        """POST one delivery and record the outcome (the row's next state and the log)."""
        endpoint = self._endpoints[delivery.endpoint]
        started = datetime.now(UTC)
        headers = signed_headers(
            self._signers[endpoint.name], delivery.event_id, delivery.body, started
        )
        timeout = self._settings.webhook_timeout_seconds
        status: int | None = None
        error: str | None = None
        result = "ok"
        clock = time.perf_counter()
        try:
            async with self._session.post(
                str(endpoint.url),
                data=delivery.body.encode(),
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                status = response.status
                if not 200 <= status < 300:
                    result = "http_error"
                    text = (await response.content.read(MAX_ERROR_TEXT)).decode(errors="replace")
                    error = f"HTTP {status}: {text.strip() or response.reason or ''}".strip()
        except TimeoutError:
            result, error = "timeout", f"no answer within {timeout:g} s"
        except aiohttp.ClientError as exc:
            result, error = "network_error", f"{type(exc).__name__}: {exc}"
        latency = time.perf_counter() - clock
        self._metrics.attempts.labels(endpoint.name, result).inc()
        self._metrics.attempt_seconds.labels(endpoint.name).observe(latency)
        await self._record(delivery, started, latency, status, error)

    async def _record(
        self,
        delivery: Claimed,
        started: datetime,
        latency: float,
        status: int | None,
        error: str | None,
    ) -> None:
        attempt = delivery.attempts + 1
        name = delivery.endpoint
        if error is None:
            state, delay = "delivered", None
        else:
            delay = retry_delay(self._settings, attempt, self._rng)
            state = "dead" if delay is None else "pending"
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO webhook_attempts"
                " (delivery_id, attempt, started_at, latency_ms, status_code, error)"
                " VALUES ($1, $2, $3, $4, $5, $6)",
                delivery.id,
                attempt,
                started,
                latency * 1000,
                status,
                error[:MAX_ERROR_TEXT] if error else None,
            )
            owned = await conn.fetchval(
                "UPDATE webhook_deliveries SET state = $3, attempts = $4, last_status = $5,"
                " last_error = $6, lease = NULL, locked_until = NULL,"
                " next_attempt_at = CASE WHEN $7::float8 IS NULL THEN next_attempt_at"
                "   ELSE clock_timestamp() + make_interval(secs => $7::float8) END,"
                " delivered_at = CASE WHEN $3 = 'delivered' THEN clock_timestamp() END,"
                " dead_at = CASE WHEN $3 = 'dead' THEN clock_timestamp() END"
                " WHERE id = $1 AND lease = $2 RETURNING id",
                delivery.id,
                delivery.lease,
                state,
                attempt,
                status,
                error[:MAX_ERROR_TEXT] if error else None,
                delay,
            )
        if owned is None:  # the lease ran out and another replica took the row over
            log.warning("webhook delivery %d: lease lost during attempt %d", delivery.id, attempt)
            return
        if state == "delivered":
            self._metrics.delivered.labels(name).inc()
            lag = (datetime.now(UTC) - delivery.created_at).total_seconds()
            self._metrics.lag.labels(name).observe(lag)
        elif state == "dead":
            self._metrics.dead.labels(name).inc()
            log.warning(
                "webhook %s to %s dead after %d attempts: %s",
                delivery.event_id,
                name,
                attempt,
                error,
                extra={"upload_id": str(delivery.upload_id)},
            )
        else:
            log.info(
                "webhook %s to %s failed (attempt %d, again in %.1f s): %s",
                delivery.event_id,
                name,
                attempt,
                delay or 0.0,
                error,
                extra={"upload_id": str(delivery.upload_id)},
            )

    async def _prune(self) -> None:
        """Delivered and dead rows older than the retention go (with their attempt log)."""
        now = time.monotonic()
        if now - self._pruned_at < PRUNE_EVERY_SECONDS:
            return
        self._pruned_at = now
        await self._pool.execute(
            "DELETE FROM webhook_deliveries WHERE state <> 'pending'"
            " AND coalesce(delivered_at, dead_at) < now() - make_interval(days => $1::int)",
            max(1, round(self._settings.webhook_retention_days)),
        )

    async def _finish(self) -> None:
        """Let attempts under way end (within their timeout), then give back the rest."""
        if self._in_flight:
            await asyncio.wait(
                list(self._in_flight), timeout=self._settings.webhook_timeout_seconds + 1
            )
        leases = list(self._in_flight.values())
        for task in list(self._in_flight):
            task.cancel()
        if leases:
            await self._pool.execute(
                "UPDATE webhook_deliveries SET lease = NULL, locked_until = NULL"
                " WHERE lease = ANY($1::uuid[])",
                leases,
            )


async def _first_of(events: Sequence[asyncio.Event], timeout: float | None) -> None:  # noqa: ASYNC109
    """Wait until one of `events` is set, or `timeout` seconds (None: no limit)."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*waiters, return_exceptions=True)


# -- the delivery log, for the operator (`clearance webhooks …`) --------------------------


async def deliveries(
    conn: Queryable,
    *,
    state: str | None = None,
    upload_id: uuid.UUID | None = None,
    delivery_id: int | None = None,
    limit: int = 50,
) -> list[asyncpg.Record]:
    """The newest deliveries (of one state, upload or id if given), with the last latency."""
    return await conn.fetch(
        "SELECT d.id, d.endpoint, d.event_id, d.event_type, d.upload_id, d.state, d.attempts,"
        " d.last_status, d.last_error, d.next_attempt_at, d.created_at, d.delivered_at,"
        " d.dead_at, d.replayed_at, a.latency_ms"
        " FROM webhook_deliveries d LEFT JOIN LATERAL ("
        "   SELECT latency_ms FROM webhook_attempts WHERE delivery_id = d.id"
        "   ORDER BY id DESC LIMIT 1) a ON true"
        " WHERE ($1::text IS NULL OR d.state = $1) AND ($2::uuid IS NULL OR d.upload_id = $2)"
        " AND ($3::bigint IS NULL OR d.id = $3)"
        " ORDER BY d.id DESC LIMIT $4",
        state,
        upload_id,
        delivery_id,
        limit,
    )


async def attempts(conn: Queryable, delivery_id: int) -> list[asyncpg.Record]:
    """Every attempt of one delivery, oldest first."""
    return await conn.fetch(
        "SELECT attempt, started_at, latency_ms, status_code, error FROM webhook_attempts"
        " WHERE delivery_id = $1 ORDER BY id",
        delivery_id,
    )


class DeliveryBusy(Exception):
    """The delivery is being attempted right now; replay it once that attempt ended."""


async def replay(conn: Conn, delivery_id: int) -> asyncpg.Record | None:
    """Send a delivery again now, with a fresh retry schedule; None if there is no such one.

    A dead (or delivered) delivery goes out when replayed, whatever came after it for
    the same upload; a pending one just becomes due now. One under way raises
    `DeliveryBusy`.
    """
    async with conn.transaction():
        busy = await conn.fetchval(
            "SELECT lease IS NOT NULL AND locked_until > now() FROM webhook_deliveries"
            " WHERE id = $1 FOR UPDATE",
            delivery_id,
        )
        if busy is None:
            return None
        if busy:
            raise DeliveryBusy(f"delivery {delivery_id} is being attempted right now")
        row = await conn.fetchrow(
            "UPDATE webhook_deliveries SET state = 'pending', attempts = 0,"
            " next_attempt_at = now(), replayed_at = now(), dead_at = NULL,"
            " delivered_at = NULL, lease = NULL, locked_until = NULL"
            " WHERE id = $1 RETURNING id, endpoint, event_id, event_type, upload_id",
            delivery_id,
        )
        await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, REPLAY_NOTIFY)
    return row
