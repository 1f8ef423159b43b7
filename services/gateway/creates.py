"""Group commit for creates: the creates that arrive together share one statement.

Under load, a gateway process parses many requests in one turn of its event loop, and
each create used to be its own statement, round trip and commit: per create, more
database CPU (the statement, the commit's WAL flush, the backend's wake-up) than the
rows themselves cost, and in the gateway a pool checkout, a socket write and a
wake-up. `CreateBatcher` queues each create's database work; at the end of the loop
turn everything of one kind queued in it goes to the database in one statement on one
connection, and each caller gets its own outcome back. Nothing waits for company: a
lone create is written on the next turn; while a statement of its kind is in flight
(`MAX_IN_FLIGHT`), the creates that come meanwhile wait for it to end and go together.
Three kinds, one statement each (`store`):

- `insert_admitted`: a single-request create, its owner's limits checked in the insert;
- `admit`: a multipart create's limits, before storage is asked to open it;
- `insert`: the multipart create's record, once storage opened it.

A statement takes each owner's token bucket once, so a batch that checks limits holds
one create per owner, and an owner's next one waits until the batch with the previous
one has committed: it is admitted on the bucket and the count of open uploads as the
previous one left them, exactly as if they had come one after the other. A batch that
fails on something other than the database being away (a bug, a constraint) is retried
one create at a time, so one bad create cannot fail the others.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import asyncpg
from prometheus_client import Histogram

from services.gateway import store

log = logging.getLogger(__name__)

MAX_BATCH = 64  # creates per statement: bounds its size and one batch's wait
# Statements of one kind in flight per process. While one is, the next creates wait and
# then go together: under load a batch fills up for as long as a statement takes
# (creates that come back from storage one by one still share one), idle it is at once.
# One rather than two: a multipart create's admission and record, each a lane of its
# own, went in batches twice as large at two workers, for ~13 % more creates per CPU
# second of the gateway (`bench/gateway.py`); single-request creates were unchanged.
MAX_IN_FLIGHT = 1

Item = TypeVar("Item")
Outcome = TypeVar("Outcome")

# The database being away: every create of the batch would fail alone too.
_AWAY: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    OSError,
    TimeoutError,
)


@dataclass(slots=True)
class _Waiting(Generic[Item, Outcome]):
    item: Item
    owner: str
    done: asyncio.Future[Outcome]


@dataclass
class _Lane(Generic[Item, Outcome]):
    """One kind of create work: its queue and the statement that does a batch of it."""

    name: str
    statement: Callable[
        [asyncpg.pool.PoolConnectionProxy[Any], list[Item]], Awaitable[list[Outcome]]
    ]
    one_per_owner: bool  # the statement takes owners' buckets: one create each, in turn
    queued: list[_Waiting[Item, Outcome]] = field(default_factory=list)
    scheduled: bool = False
    in_flight: int = 0


class CreateBatcher:
    """Admits and records new uploads, several per statement when they come together."""

    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        outbox: store.Outbox,
        limits: store.CreateLimits,
        batch_size: Histogram,
        *,
        actor: str = "gateway",
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._pool = pool
        self._batch_size = batch_size
        self._max_batch = max_batch
        self._writing: set[asyncio.Task[None]] = set()
        self._busy: set[str] = set()  # owners with limits being checked in a batch

        async def insert_admitted(conn: Any, uploads: list[store.Upload]) -> list[store.Admission]:
            return await store.insert_admitted_uploads(
                conn, uploads, actor=actor, outbox=outbox, limits=limits
            )

        async def admit(conn: Any, owners: list[str]) -> list[store.Admission]:
            return await store.admit_owners(conn, owners, limits)

        async def insert(conn: Any, uploads: list[store.Upload]) -> list[store.TimelineEntry]:
            return await store.insert_uploads(conn, uploads, actor=actor, outbox=outbox)

        self._insert_admitted = _Lane[store.Upload, store.Admission](
            "insert_admitted", insert_admitted, one_per_owner=True
        )
        self._admit = _Lane[str, store.Admission]("admit", admit, one_per_owner=True)
        self._insert = _Lane[store.Upload, store.TimelineEntry](
            "insert", insert, one_per_owner=False
        )
        self._lanes: Sequence[_Lane[Any, Any]] = (self._insert_admitted, self._admit, self._insert)

    async def insert_admitted(self, upload: store.Upload) -> store.Admission:
        """`store.insert_admitted_upload` for `upload`, with the creates of this turn."""
        return await self._queue(self._insert_admitted, upload, upload.owner)

    async def admit(self, owner: str) -> store.Admission:
        """`store.admit_owners` for `owner`, with the creates of this turn."""
        return await self._queue(self._admit, owner, owner)

    async def insert(self, upload: store.Upload) -> store.TimelineEntry:
        """`store.insert_upload` for `upload`, with the creates of this turn."""
        return await self._queue(self._insert, upload, upload.owner)

    async def _queue(self, lane: _Lane[Item, Outcome], item: Item, owner: str) -> Outcome:
        done: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        waiting = _Waiting(item, owner, done)  # not `_Waiting[…](…)`: typing's call is slow
        lane.queued.append(waiting)
        self._schedule(lane)
        # A cancelled caller cancels only its own future, never the batch (the others
        # still need it), which then leaves that future alone: its create is written or
        # not, as a cancelled single statement would be.
        return await done

    def _schedule(self, lane: _Lane[Any, Any]) -> None:
        if not lane.scheduled:
            lane.scheduled = True
            asyncio.get_running_loop().call_soon(self._flush, lane)

    def _flush(self, lane: _Lane[Item, Outcome]) -> None:
        lane.scheduled = False
        if lane.in_flight >= MAX_IN_FLIGHT:
            return  # the end of one in flight flushes again
        batch: list[_Waiting[Item, Outcome]] = []
        later: list[_Waiting[Item, Outcome]] = []
        for waiting in lane.queued:
            if len(batch) == self._max_batch or (
                lane.one_per_owner and waiting.owner in self._busy
            ):
                later.append(waiting)
            else:
                if lane.one_per_owner:
                    self._busy.add(waiting.owner)
                batch.append(waiting)
        lane.queued = later
        if any(not lane.one_per_owner or w.owner not in self._busy for w in later):
            self._schedule(lane)  # more than a batch came: the rest in the next one
        if batch:
            lane.in_flight += 1
            task = asyncio.create_task(self._write(lane, batch))
            self._writing.add(task)
            task.add_done_callback(self._writing.discard)

    async def _write(
        self, lane: _Lane[Item, Outcome], batch: list[_Waiting[Item, Outcome]]
    ) -> None:
        try:
            await self._run(lane, batch)
        finally:
            lane.in_flight -= 1
            if lane.queued:
                self._schedule(lane)
            if lane.one_per_owner:
                # The owners' next creates may go now, on their limits as these left them.
                for waiting in batch:
                    self._busy.discard(waiting.owner)
                for other in self._lanes:
                    if other.one_per_owner and other.queued:
                        self._schedule(other)

    async def _run(self, lane: _Lane[Item, Outcome], batch: list[_Waiting[Item, Outcome]]) -> None:
        try:
            async with self._pool.acquire() as conn:
                outcomes = await lane.statement(conn, [w.item for w in batch])
        except asyncio.CancelledError:
            for waiting in batch:
                waiting.done.cancel()
            raise
        except Exception as exc:
            if len(batch) == 1 or isinstance(exc, _AWAY):
                for waiting in batch:
                    if not waiting.done.done():
                        waiting.done.set_exception(exc)
                return
            log.warning(
                "a batch of %d creates (%s) failed (%s: %s); writing them one by one",
                len(batch),
                lane.name,
                type(exc).__name__,
                exc,
            )
            await asyncio.gather(*(self._run(lane, [waiting]) for waiting in batch))
            return
        self._batch_size.labels(lane.name).observe(len(batch))
        for waiting, outcome in zip(batch, outcomes, strict=True):
            if not waiting.done.done():
                waiting.done.set_result(outcome)

    async def close(self) -> None:
        """Wait for the batches being written (at shutdown, before the pool closes)."""
        while self._writing or any(lane.queued for lane in self._lanes):
            if self._writing:
                await asyncio.gather(*self._writing, return_exceptions=True)
            else:
                await asyncio.sleep(0)
