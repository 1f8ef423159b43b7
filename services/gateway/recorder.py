"""The status recorder: pipeline events → monotonic, idempotent status transitions.

It runs inside the gateway (the only database writer) as a consumer of the
`clearance.recorder` queue. Every event maps to at most one forward move
(`transitions.move_for`), applied through `UploadService.apply`; a duplicate or late
event finds the upload already at or past that status and changes nothing, so
redeliveries are harmless.

Events of different uploads are applied concurrently (the consumer's prefetch); the
events of one upload one at a time, in delivery order (`InOrder`), so its
`object.created` is recorded before the scanner's `scan.started` that follows it and
its timeline never skips a stage.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from services.gateway import store
from services.gateway.transitions import move_for
from services.gateway.uploads import UploadService
from shared.amqp.consumer import Delivery
from shared.events import AnyEvent, ObjectCreated

log = logging.getLogger(__name__)


class InOrder:
    """One holder per key at a time, in the order they asked (asyncio.Lock is FIFO).

    Deliveries start their handlers in queue order and a handler asks first, before
    anything can suspend it, so one upload's events are applied in queue order.
    """

    def __init__(self) -> None:
        self._locks: dict[uuid.UUID, tuple[asyncio.Lock, list[int]]] = {}

    @asynccontextmanager
    async def hold(self, key: uuid.UUID) -> AsyncIterator[None]:
        lock, users = self._locks.setdefault(key, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._locks[key]

    def __len__(self) -> int:
        return len(self._locks)


class StatusRecorder:
    """The consumer handler: one event, one move."""

    def __init__(self, uploads: UploadService) -> None:
        self._uploads = uploads
        self._in_order = InOrder()

    async def __call__(self, event: AnyEvent, delivery: Delivery) -> None:
        async with self._in_order.hold(event.upload_id):
            await self._record(event)

    async def _record(self, event: AnyEvent) -> None:
        upload = await store.get_upload(self._uploads.pool, event.upload_id)
        extra = {"upload_id": str(event.upload_id), "correlation_id": event.correlation_id}
        if upload is None:
            # Deleted by its owner, or an object no upload declared: nothing to record.
            log.info("%s for an unknown upload ignored", event.type, extra=extra)
            return
        if isinstance(event, ObjectCreated) and (
            event.key != upload.key or event.bucket != upload.bucket
        ):
            log.warning("%s names %s, not the upload's key", event.type, event.key, extra=extra)
            return
        move = move_for(event, upload)
        result = await self._uploads.apply(upload, move)
        if result is not None and result.entry is not None:
            log.info("%s → %s (%s)", upload.status.value, move.to.value, event.type, extra=extra)
