"""Both APIs are adapters over one upload service: the same upload, the same effects.

The transitions metric is the service's own count, so an upload driven through
`/v1` and one driven through the Uppy routes (`/s3`) move it identically.
"""

from __future__ import annotations

import io
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer

from services.gateway.app import create_app
from services.gateway.appkeys import METRICS
from shared.settings import MiB, Settings, UploadPolicy
from shared.status import Status

pytestmark = pytest.mark.integration

SIZE = 9 * MiB  # two parts on either route: 8 MiB + 1 MiB


@pytest.fixture
async def small_multipart_app(settings: Settings, database: str) -> AsyncIterator[TestServer]:
    """A gateway whose `clips` profile goes multipart above 5 MiB (no broker: uploads
    stop at `uploaded`, so the counts are exactly this test's)."""
    profiles = dict(settings.profiles)
    profiles["clips"] = UploadPolicy(
        content_types=frozenset({"video/mp4"}), max_size=20 * MiB, multipart_threshold=5 * MiB
    )
    app = create_app(
        settings.model_copy(update={"profiles": profiles}),
        with_broker=False,
        with_reconciler=False,
    )
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()


def counts(app: web.Application) -> dict[str, float]:
    registry = app[METRICS].registry
    return {
        s.value: registry.get_sample_value(
            "clearance_upload_transitions_total", {"status": s.value}
        )
        or 0.0
        for s in Status
    }


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


async def put(http: ClientSession, url: str, data: bytes, headers: dict[str, str]) -> str:
    async with http.put(url, data=io.BytesIO(data), headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        return resp.headers["ETag"]


async def via_v1(http: ClientSession, base: str, auth: dict[str, str], data: bytes) -> None:
    """Create, sign, send both parts, complete; then abort a second upload."""
    declared = {"filename": "a.mp4", "content_type": "video/mp4", "size": len(data)}
    async with http.post(
        f"{base}/v1/uploads", json=declared | {"profile": "clips"}, headers=auth
    ) as resp:
        assert resp.status == 201, await resp.text()
        created: dict[str, Any] = await resp.json()
    assert created["multipart"] == {"part_size": 8 * MiB, "part_count": 2}
    async with http.post(
        f"{base}/v1/uploads/{created['id']}/parts", json={"part_numbers": [1, 2]}, headers=auth
    ) as resp:
        assert resp.status == 200, await resp.text()
        signed = (await resp.json())["parts"]
    chunks = [data[: 8 * MiB], data[8 * MiB :]]
    parts = [
        {"part_number": p["part_number"], "etag": await put(http, p["url"], c, p["headers"])}
        for p, c in zip(signed, chunks, strict=True)
    ]
    async with http.post(
        f"{base}/v1/uploads/{created['id']}/complete", json={"parts": parts}, headers=auth
    ) as resp:
        assert resp.status == 202, await resp.text()
        assert (await resp.json())["status"] == "uploaded"

    async with http.post(
        f"{base}/v1/uploads", json=declared | {"profile": "clips"}, headers=auth
    ) as resp:
        abandoned = (await resp.json())["id"]
    async with http.post(
        f"{base}/v1/uploads/{abandoned}/parts", json={"part_numbers": [1]}, headers=auth
    ) as resp:
        assert resp.status == 200
    async with http.delete(f"{base}/v1/uploads/{abandoned}", headers=auth) as resp:
        assert resp.status == 204
    async with http.post(f"{base}/v1/uploads/{abandoned}/complete", json={}, headers=auth) as resp:
        assert resp.status == 409  # an aborted upload can't be completed


async def via_uppy(http: ClientSession, base: str, auth: dict[str, str], data: bytes) -> None:
    """What `@uppy/aws-s3` does for the same file, and for one it cancels."""

    async def start() -> dict[str, Any]:
        body = {"filename": "a.mp4", "type": "video/mp4", "metadata": {"profile": "clips"}}
        async with http.post(f"{base}/s3/multipart", json=body, headers=auth) as resp:
            assert resp.status == 200, await resp.text()
            started: dict[str, Any] = await resp.json()
        return started

    async def sign(started: dict[str, Any], number: int) -> str:
        path = f"/s3/multipart/{started['uploadId']}/{number}?key={started['key']}"
        async with http.get(base + path, headers=auth) as resp:
            assert resp.status == 200, await resp.text()
            url: str = (await resp.json())["url"]
        return url

    started = await start()
    chunks = [data[: 8 * MiB], data[8 * MiB :]]
    parts = [
        {"PartNumber": n, "ETag": await put(http, await sign(started, n), chunk, {})}
        for n, chunk in enumerate(chunks, start=1)
    ]
    path = f"/s3/multipart/{started['uploadId']}/complete?key={started['key']}"
    async with http.post(base + path, json={"parts": parts}, headers=auth) as resp:
        assert resp.status == 200, await resp.text()

    cancelled = await start()
    await sign(cancelled, 1)
    path = f"/s3/multipart/{cancelled['uploadId']}?key={cancelled['key']}"
    async with http.delete(base + path, headers=auth) as resp:
        assert resp.status == 200, await resp.text()


async def test_the_transitions_metric_counts_the_same_whichever_api_was_used(
    http: ClientSession, small_multipart_app: TestServer, owner_headers: dict[str, str]
) -> None:
    app = small_multipart_app.app
    base = str(small_multipart_app.make_url("")).rstrip("/")
    data = os.urandom(SIZE)

    before = counts(app)
    await via_v1(http, base, owner_headers, data)
    v1 = delta(before, counts(app))

    before = counts(app)
    await via_uppy(http, base, owner_headers, data)
    uppy = delta(before, counts(app))

    assert v1 == {"uploading": 2.0, "uploaded": 1.0, "aborted": 1.0}
    assert uppy == v1
