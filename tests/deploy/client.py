"""A client of the deployment that behaves like a real one: it retries and reconnects.

Everything goes over HTTP to the published ports: the edge for the API, storage's
S3 port for the bytes. A replica may die under it (the kill test), so every call
retries connection failures and 502/503/504 with back-off, and a status stream that
breaks is resumed with `Last-Event-ID`, as a browser's EventSource would.
"""

from __future__ import annotations

import asyncio
import io
import random
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

FINAL = frozenset({"ready", "infected", "rejected", "failed", "expired", "aborted"})
RETRYABLE = frozenset({502, 503, 504})
CALL_DEADLINE_S = 60.0
FOLLOW_DEADLINE_S = 180.0


class GaveUp(Exception):
    """A call kept failing until its deadline."""


class Conflict(Exception):
    """409 from the gateway."""


@dataclass
class Stats:
    """What the client had to retry: a measure of how smooth a failure was."""

    retries: int = 0
    reconnects: int = 0
    # `complete` answered 409 because the pipeline had already moved the upload on.
    complete_races: int = 0
    errors: list[str] = field(default_factory=list)


class DeploymentClient:
    def __init__(self, http: aiohttp.ClientSession, base: str, token: str) -> None:
        self.http, self.base = http, base
        self.headers = {"Authorization": f"Bearer {token}"}
        self.stats = Stats()

    async def _backoff(self, attempt: int, why: str) -> None:
        self.stats.retries += 1
        if len(self.stats.errors) < 50:
            self.stats.errors.append(why)
        await asyncio.sleep(min(0.2 * 2**attempt, 2.0) * (0.5 + random.random()))

    async def call(
        self, method: str, path: str, *, json: Any = None, expect: int = 200
    ) -> dict[str, Any]:
        """One API call through the edge; retried while the answer is a transient failure."""
        deadline = time.monotonic() + CALL_DEADLINE_S
        attempt = 0
        while True:
            try:
                async with self.http.request(
                    method, f"{self.base}{path}", json=json, headers=self.headers
                ) as resp:
                    body = await resp.read()
                    if resp.status == expect:
                        return orjson.loads(body) if body else {}
                    if resp.status == 409:
                        raise Conflict(f"{method} {path}: {body[:500]!r}")
                    if resp.status not in RETRYABLE:
                        raise AssertionError(f"{method} {path}: {resp.status} {body[:500]!r}")
                    why = f"{method} {path}: {resp.status}"
            except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                why = f"{method} {path}: {type(exc).__name__}"
            if time.monotonic() > deadline:
                raise GaveUp(why)
            await self._backoff(attempt, why)
            attempt += 1

    async def put_bytes(self, url: str, headers: dict[str, str], data: bytes) -> str:
        """PUT straight to storage with a presigned URL; returns the ETag."""
        deadline = time.monotonic() + CALL_DEADLINE_S
        attempt = 0
        while True:
            try:
                async with self.http.put(url, data=io.BytesIO(data), headers=headers) as resp:
                    body = await resp.read()
                    if resp.status == 200:
                        return resp.headers.get("ETag", "")
                    if resp.status not in RETRYABLE:
                        raise AssertionError(f"PUT to storage: {resp.status} {body[:500]!r}")
                    why = f"PUT to storage: {resp.status}"
            except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                why = f"PUT to storage: {type(exc).__name__}"
            if time.monotonic() > deadline:
                raise GaveUp(why)
            await self._backoff(attempt, why)
            attempt += 1

    async def create(
        self, data: bytes, content_type: str, *, filename: str = "f.jpg", profile: str | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "filename": filename,
            "content_type": content_type,
            "size": len(data),
        }
        if profile:
            body["profile"] = profile
        return await self.call("POST", "/v1/uploads", json=body, expect=201)

    async def send(
        self, data: bytes, content_type: str, *, filename: str = "f.jpg", profile: str | None = None
    ) -> str:
        """Create, PUT the bytes, complete: the single-PUT flow. Returns the upload id."""
        created = await self.create(data, content_type, filename=filename, profile=profile)
        upload = created["upload"]
        await self.put_bytes(upload["url"], upload["headers"], data)
        await self.complete(created["id"], {})
        return str(created["id"])

    async def complete(self, upload_id: str, body: dict[str, Any]) -> None:
        """`POST .../complete`, and what a careful client does with a 409.

        The pipeline may beat the client to it: the scanner can quarantine an
        infected object (gone from its key) or the upload can reach a final state
        before `complete` arrives, which the gateway answers with 409. If the record
        shows the upload moved past `pending`/`uploading`, the bytes landed: done.
        """
        deadline = time.monotonic() + CALL_DEADLINE_S
        attempt = 0
        while True:
            try:
                await self.call("POST", f"/v1/uploads/{upload_id}/complete", json=body, expect=202)
                return
            except Conflict as exc:
                status = (await self.record(upload_id))["status"]
                if status not in ("pending", "uploading"):
                    self.stats.complete_races += 1
                    return
                if time.monotonic() > deadline:
                    raise GaveUp(str(exc)) from None
                await self._backoff(attempt, str(exc)[:200])
                attempt += 1

    async def send_multipart(self, data: bytes, content_type: str, *, parallel: int = 4) -> str:
        created = await self.create(data, content_type, filename="big.mp4", profile="media")
        plan = created["multipart"]
        size, count = plan["part_size"], plan["part_count"]
        signed = await self.call(
            "POST",
            f"/v1/uploads/{created['id']}/parts",
            json={"part_numbers": list(range(1, count + 1))},
        )
        gate = asyncio.Semaphore(parallel)

        async def one(part: dict[str, Any]) -> dict[str, Any]:
            n = part["part_number"]
            async with gate:
                etag = await self.put_bytes(
                    part["url"], part["headers"], data[(n - 1) * size : n * size]
                )
            return {"part_number": n, "etag": etag}

        parts = await asyncio.gather(*(one(p) for p in signed["parts"]))
        await self.complete(created["id"], {"parts": list(parts)})
        return str(created["id"])

    async def record(self, upload_id: str) -> dict[str, Any]:
        return await self.call("GET", f"/v1/uploads/{upload_id}")

    async def follow(self, upload_id: str) -> list[dict[str, Any]]:
        """Every `status` event of the upload's SSE stream until a final one, across
        reconnects (`Last-Event-ID`): each event exactly once, in order."""
        received: list[dict[str, Any]] = []
        deadline = time.monotonic() + FOLLOW_DEADLINE_S
        attempt = 0
        # Heartbeats come every 15 s: a stream silent for much longer is dead.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=40)
        while True:
            headers = dict(self.headers)
            if received:
                headers["Last-Event-ID"] = str(received[-1]["event_id"])
            try:
                async with self.http.get(
                    f"{self.base}/v1/uploads/{upload_id}/events", headers=headers, timeout=timeout
                ) as resp:
                    if resp.status == 200:
                        async for event in _status_events(resp):
                            received.append(event)
                            if event["status"] in FINAL:
                                return received
                        why = "stream ended before a final state"
                    elif resp.status in RETRYABLE:
                        why = f"events: {resp.status}"
                    else:
                        raise AssertionError(f"events: {resp.status} {await resp.text()}")
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
                why = f"events: {type(exc).__name__}"
            if time.monotonic() > deadline:
                raise GaveUp(f"{upload_id}: {why}; got {[e['status'] for e in received]}")
            self.stats.reconnects += 1
            await self._backoff(attempt, why)
            attempt += 1


async def _status_events(resp: aiohttp.ClientResponse) -> Any:
    event: dict[str, str] = {}
    async for raw in resp.content:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if event.get("event") == "status":
                yield {**orjson.loads(event["data"]), "event_id": int(event["id"])}
            event = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            event[name] = value.removeprefix(" ")
