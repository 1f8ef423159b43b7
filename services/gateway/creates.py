"""Group commit for creates: the creates that arrive together share one statement.

Under load, a gateway process parses many requests in one turn of its event loop, and
each create used to be its own statement, round trip and commit: per create, more
database CPU (the statement, the commit's WAL flush, the backend's wake-up) than the
rows themselves cost, and in the gateway a pool checkout, a socket write and a
wake-up. `CreateBatcher.insert` queues the create; at the end of the loop turn every
create queued in it goes to the database in one statement
(`store.insert_admitted_uploads`) on one connection, and each caller gets its own
admission back. Nothing waits for company: a lone create is written on the next turn,
and batches keep being formed while earlier ones are in flight (up to the pool).

A statement takes each owner's token bucket once, so a batch holds one create per
owner, and an owner's next create waits until the batch with the previous one has
committed: it is admitted on the bucket and the count of open uploads as the previous
one left them, exactly as if they had come one after the other. A batch
that fails on something other than the database being away (a bug, a constraint) is
retried one create at a time, so one bad create cannot fail the others.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import asyncpg
from prometheus_client import Histogram

from services.gateway import store

log = logging.getLogger(__name__)

MAX_BATCH = 64  # creates per statement: bounds its size and one batch's wait


@dataclass(slots=True)
class _Waiting:
    upload: store.Upload
    done: asyncio.Future[store.Admission]


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
        self._outbox = outbox
        self._limits = limits
        self._batch_size = batch_size
        self._actor = actor
        self._max_batch = max_batch
        self._queued: list[_Waiting] = []
        self._scheduled = False
        self._writing: set[asyncio.Task[None]] = set()
        self._busy: set[str] = set()  # owners with a create in a batch being written

    async def insert(self, upload: store.Upload) -> store.Admission:
        """`store.insert_admitted_upload` for `upload`, written with the creates that
        arrive in the same loop turn; its admission."""
        loop = asyncio.get_running_loop()
        waiting = _Waiting(upload, loop.create_future())
        self._queued.append(waiting)
        self._schedule()
        # A cancelled caller does not cancel the batch (the others still need it); its
        # create is then written or not, as a cancelled single statement would be.
        return await asyncio.shield(waiting.done)

    def _flush(self) -> None:
        self._scheduled = False
        batch: list[_Waiting] = []
        later: list[_Waiting] = []
        for waiting in self._queued:
            owner = waiting.upload.owner
            if owner in self._busy or len(batch) == self._max_batch:
                later.append(waiting)
            else:
                self._busy.add(owner)
                batch.append(waiting)
        self._queued = later
        if any(w.upload.owner not in self._busy for w in later):
            self._schedule()  # more than a batch came: the rest in the next one
        if batch:
            task = asyncio.create_task(self._write(batch))
            self._writing.add(task)
            task.add_done_callback(self._writing.discard)

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    async def _write(self, batch: list[_Waiting]) -> None:
        try:
            await self._run(batch)
        finally:
            # The owners' next creates may go now, on their buckets as this one left them.
            for waiting in batch:
                self._busy.discard(waiting.upload.owner)
            if self._queued:
                self._schedule()

    async def _run(self, batch: list[_Waiting]) -> None:
        try:
            admissions = await self._statement([w.upload for w in batch])
        except asyncio.CancelledError:
            for waiting in batch:
                waiting.done.cancel()
            raise
        except Exception as exc:
            if len(batch) == 1 or isinstance(exc, _AWAY):
                for waiting in batch:
                    _settle(waiting, exc)
                return
            log.warning(
                "a batch of %d creates failed (%s: %s); writing them one by one",
                len(batch),
                type(exc).__name__,
                exc,
            )
            await asyncio.gather(*(self._run([waiting]) for waiting in batch))
            return
        self._batch_size.observe(len(batch))
        for waiting, admission in zip(batch, admissions, strict=True):
            if not waiting.done.done():
                waiting.done.set_result(admission)

    async def _statement(self, uploads: list[store.Upload]) -> list[store.Admission]:
        async with self._pool.acquire() as conn:
            return await store.insert_admitted_uploads(
                conn, uploads, actor=self._actor, outbox=self._outbox, limits=self._limits
            )

    async def close(self) -> None:
        """Wait for the batches being written (at shutdown, before the pool closes)."""
        while self._queued or self._writing:
            if self._writing:
                await asyncio.gather(*self._writing, return_exceptions=True)
            else:
                await asyncio.sleep(0)


# The database being away: every create of the batch would fail alone too.
_AWAY: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    OSError,
    TimeoutError,
)


def _settle(waiting: _Waiting, exc: BaseException) -> None:
    if not waiting.done.done():
        waiting.done.set_exception(exc)
