"""Live status: PostgreSQL LISTEN/NOTIFY fanned out to Server-Sent Events streams.

One dedicated connection LISTENs for the whole process and wakes the streams of
the upload a notification names. A stream never trusts the notification's payload
alone: it re-reads the timeline after the last entry it sent, so a lost wake-up
(or a reconnect of the listening connection) can delay an event but never drop it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import orjson
from aiohttp import web

from services.gateway import store
from services.gateway.appkeys import LISTENER, POOL, SETTINGS
from services.gateway.base import BaseView, whole_number
from shared.db import connect_watched
from shared.tasks import cancel_and_wait

log = logging.getLogger(__name__)

RECONNECT_SECONDS = 1.0
# A create's wake-up for announcers in other processes (`announce_elsewhere`): sent this
# long after the first create that asks, for all the creates of that time together.
WAKE_SECONDS = 0.005
WAKE_PAYLOAD = "announce"


class Listener:
    """Owns the LISTEN connection and the per-upload wake-up events."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._waiters: dict[uuid.UUID, set[asyncio.Event]] = defaultdict(set)
        self._any: set[asyncio.Event] = set()  # woken by every notification
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._conn: asyncpg.Connection | None = None
        self._wake_task: asyncio.Task[None] | None = None
        self._wake_wanted = False

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="pg-listener")
        # First connection must work, so a misconfigured database fails start-up.
        await asyncio.wait_for(self._connected.wait(), timeout=10)

    async def close(self) -> None:
        await cancel_and_wait(self._wake_task)
        await cancel_and_wait(self._task)

    @contextlib.contextmanager
    def subscribe(self, upload_id: uuid.UUID) -> Iterator[asyncio.Event]:
        event = asyncio.Event()
        self._waiters[upload_id].add(event)
        try:
            yield event
        finally:
            waiters = self._waiters.get(upload_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[upload_id]

    @contextlib.contextmanager
    def subscribe_all(self) -> Iterator[asyncio.Event]:
        """An event set by every notification (the outbox relay and webhooks wake on it)."""
        event = asyncio.Event()
        self._any.add(event)
        try:
            yield event
        finally:
            self._any.discard(event)

    def announce(self) -> None:
        """Wake this process's announcers (outbox relay, webhooks) without a NOTIFY: for
        a change only they need to hear of, such as a create."""
        for event in self._any:
            event.set()

    def announce_elsewhere(self) -> None:
        """Wake the announcers of other processes (`clearance announcer`) after a create:
        one NOTIFY for the creates of the next `WAKE_SECONDS`, sent after their commits
        on this process's LISTEN connection. Never inside a create's transaction, so the
        lock PostgreSQL holds for a notifying commit never holds a create's commit; if
        the connection is away, the announcers' polling finds the rows."""
        self._wake_wanted = True
        if self._wake_task is None or self._wake_task.done():
            self._wake_task = asyncio.create_task(self._send_wakes(), name="announce-wake")

    async def _send_wakes(self) -> None:
        while self._wake_wanted:
            await asyncio.sleep(WAKE_SECONDS)
            # A create that asks from here on gets a NOTIFY sent after its commit.
            self._wake_wanted = False
            conn = self._conn
            if conn is None or conn.is_closed():
                return
            try:
                await conn.execute("SELECT pg_notify($1, $2)", store.NOTIFY_CHANNEL, WAKE_PAYLOAD)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("announcer wake-up not sent (%s); they poll", exc)
                return

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        self.announce()
        upload_id, _, _seq = str(payload).partition(":")
        try:
            key = uuid.UUID(upload_id)
        except ValueError:
            return
        for event in self._waiters.get(key, ()):
            event.set()

    def _wake_all(self) -> None:
        self.announce()
        for waiters in self._waiters.values():
            for event in waiters:
                event.set()

    async def _run(self) -> None:
        while True:
            try:
                conn, lost = await connect_watched(self._dsn)
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                log.warning("LISTEN connection failed (%s); retrying", exc)
                await asyncio.sleep(RECONNECT_SECONDS)
                continue
            try:
                await conn.add_listener(store.NOTIFY_CHANNEL, self._on_notify)
                self._conn = conn
                self._connected.set()
                # Anything notified while we were away is picked up by re-reading.
                self._wake_all()
                await lost.wait()
                log.warning("LISTEN connection lost; reconnecting")
            finally:
                self._conn = None
                with contextlib.suppress(Exception):
                    await conn.close(timeout=2)
            await asyncio.sleep(RECONNECT_SECONDS)


async def listener_context(app: web.Application) -> AsyncIterator[None]:
    listener = Listener(app[SETTINGS].database_url)
    await listener.start()
    app[LISTENER] = listener
    try:
        yield
    finally:
        await listener.close()


def sse_frame(entry: store.TimelineEntry, upload_id: uuid.UUID) -> bytes:
    data = orjson.dumps({"id": str(upload_id), **entry.as_json()})
    return b"id: %d\nevent: status\ndata: %s\n\n" % (entry.seq, data)


class EventsView(BaseView):
    """`GET /v1/uploads/{id}/events`: one `status` event per transition, then close."""

    async def get(self) -> web.StreamResponse:
        upload = await self.load()
        limits = self.uploads.limits
        stream = await limits.open_stream(self.owner)  # 429 when the owner has too many
        try:
            return await self._stream(upload, stream)
        finally:
            await limits.close_stream(stream)

    async def _stream(self, upload: store.Upload, stream: uuid.UUID) -> web.StreamResponse:
        last_seq = self._last_event_id()
        pool = self.request.app[POOL]
        heartbeat = self.request.app[SETTINGS].sse_heartbeat_seconds
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache, no-transform",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(self.request)
        await response.write(b"retry: 2000\n\n")
        with self.request.app[LISTENER].subscribe(upload.id) as wake:
            while True:
                wake.clear()
                # Read after subscribing, so nothing committed in between is missed.
                entries = await store.timeline(pool, upload.id, after_seq=last_seq)
                for entry in entries:
                    await response.write(sse_frame(entry, upload.id))
                    last_seq = entry.seq
                    if entry.status.final:
                        await response.write_eof()
                        return response
                if not entries and await self._already_final(upload.id, last_seq):
                    await response.write_eof()
                    return response
                try:
                    await asyncio.wait_for(wake.wait(), timeout=heartbeat)
                except TimeoutError:
                    await response.write(b": heartbeat\n\n")
                    await self.uploads.limits.renew_stream(stream)

    def _last_event_id(self) -> int:
        raw = self.request.headers.get("Last-Event-ID") or self.request.query.get("last_event_id")
        return (whole_number(raw.strip(), max_digits=18) if raw else None) or 0

    async def _already_final(self, upload_id: uuid.UUID, last_seq: int) -> bool:
        """The stream resumed after the final entry: nothing more will come."""
        current = await store.get_upload(self.request.app[POOL], upload_id)
        return current is None or current.status.final
