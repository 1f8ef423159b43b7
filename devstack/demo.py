"""`make run`'s last step: one sample JPEG, end to end, narrated.

It talks to the running gateway exactly as any client would: declare the file,
PUT the bytes straight to storage with the presigned URL, say `complete`, then
follow the upload's Server-Sent Events until it is final, and print the record.
"""

from __future__ import annotations

import asyncio
import io
import sys
import time
from typing import Any
from urllib.parse import urlsplit

import orjson
from aiohttp import ClientError, ClientSession, ClientTimeout
from PIL import Image, ImageDraw

from services.gateway.auth import mint_token
from shared.settings import Settings


def sample_jpeg() -> bytes:
    """A 1600×1200 photo-like JPEG whose EXIF asks for a 90° rotation."""
    img = Image.linear_gradient("L").resize((1600, 1200)).convert("RGB")
    draw = ImageDraw.Draw(img)
    for i in range(0, 1600, 100):
        draw.ellipse((i, 300 + (i % 300), i + 180, 480 + (i % 300)), fill=(i % 255, 120, 200))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise
    exif[0x010F] = "Clearance Demo Camera"
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=88, exif=exif)
    return buf.getvalue()


def say(step: str, text: str) -> None:
    print(f"  {step:<10} {text}", flush=True)


async def wait_ready(http: ClientSession, gateway: str, deadline: float) -> None:
    while True:
        try:
            async with http.get(f"{gateway}/readyz") as resp:
                if resp.status == 200:
                    return
        except ClientError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"the gateway at {gateway} is not ready; see `clearance stack status`")
        await asyncio.sleep(0.2)


async def follow(
    http: ClientSession, gateway: str, upload_id: str, headers: dict[str, str]
) -> None:
    started = time.monotonic()
    async with http.get(f"{gateway}/v1/uploads/{upload_id}/events", headers=headers) as resp:
        data = ""
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("data: "):
                data = line[6:]
            elif not line and data:
                entry = orjson.loads(data)
                detail = entry.get("detail") or {}
                extra = f" {orjson.dumps(detail).decode()}" if detail else ""
                say(
                    "status",
                    f"+{time.monotonic() - started:5.2f}s {entry['status']:<10}"
                    f" by {entry['actor']}{extra}",
                )
                data = ""


async def demo(settings: Settings) -> int:
    gateway = settings.public_url.rstrip("/")
    token = mint_token(settings, "demo-user", ttl_seconds=3600)
    headers = {"Authorization": f"Bearer {token}"}
    data = sample_jpeg()
    print(f"\nClearance demo: one JPEG ({len(data):,} bytes) through {gateway}\n")
    async with ClientSession(timeout=ClientTimeout(total=120)) as http:
        await wait_ready(http, gateway, time.monotonic() + 30)
        say("token", f"{token[:24]}… (clearance token demo-user)")
        body = {"filename": "demo-photo.jpg", "content_type": "image/jpeg", "size": len(data)}
        async with http.post(f"{gateway}/v1/uploads", json=body, headers=headers) as resp:
            created: dict[str, Any] = await resp.json()
            if resp.status != 201:
                print(orjson.dumps(created, option=orjson.OPT_INDENT_2).decode())
                return 1
        upload = created["upload"]
        storage = urlsplit(upload["url"])
        say("declared", f"upload {created['id']} → key {created['key']}")
        say(
            "signed",
            f"PUT {storage.scheme}://{storage.netloc}{storage.path}?X-Amz-… "
            f"(expires {created['expires_at']})",
        )
        follower = asyncio.create_task(follow(http, gateway, created["id"], headers))
        started = time.monotonic()
        async with http.put(upload["url"], data=data, headers=upload["headers"]) as resp:
            if resp.status != 200:
                print(await resp.text())
                return 1
        say(
            "uploaded",
            f"{len(data):,} bytes straight to storage in "
            f"{(time.monotonic() - started) * 1000:.0f} ms (the gateway never saw them)",
        )
        async with http.post(
            f"{gateway}/v1/uploads/{created['id']}/complete", json={}, headers=headers
        ) as resp:
            say("complete", f"{resp.status} {await resp.text()}")
        await asyncio.wait_for(follower, timeout=120)
        async with http.get(f"{gateway}/v1/uploads/{created['id']}", headers=headers) as resp:
            record = await resp.json()
    print("\nThe upload's record (GET /v1/uploads/{id}):\n")
    print(orjson.dumps(record, option=orjson.OPT_INDENT_2).decode())
    print(f"\nDemo page: {gateway}/  (paste this token there, valid 1 h):\n\n{token}\n")
    print("Stop everything: make stop\n")
    return 0 if record["status"] == "ready" else 1


def main() -> int:
    return asyncio.run(demo(Settings()))


if __name__ == "__main__":
    sys.exit(main())
