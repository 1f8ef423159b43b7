"""What one client may take, and what a hostile one gets: every limit answers with a
precise problem+json (never a 500), and every answer carries the safe headers."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import jwt
import orjson
import pytest
from aiohttp import ClientSession, ClientTimeout
from aiohttp.test_utils import TestServer

from services.gateway.app import create_app
from services.gateway.auth import mint_token
from shared.settings import Settings

pytestmark = pytest.mark.integration

JPEG = {"filename": "a.jpg", "content_type": "image/jpeg", "size": 1000}


@pytest.fixture
async def limited(settings: Settings, database: str) -> AsyncIterator[Callable[..., Any]]:
    """Start a gateway with some settings changed; closed after the test."""
    servers: list[TestServer] = []

    async def start(**changes: Any) -> str:
        server = TestServer(
            create_app(
                settings.model_copy(update=changes), with_broker=False, with_reconciler=False
            ),
            host="127.0.0.1",
        )
        await server.start_server()
        servers.append(server)
        return str(server.make_url("")).rstrip("/")

    try:
        yield start
    finally:
        for server in servers:
            await server.close()


def bearer(settings: Settings, sub: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(settings, sub or uuid.uuid4().hex)}"}


async def problem(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/problem+json"
    body: dict[str, Any] = await resp.json()
    assert body["status"] == status
    return body


async def test_creates_beyond_the_owners_rate_get_429_with_retry_after(
    http: ClientSession, limited: Callable[..., Any], settings: Settings
) -> None:
    base = await limited(create_burst=5, create_rate_per_minute=6)
    alice, bob = bearer(settings), bearer(settings)
    answers = await asyncio.gather(
        *(http.post(f"{base}/v1/uploads", json=JPEG, headers=alice) for _ in range(8))
    )
    statuses = sorted(r.status for r in answers)
    assert statuses == [201] * 5 + [429] * 3
    refused = next(r for r in answers if r.status == 429)
    body = await problem(refused, 429)
    assert body["limit"] == "create_rate"
    assert 1 <= int(refused.headers["Retry-After"]) <= 10
    for r in answers:
        r.release()
    async with http.post(f"{base}/v1/uploads", json=JPEG, headers=bob) as resp:
        assert resp.status == 201  # another owner's budget is their own


async def test_an_owner_can_hold_only_so_many_uploads_that_never_landed(
    http: ClientSession, limited: Callable[..., Any], settings: Settings
) -> None:
    base = await limited(max_pending_uploads=3)
    alice = bearer(settings)
    ids = []
    for _ in range(3):
        async with http.post(f"{base}/v1/uploads", json=JPEG, headers=alice) as resp:
            assert resp.status == 201
            ids.append((await resp.json())["id"])
    async with http.post(f"{base}/v1/uploads", json=JPEG, headers=alice) as resp:
        body = await problem(resp, 429)
        assert body["limit"] == "pending_uploads"
        assert "3" in body["detail"]
    async with http.delete(f"{base}/v1/uploads/{ids[0]}", headers=alice) as resp:
        assert resp.status == 204
    async with http.post(f"{base}/v1/uploads", json=JPEG, headers=alice) as resp:
        assert resp.status == 201  # an aborted upload frees its slot


async def test_an_owner_can_hold_only_so_many_event_streams(
    http: ClientSession, limited: Callable[..., Any], settings: Settings
) -> None:
    base = await limited(max_streams_per_owner=2)
    alice = bearer(settings)
    async with http.post(f"{base}/v1/uploads", json=JPEG, headers=alice) as resp:
        upload = (await resp.json())["id"]
    url = f"{base}/v1/uploads/{upload}/events"
    first = await http.get(url, headers=alice)
    second = await http.get(url, headers=alice)
    try:
        assert (first.status, second.status) == (200, 200)
        async with http.get(url, headers=alice) as third:
            body = await problem(third, 429)
            assert body["limit"] == "event_streams"
    finally:
        first.close()
        second.close()

    async def slot_freed() -> bool:
        async with http.get(url, headers=alice, timeout=ClientTimeout(sock_read=0.5)) as resp:
            return resp.status == 200

    deadline = time.monotonic() + 10
    while not await slot_freed():  # the gateway notices the closed streams
        assert time.monotonic() < deadline, "a closed stream never gave its slot back"
        await asyncio.sleep(0.1)


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"sub": "a\x00b"}, "printable"),
        ({"sub": " alice"}, "printable"),
        ({"sub": "x" * 300}, "characters"),
        ({"sub": "alice", "exp": 253402300799}, "lifetime"),  # the year 9999
    ],
)
async def test_hostile_tokens_get_401(
    http: ClientSession, gateway: str, settings: Settings, claims: dict[str, Any], reason: str
) -> None:
    token = jwt.encode(
        {"exp": int(time.time()) + 60} | claims,
        settings.jwt_secret.get_secret_value(),
        algorithm="HS256",
    )
    auth = {"Authorization": f"Bearer {token}"}
    for method in ("GET", "POST"):
        async with http.request(method, f"{gateway}/v1/uploads", json=JPEG, headers=auth) as resp:
            body = await problem(resp, 401)
            assert reason in body["detail"]


async def test_header_limits(http: ClientSession, gateway: str, settings: Settings) -> None:
    """Each limit of a request head is its own precise problem: too many fields, one
    field too long, all of them too long (431), a request target too long (414)."""
    auth = bearer(settings)
    many = {f"x-h{i}": "v" for i in range(settings.max_headers + 10)}
    async with http.get(f"{gateway}/v1/uploads", headers=auth | many) as resp:
        body = await problem(resp, 431)
        assert f"at most {settings.max_headers}" in body["detail"]
    one = {"x-big": "v" * 12_000}
    async with http.get(f"{gateway}/v1/uploads", headers=auth | one) as resp:
        body = await problem(resp, 431)
        assert "'x-big'" in body["detail"].lower()
    large = {f"x-big{i}": "v" * 4000 for i in range(12)}  # 48 KB in all, each field < 8 KB
    async with http.get(f"{gateway}/v1/uploads", headers=auth | large) as resp:
        await problem(resp, 431)
    async with http.get(f"{gateway}/v1/uploads?cursor={'c' * 12_000}", headers=auth) as resp:
        await problem(resp, 414)
    # Without a token too: the head is refused before anything reads it.
    async with http.get(f"{gateway}/v1/uploads", headers=one) as resp:
        await problem(resp, 431)


async def test_slow_header_connections_are_closed(limited: Callable[..., Any]) -> None:
    base = await limited(http_idle_timeout_seconds=1.0)
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    start = time.monotonic()
    try:
        writer.write(b"GET /v1/uploads HTTP/1.1\r\nHost: x\r\n")
        await writer.drain()
        closed = False
        while time.monotonic() - start < 10 and not closed:
            writer.write(b"X-Slow: 1\r\n")  # one header a while, never the blank line
            await writer.drain()
            try:
                closed = await asyncio.wait_for(reader.read(1), 0.3) == b""
            except TimeoutError:
                continue
        assert closed, "the gateway kept a connection that never finished its headers"
        assert time.monotonic() - start < 5
    except ConnectionError:
        pass  # closed under our feet while writing: also closed
    finally:
        writer.close()


async def test_a_body_that_stops_arriving_gets_408(
    limited: Callable[..., Any], settings: Settings
) -> None:
    base = await limited(body_read_timeout_seconds=0.5)
    host, port = base.removeprefix("http://").split(":")
    body = orjson.dumps(JPEG)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            b"POST /v1/uploads HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: {bearer(settings)['Authorization']}\r\n".encode()
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[:5]  # then nothing more
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 408 "), head
    assert b"application/problem+json" in head


async def test_every_answer_carries_the_safe_headers(
    http: ClientSession, gateway: str, settings: Settings
) -> None:
    auth = bearer(settings)
    answers = [
        ("GET", "/healthz", {}),
        ("GET", "/v1/uploads", auth),
        ("GET", "/v1/uploads", {}),  # 401
        ("GET", f"/v1/uploads/{uuid.uuid4()}", auth),  # 404
        ("GET", "/metrics", {}),
        ("GET", "/nope", {}),
    ]
    for method, path, headers in answers:
        async with http.request(method, gateway + path, headers=headers) as resp:
            assert resp.headers.get("X-Content-Type-Options") == "nosniff", path
            assert resp.headers.get("X-Request-ID"), path
            assert "aiohttp" not in resp.headers.get("Server", "").lower(), path
            assert "python" not in resp.headers.get("Server", "").lower(), path


async def test_validation_errors_are_capped(
    http: ClientSession, gateway: str, settings: Settings
) -> None:
    body = JPEG | {f"u{i}": 0 for i in range(5000)}  # ~50 KB, under the body limit
    async with http.post(f"{gateway}/v1/uploads", json=body, headers=bearer(settings)) as resp:
        doc = await problem(resp, 422)
    assert len(doc["errors"]) == 20
    assert doc["error_count"] == 5000
    assert len(str(doc)) < 10_000


@pytest.mark.parametrize("number", ["²", "٣", "-1", "1.5", "9" * 5000])
async def test_numbers_that_are_not_plain_digits_are_refused_precisely(
    http: ClientSession, gateway: str, settings: Settings, number: str
) -> None:
    # '²' passes str.isdigit() but not int(); 5,000 digits are past int()'s limit.
    auth = bearer(settings)
    async with http.get(f"{gateway}/v1/uploads", params={"limit": number}, headers=auth) as resp:
        doc = await problem(resp, 422)
    assert doc["errors"][0]["field"] == "limit"

    multipart = {"filename": "a.mp4", "content_type": "video/mp4", "size": 200 * 1024**2}
    multipart |= {"profile": "media"}
    async with http.post(f"{gateway}/v1/uploads", json=multipart, headers=auth) as resp:
        assert resp.status == 201, await resp.text()
        created = await resp.json()
    uploads = f"{gateway}/v1/uploads/{created['id']}"
    numbered = {"part_numbers": [1], "checksums": {number: "0" * 64}}
    async with http.post(f"{uploads}/parts", json=numbered, headers=auth) as resp:
        doc = await problem(resp, 422)
    assert doc["errors"][0]["field"] == f"checksums.{number}"

    # Uppy's routes answer in Uppy's shape: 400 with {error}, never a bare 404 or a 500.
    async with http.post(
        f"{gateway}/s3/multipart",
        json={"filename": "a.mp4", "type": "video/mp4", "metadata": {"profile": "media"}},
        headers=auth,
    ) as resp:
        assert resp.status == 200, await resp.text()
        mpu = await resp.json()
    base = f"{gateway}/s3/multipart/{mpu['uploadId']}"
    for path, query in (
        (f"{base}/{number}", {"key": mpu["key"]}),
        (f"{base}/batch", {"key": mpu["key"], "partNumbers": f"1,{number}"}),
    ):
        async with http.get(path, params=query, headers=auth) as resp:
            assert resp.status == 400, (path, await resp.text())
            assert "error" in await resp.json()

    for last_event_id in (number, "1" * 40):
        async with http.get(
            f"{uploads}/events", headers=auth | {"Last-Event-ID": last_event_id}
        ) as resp:
            assert resp.status == 200
            assert resp.content_type == "text/event-stream"


async def test_a_body_that_is_not_sent_as_json_gets_415(
    http: ClientSession, gateway: str, settings: Settings
) -> None:
    auth = bearer(settings)
    body = orjson.dumps(JPEG)
    for media_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        headers = auth | {"Content-Type": media_type}
        async with http.post(f"{gateway}/v1/uploads", data=body, headers=headers) as resp:
            doc = await problem(resp, 415)
        assert media_type in doc["detail"]
    # Uppy's route: the same refusal in Uppy's shape.
    uppy = orjson.dumps({"filename": "a.mp4", "type": "video/mp4"})
    async with http.post(
        f"{gateway}/s3/multipart", data=uppy, headers=auth | {"Content-Type": "text/plain"}
    ) as resp:
        assert resp.status == 415
        assert "error" in await resp.json()
    # JSON under its own name (with a charset, or a +json type) is fine, and so is an
    # empty `complete` with no type at all.
    for media_type in ("application/json; charset=utf-8", "application/problem+json"):
        headers = auth | {"Content-Type": media_type}
        async with http.post(f"{gateway}/v1/uploads", data=body, headers=headers) as resp:
            assert resp.status == 201, await resp.text()
            created = await resp.json()
    async with http.post(f"{gateway}/v1/uploads/{created['id']}/complete", headers=auth) as resp:
        assert resp.status != 415
