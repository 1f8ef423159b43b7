"""Readiness tells the truth: a gateway on an un-migrated database or without its bucket
is red and names the fix, and requests that need the database answer 503, never 500."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from services.gateway.app import create_app
from services.gateway.auth import mint_token
from shared.settings import Settings

pytestmark = pytest.mark.integration

EMPTY_DB = "clearance_test_unmigrated"


@pytest.fixture
async def unmigrated(settings: Settings, base_settings: Settings) -> AsyncIterator[str]:
    """A gateway on a database that exists but has no schema."""
    admin_dsn = base_settings.database_url.rsplit("/", 1)[0] + "/postgres"
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{EMPTY_DB}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{EMPTY_DB}"')
    finally:
        await admin.close()
    dsn = settings.database_url.rsplit("/", 1)[0] + f"/{EMPTY_DB}"
    app = create_app(
        settings.model_copy(update={"database_url": dsn}), with_broker=False, with_reconciler=False
    )
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


async def test_an_unmigrated_database_is_red_and_requests_get_503(
    http: ClientSession, unmigrated: str, settings: Settings
) -> None:
    async with http.get(f"{unmigrated}/readyz") as resp:
        assert resp.status == 503
        checks = (await resp.json())["checks"]
    assert "clearance migrate" in checks["database"]
    assert checks["storage"] == "ok"

    auth = {"Authorization": f"Bearer {mint_token(settings, 'alice')}"}
    body = {"filename": "a.jpg", "content_type": "image/jpeg", "size": 10}
    for method, path in (("POST", "/v1/uploads"), ("GET", "/v1/uploads")):
        async with http.request(method, unmigrated + path, json=body, headers=auth) as resp:
            assert resp.status == 503, await resp.text()
            assert resp.content_type == "application/problem+json"
            assert int(resp.headers["Retry-After"]) > 0
            assert "clearance migrate" in (await resp.json())["detail"]


async def test_a_missing_bucket_is_red_and_names_init(
    http: ClientSession, settings: Settings, database: str, stack_up: None
) -> None:
    app = create_app(
        settings.model_copy(update={"bucket": "clearance-no-such-bucket"}),
        with_broker=False,
        with_reconciler=False,
    )
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with http.get(server.make_url("/readyz")) as resp:
            assert resp.status == 503
            checks = (await resp.json())["checks"]
        assert "clearance init" in checks["storage"]
        assert checks["database"] == "ok"
    finally:
        await server.close()
