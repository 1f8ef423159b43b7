"""Small builders shared by tests (no fixtures here)."""

from __future__ import annotations

import asyncio
import io
import socket
import struct
import time
import zipfile
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
from aiohttp import ClientSession
from PIL import Image

from services.processor.worker import build_processor, process_pool
from services.scanner.worker import build_scanner
from shared.amqp.consumer import Consumer
from shared.pipeline import processor_queue, scanner_queue
from shared.settings import Settings
from shared.status import FINAL
from shared.worker import worker_resources

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
        metadata: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "filename": filename,
            "content_type": content_type,
            "size": len(data),
        }
        if profile is not None:
            body["profile"] = profile
        if metadata is not None:
            body["metadata"] = metadata
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
        self,
        data: bytes,
        content_type: str = "image/jpeg",
        profile: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> str:
        created = await self.create(data, content_type, profile=profile, metadata=metadata)
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


def many_frame_gif(frames: int) -> bytes:
    """A GIF89a of `frames` 1×1 px frames, black and white in turn, made byte by byte
    (Pillow takes ~1 ms per frame to write one): 23 bytes a frame."""
    out = bytearray(b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff")
    out += b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"  # loop forever
    for index in range(frames):
        out += b"\x21\xf9\x04\x00\x01\x00\x00\x00"  # graphic control: 10 ms
        out += b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0)  # image descriptor
        # LZW, minimum code size 2: clear, the pixel's index, end of information.
        out += b"\x02\x02" + (b"\x44\x01" if index % 2 == 0 else b"\x4c\x01") + b"\x00"
    out += b"\x3b"
    return bytes(out)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    """One PNG chunk: length, type, body, CRC."""
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def with_png_chunk(png: bytes, kind: bytes, body: bytes) -> bytes:
    """The PNG with a chunk inserted right after IHDR."""
    after_ihdr = 8 + 12 + struct.unpack(">I", png[8:12])[0]
    return png[:after_ihdr] + png_chunk(kind, body) + png[after_ihdr:]


def make_png(width: int = 320, height: int = 240) -> bytes:
    img = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


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


def free_port() -> int:
    """A TCP port nothing listens on right now (for servers a test starts later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# The browser tests' pages (the demo page, the stock Uppy page) on ports of this run's
# own, so two runs on one machine never collide; the suite's `cors_origins` lists them
# (tests/conftest.py), so the gateway and the suite's bucket admit those pages. Here,
# not in a conftest: this module is imported under one name only.
BROWSER_PORTS = {"demo": free_port(), "uppy": free_port()}
BROWSER_ORIGINS = tuple(f"http://127.0.0.1:{port}" for port in BROWSER_PORTS.values())


# -- media made by the tests ------------------------------------------------------


def make_video(
    *,
    container: str = "mp4",
    codec: str = "libx264",
    width: int = 320,
    height: int = 240,
    seconds: float = 2.0,
    fps: int = 25,
    rotation: int | None = None,
    audio: bool = False,
    faststart: bool = False,
    noise: bool = False,
) -> bytes:
    """A real video encoded with PyAV: top half red, bottom half blue (so the poster's
    orientation shows), optionally incompressible noise instead (large files fast),
    a display-matrix rotation (counter-clockwise degrees, FFmpeg's convention) and
    a silent audio track. MP4s keep their index at the end unless `faststart`."""
    import os
    import tempfile

    import av

    if noise:
        frames = [
            Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))
            for _ in range(4)
        ]
    else:
        frame = Image.new("RGB", (width, height), (0, 0, 255))
        frame.paste((255, 0, 0), (0, 0, width, height // 2))
        frames = [frame]
    options = {"movflags": "faststart"} if faststart else {}
    encoder_options = {"preset": "ultrafast", "g": str(fps)} if codec == "libx264" else {}
    if codec == "libvpx-vp9":
        encoder_options = {"deadline": "realtime", "cpu-used": "8", "g": str(fps)}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"clip.{container}")
        with av.open(path, "w", format=container, options=options) as out:
            stream = out.add_stream(codec, rate=fps, options=encoder_options)
            stream.width, stream.height = width, height
            stream.pix_fmt = "yuv420p"
            if noise:
                stream.bit_rate = 20_000_000
            if rotation is not None:
                stream.set_display_rotation(rotation)
            sound = None
            if audio:
                sound = out.add_stream(
                    "aac" if container == "mp4" else "libopus", rate=48000, layout="mono"
                )
            for index in range(int(seconds * fps)):
                for packet in stream.encode(av.VideoFrame.from_image(frames[index % len(frames)])):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
            if sound is not None:
                samples = sound.codec_context.frame_size or 960
                for index in range(int(seconds * 48000) // samples):
                    chunk = av.AudioFrame(format="s16", layout="mono", samples=samples)
                    chunk.planes[0].update(bytes(2 * samples))
                    chunk.sample_rate, chunk.pts = 48000, index * samples
                    for packet in sound.encode(chunk):
                        out.mux(packet)
                for packet in sound.encode():
                    out.mux(packet)
        with open(path, "rb") as f:
            return f.read()


_TINY_MP4: list[bytes] = []


def tiny_mp4() -> bytes:
    """A small real MP4 (index first), made once: the start of every `mp4_like` file."""
    if not _TINY_MP4:
        _TINY_MP4.append(make_video(width=64, height=48, seconds=1.0, faststart=True))
    return _TINY_MP4[0]


def mp4_like(size: int) -> bytes:
    """A real, playable MP4 padded with incompressible bytes to exactly `size`."""
    import os

    head = tiny_mp4()
    return head + os.urandom(size - len(head))


def pdf_file(
    pages: list[tuple[float, float]] | None = None,
    *,
    info: dict[str, str] | None = None,
    user_password: str | None = None,
    owner_password: str = "owner",  # noqa: S107 - a test fixture's password
) -> bytes:
    """A PDF written by hand: each page top half red, bottom half blue.

    With `user_password` (may be "") the file is encrypted with the standard
    security handler (RC4, revision 2), strings and streams included.
    """
    import hashlib

    pages = pages or [(595.0, 842.0)]
    n = len(pages)
    objects: list[bytes] = [b"<< /Type /Catalog /Pages 2 0 R >>"]
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(n)).encode()
    objects.append(b"<< /Type /Pages /Kids [" + kids + b"] /Count %d >>" % n)
    for i, (w, h) in enumerate(pages):
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 %g %g] /Contents %d 0 R >>"
            % (w, h, 4 + 2 * i)
        )
        half = h / 2
        paint = b"1 0 0 rg 0 %g %g %g re f 0 0 1 rg 0 0 %g %g re f"
        objects.append(paint % (half, w, half, w, half))
    info_number = None
    if info:
        body = b" ".join(b"/%s (%s)" % (k.encode(), v.encode("latin-1")) for k, v in info.items())
        objects.append(b"<< " + body + b" >>")
        info_number = len(objects)
    streams = {4 + 2 * i for i in range(n)}

    file_id = hashlib.md5(b"clearance-test").digest()  # noqa: S324 - PDF's own scheme
    encrypt = None
    if user_password is not None:
        encrypt = _Rc4Security(user_password, owner_password, file_id)

    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        if encrypt is not None:
            body = encrypt.object(number, body, is_stream=number in streams)
        elif number in streams:
            body = b"<< /Length %d >>\nstream\n" % len(body) + body + b"\nendstream"
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    trailer = b"/Size %d /Root 1 0 R" % (len(objects) + 1)
    if info_number:
        trailer += b" /Info %d 0 R" % info_number
    if encrypt is not None:
        offsets.append(len(out))
        out += b"%d 0 obj\n" % (len(objects) + 1) + encrypt.dictionary() + b"\nendobj\n"
        trailer = b"/Size %d /Root 1 0 R /Encrypt %d 0 R" % (len(objects) + 2, len(objects) + 1)
        if info_number:
            trailer += b" /Info %d 0 R" % info_number
        trailer += b" /ID [<%s> <%s>]" % (file_id.hex().encode(), file_id.hex().encode())
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(offsets) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< " + trailer + b" >>\nstartxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)


_PAD = bytes.fromhex("28bf4e5e4e758a4164004e56fffa01082e2e00b6d0683e802f0ca9fe6453697a")


def _rc4(key: bytes, data: bytes) -> bytes:
    state = list(range(256))
    j = 0
    for i in range(256):
        j = (j + state[i] + key[i % len(key)]) % 256
        state[i], state[j] = state[j], state[i]
    i = j = 0
    out = bytearray()
    for byte in data:
        i = (i + 1) % 256
        j = (j + state[i]) % 256
        state[i], state[j] = state[j], state[i]
        out.append(byte ^ state[(state[i] + state[j]) % 256])
    return bytes(out)


class _Rc4Security:
    """PDF standard security handler, revision 2 (40-bit RC4): enough for tests."""

    def __init__(self, user: str, owner: str, file_id: bytes) -> None:
        import hashlib

        def padded(password: str) -> bytes:
            return (password.encode("latin-1") + _PAD)[:32]

        self.permissions = -4
        owner_key = hashlib.md5(padded(owner)).digest()[:5]  # noqa: S324
        self.owner_entry = _rc4(owner_key, padded(user))
        seed = padded(user) + self.owner_entry
        seed += struct.pack("<i", self.permissions) + file_id
        self.key = hashlib.md5(seed).digest()[:5]  # noqa: S324
        self.user_entry = _rc4(self.key, _PAD)

    def dictionary(self) -> bytes:
        return b"<< /Filter /Standard /V 1 /R 2 /O <%s> /U <%s> /P %d >>" % (
            self.owner_entry.hex().encode(),
            self.user_entry.hex().encode(),
            self.permissions,
        )

    def object(self, number: int, body: bytes, *, is_stream: bool) -> bytes:
        import hashlib
        import re

        key = hashlib.md5(self.key + struct.pack("<i", number)[:3] + b"\0\0").digest()[:10]  # noqa: S324
        if is_stream:
            data = _rc4(key, body)
            return b"<< /Length %d >>\nstream\n" % len(data) + data + b"\nendstream"
        # Literal strings (no nesting or escapes in the tests' dictionaries).
        return re.sub(
            rb"\(([^()]*)\)", lambda m: b"<" + _rc4(key, m.group(1)).hex().encode() + b">", body
        )


@asynccontextmanager
async def pipeline_workers(settings: Settings, name: str) -> AsyncIterator[None]:
    """The scanner and the processor consuming in this process, drained on exit."""
    with process_pool(1) as pool:
        async with worker_resources(settings, name) as (connection, resources):
            scan, scan_dead = await build_scanner(resources)
            proc, proc_dead = await build_processor(resources, pool)
            consumers = [
                Consumer(
                    connection, settings, scanner_queue(settings), scan, on_dead_letter=scan_dead
                ),
                Consumer(
                    connection, settings, processor_queue(settings), proc, on_dead_letter=proc_dead
                ),
            ]
            for consumer in consumers:
                await consumer.start()
            try:
                yield
            finally:
                for consumer in consumers:
                    await consumer.drain(5)
