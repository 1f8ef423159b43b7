"""Fixtures shared by the whole suite: settings, a fresh database, the real gateway.

Integration tests talk to the real stack (`clearance stack up --infra-only`, which
`make test` runs first): PostgreSQL, RabbitMQ, SeaweedFS and clamd.
"""

from __future__ import annotations

import base64
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer

from services.gateway.app import create_app
from services.gateway.auth import mint_token
from shared.bucket import configure_bucket
from shared.db import migrate
from shared.pipeline import delete_topology
from shared.settings import Settings, WebhookEndpoint
from tests.receiver import WebhookReceiver
from tests.support import BROWSER_ORIGINS, make_jpeg, pipeline_workers

TEST_DB = os.environ.get("CLEARANCE_TEST_DATABASE", "clearance_test")
# The suite's webhook endpoint signs with this (whsec_ + base64 of 32 bytes).
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"clearance-suite-webhook-secret!!").decode()


def _dsn_for(base_dsn: str, name: str) -> str:
    return f"{base_dsn.rsplit('/', 1)[0]}/{name}"


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def base_settings() -> Settings:
    # Queues and exchange of their own: a running `make run` stack never steals
    # the suite's messages, nor the suite its.
    return Settings(
        environment="test",
        queue_prefix=f"{TEST_DB}.q",
        amqp_exchange=f"{TEST_DB}.events",
        notifications_exchange=f"{TEST_DB}.notifications",
        retry_delays_ms=(200, 500),
        max_attempts=3,
        drain_timeout_seconds=5,
        # A killed worker's claim is taken over this soon (and live ones renew thrice).
        work_lease_seconds=3,
        scanner_metrics_port=None,
        processor_metrics_port=None,
    )


@pytest.fixture(scope="session")
async def webhook_receiver() -> AsyncIterator[WebhookReceiver]:
    """The application's webhook endpoint: up for the whole session, recording."""
    receiver = WebhookReceiver()
    await receiver.start()
    try:
        yield receiver
    finally:
        await receiver.close()


@pytest.fixture(scope="session")
def settings(base_settings: Settings, webhook_receiver: WebhookReceiver) -> Settings:
    """Settings for the suite: same stack, a database of its own."""
    return base_settings.model_copy(
        update={
            "database_url": _dsn_for(base_settings.database_url, TEST_DB),
            # A bucket of its own: a running `make run` stack (whose relay and
            # scanner watch the main bucket) never touches the suite's objects.
            "bucket": TEST_DB.replace("_", "-"),
            "cors_origins": (*base_settings.cors_origins, *BROWSER_ORIGINS),
            # Every event goes to the suite's receiver, retried quickly: 4 attempts
            # within about 2 s, then dead.
            "webhooks": (
                WebhookEndpoint(
                    name="app",
                    url=webhook_receiver.url,
                    secret=WEBHOOK_SECRET,  # type: ignore[arg-type]
                ),
            ),
            "webhook_retry_schedule_seconds": (0.2, 0.5, 1.0),
            "webhook_timeout_seconds": 5.0,
            "webhook_poll_seconds": 1.0,
        }
    )


@pytest.fixture(scope="session")
async def database(settings: Settings, base_settings: Settings) -> AsyncIterator[str]:
    """A freshly created and migrated database for this test session."""
    admin = await asyncpg.connect(_dsn_for(base_settings.database_url, "postgres"))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{TEST_DB}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{TEST_DB}"')
    finally:
        await admin.close()
    await migrate(settings.database_url)
    return settings.database_url


@pytest.fixture(scope="session")
def stack_up(settings: Settings) -> None:
    """Fail fast, with the fix, when the local stack is not running."""
    missing = []
    if not _reachable("127.0.0.1", settings.weed_s3_port):
        missing.append(f"SeaweedFS S3 on {settings.weed_s3_port}")
    if not _reachable("127.0.0.1", 5432):
        missing.append("PostgreSQL on 5432")
    if missing:
        pytest.fail(
            f"local stack not running ({', '.join(missing)}): run `clearance stack up --infra-only`"
        )
    configure_bucket(settings, settings.s3_endpoint_url)


@pytest.fixture(scope="session")
async def fresh_queues(settings: Settings) -> None:
    """The suite's queues start empty: nothing left over from an earlier run."""
    await delete_topology(settings)


@pytest.fixture(scope="session")
async def gateway_server(
    settings: Settings, database: str, stack_up: None, fresh_queues: None
) -> AsyncIterator[TestServer]:
    """The real gateway app (recorder, reconciler, SSE) on a local port."""
    app: web.Application = create_app(settings)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture(scope="session")
def gateway(gateway_server: TestServer) -> str:
    """The gateway's base URL, as a client would reach it."""
    return str(gateway_server.make_url("")).rstrip("/")


@pytest.fixture(scope="session")
def gateway_app(gateway_server: TestServer) -> web.Application:
    return gateway_server.app


@pytest.fixture(scope="session")
async def http() -> AsyncIterator[ClientSession]:
    async with ClientSession() as session:
        yield session


@pytest.fixture
def token(settings: Settings) -> Callable[..., str]:
    def make(subject: str | None = None, ttl: int = 600) -> str:
        return mint_token(settings, subject or f"user-{uuid.uuid4().hex[:8]}", ttl_seconds=ttl)

    return make


@pytest.fixture
def owner_headers(token: Callable[..., str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {token()}"}


@pytest.fixture
def jpeg() -> bytes:
    return make_jpeg()


@pytest.fixture(scope="module")
async def workers(settings: Settings, gateway: str) -> AsyncIterator[None]:
    """The scanner and processor consuming in this process; the gateway records."""
    async with pipeline_workers(settings, "test-workers"):
        yield
