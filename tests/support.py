"""Small builders shared by tests (no fixtures here)."""

from __future__ import annotations

import asyncio
import io
import struct
import time
import zipfile
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
import orjson
from aiohttp import ClientSession
from PIL import Image

from shared.amqp.topology import dlq_name, retry_queue_name
from shared.pipeline import all_queues
from shared.settings import Settings
from shared.status import FINAL

# The antivirus test file: every scanner reports it, nothing else about it is harmful.
EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


def make_jpeg(width: int = 640, height: int = 480, *, exif: Image.Exif | None = None) -> bytes:
    """A real JPEG with some structure, so it is not trivially compressible."""
    img = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85, exif=exif if exif is not None else Image.Exif())
    return buf.getvalue()


class Uploads:
    """A client of the gateway, as the CLI or a browser would be."""

    def __init__(self, http: ClientSession, gateway: str, headers: dict[str, str]) -> None:
        self.http, self.gateway, self.headers = http, gateway, headers

    async def create(
        self,
        data: bytes,
        content_type: str,
        filename: str = "f.jpg",
        profile: str | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "filename": filename,
            "content_type": content_type,
            "size": len(data),
        }
        if profile is not None:
            body["profile"] = profile
        async with self.http.post(
            f"{self.gateway}/v1/uploads", json=body, headers=self.headers
        ) as resp:
            assert resp.status == 201, await resp.text()
            created: dict[str, Any] = await resp.json()
        return created

    async def put(self, created: dict[str, Any], data: bytes) -> None:
        upload = created["upload"]
        async with self.http.put(
            upload["url"], data=io.BytesIO(data), headers=upload["headers"]
        ) as resp:
            assert resp.status == 200, await resp.text()

    async def complete(self, upload_id: str) -> None:
        async with self.http.post(
            f"{self.gateway}/v1/uploads/{upload_id}/complete", json={}, headers=self.headers
        ) as resp:
            assert resp.status == 202, await resp.text()

    async def send(
        self, data: bytes, content_type: str = "image/jpeg", profile: str | None = None
    ) -> str:
        created = await self.create(data, content_type, profile=profile)
        await self.put(created, data)
        await self.complete(created["id"])
        return str(created["id"])

    async def get(self, upload_id: str) -> dict[str, Any]:
        async with self.http.get(
            f"{self.gateway}/v1/uploads/{upload_id}", headers=self.headers
        ) as resp:
            assert resp.status == 200
            record: dict[str, Any] = await resp.json()
        return record

    async def wait_final(self, upload_id: str) -> dict[str, Any]:
        """Follow the SSE stream until it closes at a final state; return the record."""
        async with asyncio.timeout(90):  # generous: CI machines are small and noisy
            events = await self.events(upload_id)
        assert events, "the stream closed without any event"
        assert events[-1]["status"] in FINAL, events
        return await self.get(upload_id)

    async def events(
        self, upload_id: str, last_event_id: int | None = None
    ) -> list[dict[str, Any]]:
        headers = dict(self.headers)
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        received = []
        async with self.http.get(
            f"{self.gateway}/v1/uploads/{upload_id}/events", headers=headers
        ) as resp:
            assert resp.status == 200
            assert resp.content_type == "text/event-stream"
            event: dict[str, str] = {}
            async for raw in resp.content:
                line = raw.decode().rstrip("\n")
                if not line:
                    if event.get("event") == "status":
                        received.append(
                            {**orjson.loads(event["data"]), "event_id": int(event["id"])}
                        )
                    event = {}
                    continue
                if line.startswith(":"):
                    continue
                name, _, value = line.partition(": ")
                event[name] = value
        return received


def make_zip(**files: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buf.getvalue()


def patch_directory(data: bytes, *, size: int | None = None, flags: int | None = None) -> bytes:
    """Rewrite the first central-directory entry's declared size or flags."""
    out = bytearray(data)
    at = data.index(b"PK\x01\x02")
    if size is not None:
        struct.pack_into("<I", out, at + 24, size)
    if flags is not None:
        struct.pack_into("<H", out, at + 8, flags)
    return bytes(out)


async def eventually(
    check: Callable[[], Awaitable[bool]],
    *,
    timeout: float = 30.0,  # noqa: ASYNC109 - a deadline for the condition, not an I/O timeout
    interval: float = 0.05,
    what: str | Callable[[], str] = "the condition",
) -> None:
    """Wait until `check()` is true (polled every `interval`), or fail after `timeout`.

    The one poll helper of the suite: for outcomes no event announces. `what` (or a
    function that describes the state at the deadline) names what never happened.
    """
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            described = what() if callable(what) else what
            raise AssertionError(f"{described} did not happen within {timeout:g} s")
        await asyncio.sleep(interval)


async def delete_queues(
    settings: Settings, *, amqp_url: str | None = None, exchange: bool = False
) -> None:
    """Delete the pipeline's queues of `settings` (and, if asked, its exchange).

    `amqp_url` reaches the broker when `settings.amqp_url` may not (a cut proxy).
    """
    connection = await aio_pika.connect(amqp_url or settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        for spec in all_queues(settings):
            names = [spec.name, dlq_name(spec.name)]
            names += [retry_queue_name(spec.name, ms) for ms in set(settings.retry_delays_ms)]
            for name in names:
                await channel.queue_delete(name)
        if exchange:
            await channel.exchange_delete(settings.amqp_exchange)
