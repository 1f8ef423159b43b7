"""A profile's image rules on the real pipeline: frames, metadata, trailing data.

Hostile files a client can upload under the `image` profile: a GIF of 10,000
frames, a PNG that is almost all text chunk, a JPEG with a ZIP appended and a PNG
with HTML appended (polyglots: one file that is also another). The first two are
refused with their reason; the appended payloads are cut off, so a download
serves the image alone. Under `media` (originals kept as uploaded) and a profile
that refuses trailing data, the same files go the other ways.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from botocore.exceptions import ClientError

from services.gateway.app import create_app
from shared.keys import PROFILE_METADATA, verified_key
from shared.s3 import is_not_found, s3_client
from shared.settings import MiB, Settings
from tests.support import (
    Uploads,
    make_jpeg,
    make_png,
    make_zip,
    many_frame_gif,
    pipeline_workers,
    with_png_chunk,
)

pytestmark = pytest.mark.integration

STRICT = "strict-image"  # the image profile, refusing trailing data
ZIP = make_zip(**{"index.html": b"<script>fetch('/steal?c=' + document.cookie)</script>" * 50})
HTML = b"<html><body><script>alert(document.domain)</script></body></html>"


@pytest.fixture(scope="module")
def strict_settings(settings: Settings) -> Settings:
    profiles = dict(settings.profiles)
    profiles[STRICT] = settings.profiles["image"].model_copy(update={"trailing_data": "reject"})
    return settings.model_copy(update={"profiles": profiles})


@pytest.fixture(scope="module")
async def workers(strict_settings: Settings, gateway: str) -> AsyncIterator[None]:
    """Scanner and processor in this process; the processor knows the strict profile."""
    async with pipeline_workers(strict_settings, "test-image-workers"):
        yield


@pytest.fixture(scope="module")
async def strict_gateway(strict_settings: Settings, gateway: str) -> AsyncIterator[str]:
    """A second gateway (same database and broker) that offers the strict profile."""
    server = TestServer(create_app(strict_settings, with_reconciler=False), host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


@pytest.fixture
def uploads(http: ClientSession, gateway: str, owner_headers: dict[str, str]) -> Uploads:
    return Uploads(http, gateway, owner_headers)


async def upload(uploads: Uploads, data: bytes, content_type: str, profile: str) -> dict[str, Any]:
    upload_id = await uploads.send(data, content_type, profile=profile)
    return await uploads.wait_final(upload_id)


async def downloaded(uploads: Uploads, upload_id: str) -> bytes:
    async with uploads.http.get(
        f"{uploads.gateway}/v1/uploads/{upload_id}/download",
        headers=uploads.headers,
        allow_redirects=False,
    ) as resp:
        assert resp.status == 302, await resp.text()
        location = resp.headers["Location"]
    async with uploads.http.get(location) as resp:
        assert resp.status == 200
        return await resp.read()


async def verified_copy(settings: Settings, key: str) -> int | None:
    """The size of the verified copy of `key`, None if storage holds none."""
    async with s3_client(settings) as s3:
        try:
            head = await s3.head_object(
                Bucket=settings.bucket, Key=verified_key(settings.verified_prefix, key)
            )
        except ClientError as exc:
            if is_not_found(exc):
                return None
            raise
    return int(head["ContentLength"])


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_a_gif_of_ten_thousand_frames_is_rejected(
    uploads: Uploads, workers: None, settings: Settings
) -> None:
    data = many_frame_gif(10_000)

    record = await upload(uploads, data, "image/gif", "image")

    assert record["status"] == "rejected", record
    assert record["timeline"][-1]["detail"]["code"] == "too_many_frames"
    assert "more than 1000 frames" in record["reason"]
    # Storage copies the file while it is checked: a refused file keeps no copy.
    assert await verified_copy(settings, record["key"]) is None


async def test_a_png_with_an_8_mb_text_chunk_is_rejected(uploads: Uploads, workers: None) -> None:
    data = with_png_chunk(make_png(), b"tEXt", b"Comment\0" + b"x" * (8 * MiB))
    assert len(data) < 10_000_000  # within the profile's size: only the rule refuses it

    record = await upload(uploads, data, "image/png", "image")

    assert record["status"] == "rejected", record
    assert record["timeline"][-1]["detail"]["code"] == "metadata_too_large"
    assert f"holds {8 * MiB + 20} bytes of metadata" in record["reason"]


@pytest.mark.parametrize(
    ("image", "payload", "content_type"),
    [(make_jpeg(), ZIP, "image/jpeg"), (make_png(), HTML, "image/png")],
    ids=["jpeg+zip", "png+html"],
)
async def test_an_appended_payload_is_never_served(
    uploads: Uploads, workers: None, settings: Settings, image: bytes, payload: bytes,
    content_type: str,
) -> None:  # fmt: skip
    sent = image + payload

    record = await upload(uploads, sent, content_type, "image")

    assert record["status"] == "ready", record
    detected = record["detected"]
    assert detected["trailing_bytes"] == detected["trailing_bytes_removed"] == len(payload)
    assert (detected["size"], detected["sha256"]) == (len(sent), sha256(sent))
    assert (detected["served_size"], detected["served_sha256"]) == (len(image), sha256(image))
    assert await downloaded(uploads, record["id"]) == image
    # The verified copy is the image alone, and still says which profile it was under.
    async with s3_client(settings) as s3:
        head = await s3.head_object(
            Bucket=settings.bucket,
            Key=verified_key(settings.verified_prefix, record["key"]),
        )
    assert head["ContentLength"] == len(image)
    assert head["ContentType"] == content_type
    assert head["Metadata"] == {PROFILE_METADATA: "image"}


async def test_media_keeps_the_upload_as_it_came(uploads: Uploads, workers: None) -> None:
    sent = make_jpeg() + ZIP

    record = await upload(uploads, sent, "image/jpeg", "media")

    assert record["status"] == "ready", record
    detected = record["detected"]
    assert (detected["trailing_bytes"], detected["trailing_bytes_removed"]) == (len(ZIP), 0)
    assert detected["served_sha256"] == detected["sha256"] == sha256(sent)
    assert await downloaded(uploads, record["id"]) == sent


async def test_a_profile_may_refuse_trailing_data(
    http: ClientSession,
    strict_gateway: str,
    owner_headers: dict[str, str],
    workers: None,
    settings: Settings,
) -> None:
    strict = Uploads(http, strict_gateway, owner_headers)
    jpeg = make_jpeg()

    refused = await upload(strict, jpeg + ZIP, "image/jpeg", STRICT)
    clean = await upload(strict, jpeg, "image/jpeg", STRICT)

    assert refused["status"] == "rejected", refused
    assert refused["timeline"][-1]["detail"]["code"] == "trailing_data"
    assert await verified_copy(settings, refused["key"]) is None
    assert refused["reason"].startswith(f"{len(ZIP)} bytes follow the end of the JPEG")
    assert clean["status"] == "ready", clean
    assert clean["detected"]["trailing_bytes"] == 0
    assert await verified_copy(settings, clean["key"]) == len(jpeg)
