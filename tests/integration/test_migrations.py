"""Migrations on a real PostgreSQL: an empty database migrates, re-running is a
no-op, and every step goes down and up again (the "stairway")."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from shared.db import applied_versions, connect, migrate
from shared.migrations import MIGRATIONS
from shared.settings import Settings
from tests.conftest import TEST_DB

pytestmark = pytest.mark.integration

# Beside the suite's own database: two suites on one server never drop each other's.
STAIRWAY_DB = f"{TEST_DB}_stairway"


@pytest.fixture
async def empty_database(base_settings: Settings) -> AsyncIterator[str]:
    base = base_settings.database_url.rsplit("/", 1)[0]
    admin = await asyncpg.connect(f"{base}/postgres")
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{STAIRWAY_DB}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{STAIRWAY_DB}"')
        yield f"{base}/{STAIRWAY_DB}"
        await admin.execute(f'DROP DATABASE IF EXISTS "{STAIRWAY_DB}" WITH (FORCE)')
    finally:
        await admin.close()


async def tables(dsn: str) -> set[str]:
    async with connect(dsn) as conn:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {r["tablename"] for r in rows}


async def test_empty_database_migrates_and_rerunning_is_a_no_op(empty_database: str) -> None:
    applied = await migrate(empty_database)
    assert applied == [m.version for m in MIGRATIONS]
    assert {"uploads", "upload_events", "schema_migrations"} <= await tables(empty_database)
    assert await migrate(empty_database) == []


async def test_stairway_every_step_down_and_up(empty_database: str) -> None:
    for m in MIGRATIONS:
        await migrate(empty_database, target=m.version)
        await migrate(empty_database, target=m.version - 1)
        await migrate(empty_database, target=m.version)
        async with connect(empty_database) as conn:
            assert (await applied_versions(conn))[-1] == m.version
    await migrate(empty_database, target=0)
    assert await tables(empty_database) == {"schema_migrations"}
