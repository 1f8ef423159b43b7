"""The gateway's database pool serves its waiters in the order they came.

asyncpg's own pool lets a caller that arrives as a connection comes back take it ahead
of those already waiting, which at a saturated gateway worker made one request in a
hundred wait 200-400 ms while the rest took 3 ms (`shared.db.FairPool`).
"""

from __future__ import annotations

import asyncio
import itertools

import pytest

from shared.db import create_pool

pytestmark = pytest.mark.integration


async def test_no_caller_overtakes_one_that_waited_longer(database: str) -> None:
    """32 callers, 4 connections, each caller back in line as soon as it is done: no
    caller may get a connection while one that asked before it is still waiting."""
    pool = await create_pool(database, min_size=4, max_size=4)
    tickets = itertools.count()
    waiting: set[int] = set()
    overtakes = 0
    served = 0

    async def caller() -> None:
        nonlocal overtakes, served
        for _ in range(50):
            ticket = next(tickets)
            waiting.add(ticket)
            async with pool.acquire() as conn:
                waiting.discard(ticket)
                overtakes += any(other < ticket for other in waiting)
                served += 1
                await conn.fetchval("SELECT 1")

    try:
        await asyncio.wait_for(asyncio.gather(*(caller() for _ in range(32))), timeout=60)
        assert served == 32 * 50
        assert overtakes == 0, f"{overtakes} of {served} acquisitions overtook a waiter"

        # A wait that times out gives its turn back: the pool is whole afterwards.
        held = [await pool.acquire() for _ in range(4)]
        with pytest.raises(TimeoutError):
            await pool.acquire(timeout=0.05)
        for conn in held:
            await pool.release(conn)
        assert await asyncio.wait_for(pool.fetchval("SELECT 2"), timeout=5) == 2
        assert pool.get_idle_size() == 4
    finally:
        await pool.close()
