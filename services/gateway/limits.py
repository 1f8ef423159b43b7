"""What one owner may take of the gateway, counted in PostgreSQL so that every gateway
process enforces the same limits: a create rate (token bucket), a cap on uploads not
yet landed, and a cap on open SSE streams (leases renewed by each stream's heartbeat,
so a crashed gateway's streams expire by themselves).
"""

from __future__ import annotations

import math
import uuid
from typing import Any

import asyncpg

from services.gateway import store
from shared.problems import TooManyRequests
from shared.settings import Settings

# The create limits are checked in the create's own statement (`store.insert_admitted_upload`;
# for a multipart create, `store.admit_owners` before storage opens it), batched by `creates`.
# Serialised per owner, so two streams opened at once can't both take the last slot.
_OPEN_STREAM = """
WITH lock AS (SELECT pg_advisory_xact_lock(hashtextextended('stream:' || $2, 0)))
INSERT INTO owner_streams (id, owner, expires_at)
SELECT $1, $2, now() + make_interval(secs => $4)
FROM lock
WHERE (SELECT count(*) FROM owner_streams WHERE owner = $2 AND expires_at > now()) < $3
RETURNING id
"""


class OwnerLimits:
    def __init__(self, settings: Settings, pool: asyncpg.Pool[Any]) -> None:
        self._pool = pool
        self._burst = float(settings.create_burst)
        self._rate = settings.create_rate_per_minute / 60.0  # tokens per second
        self._max_pending = settings.max_pending_uploads
        self._max_streams = settings.max_streams_per_owner
        # A stream's lease outlives a few missed heartbeats, not a crashed gateway.
        self._lease = settings.sse_heartbeat_seconds * 3
        self.create_limits = store.CreateLimits(
            burst=self._burst,
            rate=self._rate,
            max_pending=self._max_pending,
        )

    def check(self, admission: store.Admission) -> None:
        """TooManyRequests, precisely, unless the limits admitted the create."""
        if not admission.took_token:
            wait = math.ceil((1 - admission.level) / self._rate)
            raise TooManyRequests(
                f"too many uploads created; at most {self._burst:g} at once and "
                f"{self._rate * 60:g} per minute",
                retry_after=wait,
                limit="create_rate",
            )
        if admission.pending >= self._max_pending:
            raise TooManyRequests(
                f"{admission.pending} uploads are waiting for their bytes; at most "
                f"{self._max_pending} may be open at once: finish or delete some first",
                retry_after=60,
                limit="pending_uploads",
            )

    async def open_stream(self, owner: str) -> uuid.UUID:
        """A lease on one of the owner's SSE slots, or TooManyRequests."""
        stream = uuid.uuid4()
        async with self._pool.acquire() as conn, conn.transaction():
            # Leases a crashed gateway left behind end here.
            await conn.execute(
                "DELETE FROM owner_streams WHERE owner = $1 AND expires_at < now()", owner
            )
            got = await conn.fetchval(_OPEN_STREAM, stream, owner, self._max_streams, self._lease)
        if got is None:
            raise TooManyRequests(
                f"at most {self._max_streams} event streams may be open at once",
                retry_after=int(self._lease),
                limit="event_streams",
            )
        return stream

    async def renew_stream(self, stream: uuid.UUID) -> None:
        await self._pool.execute(
            "UPDATE owner_streams SET expires_at = now() + make_interval(secs => $2) WHERE id = $1",
            stream,
            self._lease,
        )

    async def close_stream(self, stream: uuid.UUID) -> None:
        await self._pool.execute("DELETE FROM owner_streams WHERE id = $1", stream)
