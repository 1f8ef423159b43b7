"""Fixtures of the chaos suite: the links (proxies), a stack of its own, the report.

`make chaos` writes the report to docs/reliability.md (CLEARANCE_CHAOS_REPORT); any
other run writes it under the suite's temporary directory only.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import aio_pika
import asyncpg
import pytest
from aiohttp import ClientSession

from devstack.layout import StackLayout
from shared.db import migrate
from shared.pipeline import delete_topology
from shared.settings import Settings
from tests.chaos.harness import CHAOS_DB, PORTS, ChaosStack, Client, Links, Observer, Report
from tests.proxy import LinkProxy

REPORT_ENV = "CLEARANCE_CHAOS_REPORT"


@pytest.fixture(scope="session")
def report(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Report]:
    collected = Report()
    yield collected
    target = os.environ.get(REPORT_ENV) or str(tmp_path_factory.mktemp("chaos") / "reliability.md")
    Path(target).write_text(collected.markdown())


@pytest.fixture(scope="session")
async def links(base_settings: Settings) -> AsyncIterator[Links]:
    amqp = urlsplit(base_settings.amqp_url)
    pg = urlsplit(base_settings.database_url)
    broker = LinkProxy(amqp.hostname or "127.0.0.1", amqp.port or 5672)
    database = LinkProxy(pg.hostname or "127.0.0.1", pg.port or 5432)
    await broker.start()
    await database.start()
    try:
        yield Links(broker, database)
    finally:
        await broker.close()
        await database.close()


def _with_port(url: str, port: int, path: str | None = None) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit(":", 1)[0] if parts.port else parts.netloc
    return parts._replace(
        netloc=f"{netloc}:{port}", path=parts.path if path is None else path
    ).geturl()


@pytest.fixture(scope="session")
def direct_dsn(base_settings: Settings) -> str:
    """The chaos database, reached directly (the observer and the migrations)."""
    return _with_port(
        base_settings.database_url,
        urlsplit(base_settings.database_url).port or 5432,
        f"/{CHAOS_DB}",
    )


@pytest.fixture(scope="session")
def chaos_settings(
    base_settings: Settings, links: Links, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    state = tmp_path_factory.mktemp("chaos-stack")
    return base_settings.model_copy(
        update={
            **PORTS,
            "state_dir": state,
            "public_url": f"http://127.0.0.1:{PORTS['gateway_port']}",
            "s3_endpoint_url": f"http://127.0.0.1:{PORTS['weed_s3_port']}",
            "database_url": _with_port(
                base_settings.database_url, links.database.proxy_port, f"/{CHAOS_DB}"
            ),
            "amqp_url": _with_port(base_settings.amqp_url, links.broker.proxy_port),
            "queue_prefix": f"{CHAOS_DB}.q",
            "amqp_exchange": f"{CHAOS_DB}.events",
            "bucket": CHAOS_DB.replace("_", "-"),
            # Production-like patience: faults last seconds, retries must outlast them.
            "retry_delays_ms": (500, 2000, 5000),
            "max_attempts": 10,
            "work_lease_seconds": 3,
            "relay_catchup_interval_seconds": 5,
            "reconcile_interval_seconds": 5,
            "stuck_after_seconds": 30,
        }
    )


@pytest.fixture(scope="session")
async def chaos_database(base_settings: Settings, direct_dsn: str) -> str:
    admin = await asyncpg.connect(_with_port(base_settings.database_url, 5432, "/postgres"))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{CHAOS_DB}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{CHAOS_DB}"')
    finally:
        await admin.close()
    await migrate(direct_dsn)
    return direct_dsn


@pytest.fixture(scope="session")
async def chaos_stack(
    chaos_settings: Settings, chaos_database: str, base_settings: Settings, report: Report
) -> AsyncIterator[ChaosStack]:
    """The chaos stack, up for the session; `stack down` (and queues deleted) after."""
    # Both links must work before `stack up` looks at them: it would take a dead link
    # for a stopped server.
    connection = await aio_pika.connect(chaos_settings.amqp_url, timeout=10)
    await connection.close()
    conn = await asyncpg.connect(chaos_settings.database_url, timeout=10)
    await conn.close()
    await delete_topology(
        chaos_settings, amqp_url=base_settings.amqp_url, exchanges=[chaos_settings.amqp_exchange]
    )
    stack = ChaosStack(chaos_settings, StackLayout.from_settings(chaos_settings))
    try:
        await stack.up()
        yield stack
    finally:
        await stack.down()
        await delete_topology(
            chaos_settings,
            amqp_url=base_settings.amqp_url,
            exchanges=[chaos_settings.amqp_exchange],
        )


@pytest.fixture(scope="session")
async def observer(chaos_database: str) -> AsyncIterator[Observer]:
    watching = await Observer.connect(chaos_database)
    try:
        yield watching
    finally:
        await watching.conn.close()


@pytest.fixture(scope="session")
async def broker_admin(base_settings: Settings) -> AsyncIterator[aio_pika.abc.AbstractConnection]:
    """A direct broker connection (never cut): it watches the consumers come back."""
    connection = await aio_pika.connect(base_settings.amqp_url)
    async with connection:
        yield connection


@pytest.fixture
def client(http: ClientSession, chaos_settings: Settings) -> Client:
    return Client(http, chaos_settings)
