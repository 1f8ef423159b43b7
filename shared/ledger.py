"""The work ledger: each object version is scanned once and processed once (DESIGN §6).

Events arrive more than once by design: the relay and the gateway's `complete` both
report a landing, the reconciler re-sends stalled work, the broker redelivers what a
lost connection or a crashed worker never acknowledged. The scanner and the processor
therefore record, per stage and object version (bucket, key, ETag), in the
`work_claims` table, who is doing the work and what came of it:

* **claim** — one statement, `INSERT … ON CONFLICT DO UPDATE … WHERE the lease
  expired`, so of two workers receiving the same event at once exactly one gets the
  claim (no check-then-act). The holder renews its lease every third of
  `work_lease_seconds` while it works.
* **done** — the events the work produced are recorded before they are published;
  a duplicate delivery republishes them and does no work (`Outcome.duplicate`).
* **held** — another live holder is at it: the duplicate waits until the result is
  recorded (then republishes it) or the lease runs out (then takes the claim over:
  that holder crashed, and its work is done again).

A run that fails releases its claim at once, so the consumer's retry can claim it.
Finished rows are kept for `work_retention_days` (a duplicate arriving later than that
does the work again; its upload reached its final state long before) and then pruned
by whichever worker gets there first, in bounded batches.
Lease times are the database's clock, never a worker's. Transient database errors
(a terminated connection, a restart) are retried here a few times with the same
claim id, so a statement whose reply was lost is not counted twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
from prometheus_client import REGISTRY, CollectorRegistry, Counter

from shared.amqp.consumer import Retry
from shared.db import create_pool
from shared.events import EVENT_ADAPTER, AnyEvent, Event
from shared.settings import Settings

log = logging.getLogger(__name__)

# How long a duplicate waits for a live holder before it gives up (one attempt).
WAIT_LIMIT_S = 300.0
POLL_FIRST_S = 0.1
POLL_MAX_S = 1.0
# Per statement; the pool's connections are few and shared by every handler.
STATEMENT_TIMEOUT_S = 5.0
POOL_SIZE = 4
# A terminated connection or a restarting server: try again, then give the message back.
_TRANSIENT = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.InterfaceError,
    # What asyncpg raises when it resets a connection the server just terminated.
    asyncpg.exceptions.InternalClientError,
    OSError,
    TimeoutError,
)
_RETRY_DELAYS_S = (0.1, 0.5, 1.0)

_T = TypeVar("_T")

Work = Callable[[], Awaitable[Sequence[Event]]]

_CLAIM = """
INSERT INTO work_claims AS c (stage, bucket, key, etag, holder, claim_id, lease_until)
VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(secs => $7))
ON CONFLICT (stage, bucket, key, etag) DO UPDATE
    SET holder = EXCLUDED.holder, claim_id = EXCLUDED.claim_id,
        lease_until = EXCLUDED.lease_until, runs = c.runs + 1, claimed_at = now()
    WHERE c.done_at IS NULL AND c.lease_until < now()
RETURNING c.runs
"""
_STATE = """
SELECT claim_id, holder, runs, result, done_at IS NOT NULL AS done
FROM work_claims WHERE stage = $1 AND bucket = $2 AND key = $3 AND etag = $4
"""
# COALESCE: whoever finished first keeps the recorded result; `finished` counts each
# run once however often its statement is retried.
_FINISH = """
UPDATE work_claims
SET result = COALESCE(result, $6::jsonb), done_at = COALESCE(done_at, now()),
    finished = CASE WHEN $5::uuid = ANY(finished) THEN finished ELSE finished || $5::uuid END,
    holder = NULL, claim_id = NULL
WHERE stage = $1 AND bucket = $2 AND key = $3 AND etag = $4
RETURNING result
"""
_RELEASE = """
UPDATE work_claims SET holder = NULL, claim_id = NULL, lease_until = now()
WHERE stage = $1 AND bucket = $2 AND key = $3 AND etag = $4
  AND claim_id = $5 AND done_at IS NULL
"""
# Bounded: a big backlog goes over several passes, never in one long statement.
_PRUNE = """
DELETE FROM work_claims WHERE ctid IN (
    SELECT ctid FROM work_claims
    WHERE done_at < now() - make_interval(secs => $1) LIMIT $2
)
"""
PRUNE_BATCH = 5000
PRUNE_EVERY_S = 600.0
_RENEW = """
UPDATE work_claims SET lease_until = now() + make_interval(secs => $3)
WHERE holder = $1 AND claim_id = ANY($2::uuid[]) AND done_at IS NULL
"""


@dataclass(frozen=True, slots=True)
class ObjectVersion:
    """One version of one object: what the work is done for."""

    bucket: str
    key: str
    etag: str

    def __str__(self) -> str:
        return f"{self.bucket}/{self.key}@{self.etag}"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What came of the work: the events to publish, and whether it ran now.

    `duplicate`: recorded by an earlier run, nothing was done now. `rerun`: the work
    ran now although an earlier run had claimed it (that run failed or its worker died).
    """

    events: tuple[AnyEvent, ...]
    duplicate: bool
    rerun: bool = False


@dataclass(frozen=True, slots=True)
class _Claimed:
    runs: int


@dataclass(frozen=True, slots=True)
class _Done:
    events: tuple[AnyEvent, ...]


@dataclass(frozen=True, slots=True)
class _Held:
    holder: str


class WorkMetrics:
    """Counters of one stage (`noun`: scan, processing) in `registry`.

    `clearance_<noun>s_total` counts work done, `clearance_<noun>_duplicates_total`
    deliveries answered from the ledger, `clearance_<noun>_reruns_total` work done
    again after a failed or crashed run.
    """

    def __init__(self, registry: CollectorRegistry, noun: str) -> None:
        self.done = Counter(
            f"clearance_{noun}s_total",
            f"Object versions this worker did the {noun} work for",
            registry=registry,
        )
        self.duplicates = Counter(
            f"clearance_{noun}_duplicates_total",
            f"Deliveries whose {noun} result was already recorded (republished, not redone)",
            registry=registry,
        )
        self.reruns = Counter(
            f"clearance_{noun}_reruns_total",
            f"{noun} work done again because an earlier run failed or its worker died",
            registry=registry,
        )

    def count(self, outcome: Outcome) -> None:
        """Count one outcome of `WorkLedger.once`."""
        if outcome.duplicate:
            self.duplicates.inc()
            return
        self.done.inc()
        if outcome.rerun:
            self.reruns.inc()


@functools.cache
def default_work_metrics(noun: str) -> WorkMetrics:
    """The stage's counters on prometheus_client's default registry (what workers expose)."""
    return WorkMetrics(REGISTRY, noun)


def _events(result: Any) -> tuple[AnyEvent, ...]:
    return tuple(EVENT_ADAPTER.validate_python(doc) for doc in result or ())


class WorkLedger:
    """Claims, leases and results of pipeline work, in PostgreSQL (see the module doc).

    Open it with `open_ledger`; it renews the leases of the claims it holds until closed.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        lease_seconds: float,
        holder: str | None = None,
        wait_limit: float = WAIT_LIMIT_S,
        retention_seconds: float = 7 * 86400,
    ) -> None:
        if lease_seconds <= 0:
            raise ValueError("lease_seconds must be positive")
        self._pool = pool
        self.lease_seconds = lease_seconds
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._wait_limit = wait_limit
        self.retention_seconds = retention_seconds
        self._active: set[uuid.UUID] = set()
        # Claims this process holds, set when they end: a duplicate delivered to this
        # very process (the usual case) goes on at once instead of at its next poll.
        self._ended: dict[tuple[str, ObjectVersion], asyncio.Event] = {}

    async def once(self, stage: str, version: ObjectVersion, work: Work) -> Outcome:
        """Run `work` for (`stage`, `version`) unless it is done or being done; see the module.

        Returns the recorded events (from this run or an earlier one). Raises what
        `work` raises (after releasing the claim), or `Retry` when the ledger is
        unreachable or a live holder did not finish within the wait limit.
        """
        claim_id = uuid.uuid4()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait_limit
        pause = POLL_FIRST_S
        while True:
            state = await self._transient_retried(
                lambda: self._claim(stage, version, claim_id), f"claiming {stage} of {version}"
            )
            if isinstance(state, _Claimed):
                break
            if isinstance(state, _Done):
                return Outcome(state.events, duplicate=True)
            if loop.time() + pause > deadline:
                raise Retry(f"{stage} of {version} is still held by {state.holder}")
            ended = self._ended.get((stage, version))
            if ended is None:
                await asyncio.sleep(pause)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ended.wait(), pause)
            pause = min(pause * 2, POLL_MAX_S)

        self._active.add(claim_id)
        ended = self._ended.setdefault((stage, version), asyncio.Event())
        try:
            events = await work()
        except BaseException:
            await self._release(stage, version, claim_id)
            raise
        else:
            recorded = await self._transient_retried(
                lambda: self._finish(stage, version, claim_id, events),
                f"recording {stage} of {version}",
            )
        finally:
            self._active.discard(claim_id)
            if self._ended.get((stage, version)) is ended:
                del self._ended[(stage, version)]
            ended.set()
        return Outcome(recorded, duplicate=False, rerun=state.runs > 1)

    async def renew(self) -> int:
        """Extend the leases of the claims this process holds; returns how many."""
        if not self._active:
            return 0
        result: str = await self._pool.execute(
            _RENEW,
            self.holder,
            list(self._active),
            self.lease_seconds,
            timeout=STATEMENT_TIMEOUT_S,
        )
        return int(result.rsplit(" ", 1)[-1])

    async def prune(self) -> int:
        """Delete finished rows older than the retention (one batch); returns how many."""
        result: str = await self._pool.execute(
            _PRUNE, self.retention_seconds, PRUNE_BATCH, timeout=STATEMENT_TIMEOUT_S * 6
        )
        return int(result.rsplit(" ", 1)[-1])

    async def renew_forever(self) -> None:
        """Renew every third of the lease until cancelled, and prune now and then;
        failures are logged, not fatal."""
        loop = asyncio.get_running_loop()
        pruned_at = loop.time() - PRUNE_EVERY_S + 60  # the first pass a minute after start
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                await self.renew()
            except _TRANSIENT as exc:
                # The lease may run out; the result is still recorded when the work ends.
                log.warning("could not renew work leases: %r", exc)
            if loop.time() - pruned_at >= PRUNE_EVERY_S:
                pruned_at = loop.time()
                try:
                    if (count := await self.prune()) > 0:
                        log.info("pruned %d finished work records", count)
                except _TRANSIENT as exc:
                    log.warning("could not prune the work ledger: %r", exc)

    async def _claim(
        self, stage: str, version: ObjectVersion, claim_id: uuid.UUID
    ) -> _Claimed | _Done | _Held:
        key = (stage, version.bucket, version.key, version.etag)
        async with self._pool.acquire(timeout=STATEMENT_TIMEOUT_S) as conn:
            runs = await conn.fetchval(
                _CLAIM,
                *key,
                self.holder,
                claim_id,
                self.lease_seconds,
                timeout=STATEMENT_TIMEOUT_S,
            )
            if runs is not None:
                return _Claimed(runs)
            row = await conn.fetchrow(_STATE, *key, timeout=STATEMENT_TIMEOUT_S)
        if row is None:  # released and removed in between: claim again
            return _Held("nobody")
        if row["done"]:
            return _Done(_events(row["result"]))
        if row["claim_id"] == claim_id:
            # Our own claim, from a try whose reply was lost.
            return _Claimed(row["runs"])
        return _Held(str(row["holder"]))

    async def _finish(
        self,
        stage: str,
        version: ObjectVersion,
        claim_id: uuid.UUID,
        events: Sequence[Event],
    ) -> tuple[AnyEvent, ...]:
        result = await self._pool.fetchval(
            _FINISH,
            stage,
            version.bucket,
            version.key,
            version.etag,
            claim_id,
            [event.model_dump(mode="json") for event in events],
            timeout=STATEMENT_TIMEOUT_S,
        )
        return _events(result)

    async def _release(self, stage: str, version: ObjectVersion, claim_id: uuid.UUID) -> None:
        """Give the claim up so a retry can take it; if this fails, the lease runs out."""
        try:
            await self._pool.execute(
                _RELEASE,
                stage,
                version.bucket,
                version.key,
                version.etag,
                claim_id,
                timeout=STATEMENT_TIMEOUT_S,
            )
        except (*_TRANSIENT, asyncpg.PostgresError) as exc:
            log.warning("could not release the %s claim on %s: %r", stage, version, exc)

    async def _transient_retried(self, call: Callable[[], Awaitable[_T]], what: str) -> _T:
        for delay in (*_RETRY_DELAYS_S, None):
            try:
                return await call()
            except _TRANSIENT as exc:
                if delay is None:
                    raise Retry(f"work ledger unavailable while {what}: {exc!r}") from exc
                log.info("work ledger: %r while %s; trying again", exc, what)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")


@asynccontextmanager
async def open_ledger(settings: Settings) -> AsyncIterator[WorkLedger]:
    """A ledger on its own small pool, renewing its leases until the block ends."""
    pool = await create_pool(settings.database_url, min_size=1, max_size=POOL_SIZE)
    ledger = WorkLedger(
        pool,
        lease_seconds=settings.work_lease_seconds,
        retention_seconds=settings.work_retention_days * 86400,
    )
    renewal = asyncio.create_task(ledger.renew_forever(), name="work-lease-renewal")
    try:
        yield ledger
    finally:
        renewal.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewal
        await pool.close()
