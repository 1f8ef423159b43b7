"""Multipart uploads against the real stack: parts straight to storage, checked completion."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import ClientSession, web
from botocore.exceptions import ClientError

from services.gateway.appkeys import POOL, S3, UPLOADS
from services.gateway.reconciler import Reconciler
from shared.keys import PROFILE_METADATA
from shared.settings import MiB, Settings
from tests.support import Uploads, mp4_like

pytestmark = pytest.mark.integration


@pytest.fixture
def uploads(http: ClientSession, gateway: str, owner_headers: dict[str, str]) -> Uploads:
    return Uploads(http, gateway, owner_headers)


class Multipart:
    def __init__(self, uploads: Uploads) -> None:
        self.u = uploads

    async def create(self, size: int, content_type: str = "video/mp4") -> dict[str, Any]:
        async with self.u.http.post(
            f"{self.u.gateway}/v1/uploads",
            json={
                "filename": "clip.mp4",
                "content_type": content_type,
                "size": size,
                "profile": "media",
            },
            headers=self.u.headers,
        ) as resp:
            assert resp.status == 201, await resp.text()
            created: dict[str, Any] = await resp.json()
        return created

    async def sign(self, upload_id: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        async with self.u.http.post(
            f"{self.u.gateway}/v1/uploads/{upload_id}/parts", json=body, headers=self.u.headers
        ) as resp:
            return resp.status, await resp.json(content_type=None)

    async def put_part(self, part: dict[str, Any], data: bytes) -> tuple[int, str]:
        async with self.u.http.put(
            part["url"], data=io.BytesIO(data), headers=part["headers"]
        ) as resp:
            await resp.read()
            return resp.status, resp.headers.get("ETag", "")

    async def complete(
        self, upload_id: str, parts: list[dict[str, Any]]
    ) -> tuple[int, dict[str, Any]]:
        async with self.u.http.post(
            f"{self.u.gateway}/v1/uploads/{upload_id}/complete",
            json={"parts": parts},
            headers=self.u.headers,
        ) as resp:
            return resp.status, await resp.json(content_type=None)

    async def send_parts(
        self, created: dict[str, Any], data: bytes, numbers: list[int]
    ) -> list[dict[str, Any]]:
        size = created["multipart"]["part_size"]
        status, signed = await self.sign(created["id"], {"part_numbers": numbers})
        assert status == 200, signed
        sem = asyncio.Semaphore(4)

        async def one(part: dict[str, Any]) -> dict[str, Any]:
            n = part["part_number"]
            async with sem:
                code, etag = await self.put_part(part, data[(n - 1) * size : n * size])
            assert code == 200
            return {"part_number": n, "etag": etag}

        return list(await asyncio.gather(*(one(p) for p in signed["parts"])))


@pytest.fixture
def mp(uploads: Uploads) -> Multipart:
    return Multipart(uploads)


async def test_a_120_mib_file_goes_to_ready_in_parallel_parts(
    mp: Multipart,
    uploads: Uploads,
    workers: None,
    http: ClientSession,
    gateway_app: web.Application,
    settings: Settings,
) -> None:
    data = mp4_like(120 * MiB)
    created = await mp.create(len(data))
    assert "upload" not in created or created["upload"] is None
    assert created["multipart"] == {"part_size": 8 * MiB, "part_count": 15}
    count = created["multipart"]["part_count"]

    first = await mp.send_parts(created, data, list(range(1, 8)))
    assert (await uploads.get(created["id"]))["status"] == "uploading"
    # After a "crash", storage tells which parts are there; send only the rest.
    async with http.get(
        f"{uploads.gateway}/v1/uploads/{created['id']}/parts", headers=uploads.headers
    ) as resp:
        listed = (await resp.json())["parts"]
    assert [p["part_number"] for p in listed] == list(range(1, 8))
    assert all(p["size"] == 8 * MiB for p in listed)
    rest = await mp.send_parts(created, data, list(range(8, count + 1)))

    status, body = await mp.complete(created["id"], first + rest)
    assert status == 202, body
    record = await uploads.wait_final(created["id"])
    assert record["status"] == "ready", record
    assert record["detected"]["sha256"] == hashlib.sha256(data).hexdigest()
    # The (header-signed) multipart create gave the object its profile, as a PUT does.
    head = await gateway_app[S3].head_object(Bucket=settings.bucket, Key=created["key"])
    assert head["Metadata"] == {PROFILE_METADATA: "media"}
    async with http.get(
        f"{uploads.gateway}/v1/uploads/{created['id']}/download",
        headers=uploads.headers,
        allow_redirects=False,
    ) as resp:
        location = resp.headers["Location"]
    digest = hashlib.sha256()
    async with http.get(location) as resp:
        async for chunk in resp.content.iter_chunked(1 << 20):
            digest.update(chunk)
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()


async def test_a_part_that_does_not_match_its_checksum_is_refused(mp: Multipart) -> None:
    data = mp4_like(101 * MiB)
    created = await mp.create(len(data))
    part = data[: 8 * MiB]
    checksum = base64.b64encode(hashlib.sha256(part).digest()).decode()
    status, signed = await mp.sign(
        created["id"], {"part_numbers": [1], "checksums": {"1": checksum}}
    )
    assert status == 200, signed
    signed_part = signed["parts"][0]
    assert signed_part["headers"]["x-amz-checksum-sha256"] == checksum
    corrupted = bytes([part[0] ^ 1]) + part[1:]
    code, _ = await mp.put_part(signed_part, corrupted)
    assert code in (400, 403)
    code, _ = await mp.put_part(signed_part, part)
    assert code == 200


async def test_part_numbers_and_completion_are_checked(mp: Multipart, uploads: Uploads) -> None:
    data = mp4_like(101 * MiB)  # 13 parts of 8 MiB, the last one 5 MiB
    created = await mp.create(len(data))
    for bad in ([0], [14], [1, 1]):
        status, problem = await mp.sign(created["id"], {"part_numbers": bad})
        assert status == 422, problem
        assert problem["errors"][0]["field"] == "part_numbers"
    status, problem = await mp.sign(created["id"], {"part_numbers": [1], "checksums": {"2": "x"}})
    assert status == 422

    parts = await mp.send_parts(created, data, list(range(1, 13)))
    # Missing the last part: nothing is completed.
    status, problem = await mp.complete(created["id"], parts)
    assert status == 422, problem
    assert "missing" in problem["errors"][0]["message"]
    parts += await mp.send_parts(created, data, [13])
    wrong = [dict(p) for p in parts]
    wrong[3]["etag"] = '"0123456789abcdef0123456789abcdef"'
    status, problem = await mp.complete(created["id"], wrong)
    assert status == 422, problem
    assert problem["errors"][0]["field"] == "parts.4"
    assert (await uploads.get(created["id"]))["status"] == "uploading"

    # Quoted and unquoted ETags both work.
    fixed = [{"part_number": p["part_number"], "etag": p["etag"].strip('"')} for p in parts]
    status, body = await mp.complete(created["id"], fixed)
    assert status == 202, body
    # Single-PUT style completion of a multipart upload is refused.
    other = await mp.create(len(data))
    async with uploads.http.post(
        f"{uploads.gateway}/v1/uploads/{other['id']}/complete", json={}, headers=uploads.headers
    ) as resp:
        assert resp.status == 422


async def test_abort_leaves_no_parts_in_storage(
    mp: Multipart, uploads: Uploads, gateway_app: web.Application, settings: Settings
) -> None:
    data = mp4_like(101 * MiB)
    created = await mp.create(len(data))
    await mp.send_parts(created, data, [1, 2])
    async with uploads.http.delete(
        f"{uploads.gateway}/v1/uploads/{created['id']}", headers=uploads.headers
    ) as resp:
        assert resp.status == 204
    assert (await uploads.get(created["id"]))["status"] == "aborted"
    s3 = gateway_app[S3]
    listing = await s3.list_multipart_uploads(Bucket=settings.bucket, Prefix=created["key"])
    assert listing.get("Uploads", []) == []


async def test_an_abandoned_multipart_upload_is_aborted_by_the_reconciler(
    mp: Multipart, uploads: Uploads, gateway_app: web.Application, settings: Settings
) -> None:
    data = mp4_like(101 * MiB)
    created = await mp.create(len(data))
    await mp.send_parts(created, data, [1])
    pool = gateway_app[POOL]
    upload_id = await pool.fetchval(
        "SELECT multipart_upload_id FROM uploads WHERE id = $1::uuid", created["id"]
    )
    reconciler = Reconciler(gateway_app[UPLOADS])
    later = datetime.now(UTC) + timedelta(seconds=settings.multipart_abandon_seconds + 60)
    report = await reconciler.run_once(now=later)
    assert created["id"] in report.expired
    assert (await uploads.get(created["id"]))["status"] == "expired"
    with pytest.raises(ClientError, match="NoSuchUpload"):
        await gateway_app[S3].list_parts(
            Bucket=settings.bucket, Key=created["key"], UploadId=upload_id
        )
