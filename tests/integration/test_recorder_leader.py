"""One recorder consumes at a time, however many gateways run: the others wait for the
recorder's lock and one of them takes over when the consumer ends; a recorder whose
lock connection is terminated stops, and consumes again once it has the lock back.

Two gateways of their own (a queue namespace of their own, so the suite's recorder and
its lock are not involved), no scanner: an upload they record stops at `uploaded`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aio_pika
import asyncpg
import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from services.gateway.app import create_app
from services.gateway.auth import mint_token
from services.gateway.broker import LEADER_POLL_SECONDS
from shared.pipeline import delete_topology, recorder_queue
from shared.settings import Settings
from tests.support import Uploads, eventually, make_jpeg

pytestmark = pytest.mark.integration


@pytest.fixture
async def leader_settings(settings: Settings, database: str) -> AsyncIterator[Settings]:
    prefix = f"{settings.queue_prefix}.leader"
    own = settings.model_copy(update={"queue_prefix": prefix, "amqp_exchange": f"{prefix}.events"})
    yield own
    await delete_topology(own, exchanges=[own.amqp_exchange])


async def consumers(settings: Settings) -> int:
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(recorder_queue(settings).name, passive=True)
        count = queue.declaration_result.consumer_count
        assert count is not None
        return count


async def start(settings: Settings) -> TestServer:
    server = TestServer(create_app(settings, with_reconciler=False), host="127.0.0.1")
    await server.start_server()
    return server


async def terminate_lock_holder(database: str, queue: str) -> int:
    """End the database session that holds `queue`'s recorder lock; how many ended."""
    admin = await asyncpg.connect(database)
    try:
        ended: int = await admin.fetchval(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_locks"
            " WHERE locktype = 'advisory' AND granted AND objsubid = 1"
            " AND objid::bigint = (hashtext($1)::bigint & 4294967295)",
            queue,
        )
        return ended
    finally:
        await admin.close()


async def test_one_recorder_consumes_and_another_takes_over(
    leader_settings: Settings, http: ClientSession, database: str
) -> None:
    first = await start(leader_settings)
    second: TestServer | None = None
    try:

        async def one_consumer() -> bool:
            return await consumers(leader_settings) == 1

        await eventually(one_consumer, timeout=15, what="the first gateway's recorder consuming")
        second = await start(leader_settings)
        # The second one keeps asking for the lock and does not get it.
        for _ in range(4):
            await asyncio.sleep(LEADER_POLL_SECONDS)
            assert await consumers(leader_settings) == 1

        await first.close()
        await eventually(one_consumer, timeout=15, what="the second gateway's recorder taking over")
        base = str(second.make_url("")).rstrip("/")
        auth = {"Authorization": f"Bearer {mint_token(leader_settings, 'leader-test')}"}
        uploads = Uploads(http, base, auth)
        upload_id = await uploads.send(make_jpeg())

        async def recorded() -> bool:
            return (await uploads.get(upload_id))["status"] == "uploaded"

        await eventually(recorded, timeout=15, what="the upload recorded as uploaded")

        # Its lock's session ended (a database restart, an operator): it stops consuming,
        # takes the lock again and goes on recording.
        assert await terminate_lock_holder(database, recorder_queue(leader_settings).name) == 1
        await eventually(one_consumer, timeout=15, what="the recorder consuming again")
        again = await uploads.send(make_jpeg())

        async def recorded_again() -> bool:
            return (await uploads.get(again))["status"] == "uploaded"

        await eventually(recorded_again, timeout=15, what="the next upload recorded")
    finally:
        await first.close()
        if second is not None:
            await second.close()
