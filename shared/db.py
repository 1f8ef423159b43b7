"""PostgreSQL access: the pool factory and versioned migrations as code.

Migrations are plain SQL pairs (up, down) in `shared.migrations`; `migrate()` applies
them in order under an advisory lock, so concurrent starts are safe and re-running is
a no-op. Only the gateway writes uploads; the scanner and the processor write only
their work ledger (`shared.ledger`), and the relay never opens the database.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from shared.migrations import MIGRATIONS, Migration

log = logging.getLogger(__name__)

_LOCK_ID = 0x0C1EA4A4CE  # advisory lock key: one migrator at a time


async def _init_connection(conn: asyncpg.Connection) -> None:
    for typ in ("json", "jsonb"):
        await conn.set_type_codec(typ, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Nothing to undo when a connection goes back to the pool.

    asyncpg's default reset (`pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET
    ALL`) costs a round trip per checkout, as much as a create's whole statement. Our
    pooled connections hold no session state: advisory locks are transaction-scoped
    (`pg_*_xact_lock`), LISTEN has a connection of its own, nothing SETs or DECLAREs;
    an open transaction is still rolled back by asyncpg itself before this runs.
    """


class FairPool(asyncpg.Pool):
    """asyncpg's pool, handing its connections out first come, first served.

    asyncpg keeps the free connections in a LIFO queue that a newcomer takes from at
    once, while a caller that was already waiting is woken only to find it empty again
    and queues anew at the back. Under load that starves some callers: at one saturated
    gateway worker (pool 10, 32 connections signing parts) most requests took 3 ms and
    one in a hundred 200-400 ms. One FIFO permit per connection in front of the pool
    (asyncio's semaphore serves its waiters in order) turns the wait into a queue.
    """

    def __init__(self, *args: Any, max_size: int, **kwargs: Any) -> None:
        super().__init__(*args, max_size=max_size, **kwargs)
        self._turns = asyncio.Semaphore(max_size)
        self._permitted: set[int] = set()  # the proxies handed out with a permit

    async def _acquire(self, timeout: float | None) -> Any:  # noqa: ASYNC109 - asyncpg's
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with asyncio.timeout(timeout):
            await self._turns.acquire()
        try:
            left = None if timeout is None else max(0.0, timeout - (loop.time() - started))
            proxy = await super()._acquire(left)  # type: ignore[misc]
        except BaseException:
            self._turns.release()
            raise
        self._permitted.add(id(proxy))
        return proxy

    async def release(self, connection: Any, *, timeout: float | None = None) -> None:  # noqa: ASYNC109
        try:
            await super().release(connection, timeout=timeout)
        finally:
            if id(connection) in self._permitted:
                self._permitted.discard(id(connection))
                self._turns.release()


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    """Open a fair pool (`FairPool`) whose connections decode json/jsonb to Python values."""
    pool: asyncpg.Pool = FairPool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        max_queries=50_000,
        max_inactive_connection_lifetime=300.0,
        loop=None,
        connection_class=asyncpg.Connection,
        record_class=asyncpg.Record,
        init=_init_connection,
        reset=_keep_session,
        timeout=10,
    )
    await pool
    return pool


async def connect_raw(dsn: str) -> asyncpg.Connection:
    """One connection with the pool's codecs; the caller closes it."""
    conn = await asyncpg.connect(dsn, timeout=10)
    await _init_connection(conn)
    return conn


async def connect_watched(dsn: str) -> tuple[asyncpg.Connection, asyncio.Event]:
    """`connect_raw`, and an event set once the server ends the connection (for a
    long-lived connection: LISTEN, a lock held for its session)."""
    conn = await connect_raw(dsn)
    lost = asyncio.Event()
    conn.add_termination_listener(lambda _conn: lost.set())
    return conn, lost


@asynccontextmanager
async def connect(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect_raw(dsn)
    try:
        yield conn
    finally:
        await conn.close()


async def applied_versions(conn: asyncpg.Connection) -> list[int]:
    exists = await conn.fetchval("SELECT to_regclass('public.schema_migrations') IS NOT NULL")
    if not exists:
        return []
    rows = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
    return [r["version"] for r in rows]


async def schema_problem(conn: Any) -> str | None:
    """What is wrong with the schema for this code (None when it is current)."""
    applied = await applied_versions(conn)
    latest = MIGRATIONS[-1].version
    if not applied:
        return "the database has no schema: run `clearance migrate` (or `clearance init`)"
    if max(applied) < latest:
        return (
            f"the schema is at version {max(applied)}, this code needs {latest}: "
            "run `clearance migrate`"
        )
    if max(applied) > latest:
        return f"the schema is at version {max(applied)}, newer than this code ({latest})"
    return None


async def migrate(dsn: str, *, target: int | None = None) -> list[int]:
    """Bring the schema to `target` (default: latest), up or down. Returns versions applied."""
    wanted = MIGRATIONS[-1].version if target is None else target
    if wanted != 0 and wanted not in {m.version for m in MIGRATIONS}:
        raise ValueError(f"unknown migration version {wanted}")
    done: list[int] = []
    async with connect(dsn) as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_ID)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            current = set(await applied_versions(conn))
            for m in MIGRATIONS:
                if m.version <= wanted and m.version not in current:
                    await _apply(conn, m, up=True)
                    done.append(m.version)
            for m in reversed(MIGRATIONS):
                if m.version > wanted and m.version in current:
                    await _apply(conn, m, up=False)
                    done.append(-m.version)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_ID)
    return done


async def _apply(conn: asyncpg.Connection, m: Migration, *, up: bool) -> None:
    async with conn.transaction():
        await conn.execute(m.up if up else m.down)
        if up:
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", m.version, m.name
            )
        else:
            await conn.execute("DELETE FROM schema_migrations WHERE version = $1", m.version)
    log.info("migration %s %04d_%s", "applied" if up else "reverted", m.version, m.name)


def _named(dsn: str) -> tuple[str, str]:
    """The server's `postgres` database and the quoted name of the one `dsn` names
    (identifiers can't be bound as parameters)."""
    base, _, name = dsn.rpartition("/")
    name = name.split("?", 1)[0]
    return f"{base}/postgres", '"' + name.replace('"', '""') + '"'


async def ensure_database(dsn: str) -> bool:
    """Create the database named in `dsn` if it is missing. Returns True if created."""
    server, quoted = _named(dsn)
    admin: Any = await asyncpg.connect(server, timeout=10)
    try:
        if await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", dsn_name(dsn)):
            return False
        await admin.execute(f"CREATE DATABASE {quoted}")
        return True
    finally:
        await admin.close()


def dsn_name(dsn: str) -> str:
    """The database a DSN names."""
    return dsn.rpartition("/")[2].split("?", 1)[0]


async def drop_database(dsn: str) -> None:
    """Drop the database named in `dsn`, ending its sessions (a benchmark's own)."""
    server, quoted = _named(dsn)
    admin: Any = await asyncpg.connect(server, timeout=10)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)")
    finally:
        await admin.close()


async def recreate_database(dsn: str) -> None:
    """The database named in `dsn`, new and migrated (dropped first if it exists)."""
    await drop_database(dsn)
    await ensure_database(dsn)
    await migrate(dsn)
