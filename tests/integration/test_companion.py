"""The Uppy Companion-compatible `/s3` routes against the real gateway and storage.

Each route answers the shape `@uppy/aws-s3` reads; POST-policy uploads are real
`multipart/form-data` POSTs that SeaweedFS checks against the signed policy; multipart
uploads complete through the routes and the files go through the same pipeline as
`/v1` uploads, to `ready`.
"""

from __future__ import annotations

import base64
import io
import json
import os
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import ClientSession, FormData, web
from aiohttp.test_utils import TestServer
from botocore.exceptions import ClientError

from services.gateway.app import create_app
from services.gateway.appkeys import PUBLISHER, S3, UPLOADS
from services.gateway.reconciler import Reconciler
from services.gateway.storage import unquoted
from shared.events import ObjectCreated
from shared.keys import PROFILE_METADATA, upload_id_from_key
from shared.settings import MiB, Settings, UploadPolicy
from tests.support import Uploads, make_jpeg, pdf_file, tiny_mp4

pytestmark = pytest.mark.integration

# A real, playable MP4: the processor decodes what follows the header now.
MP4_HEADER = tiny_mp4()


def mp4_like(size: int) -> bytes:
    """A small real MP4 followed by incompressible bytes."""
    return MP4_HEADER + os.urandom(size - len(MP4_HEADER))


class Companion:
    """What `@uppy/aws-s3` does against `companionEndpoint`, step by step."""

    def __init__(self, http: ClientSession, gateway: str, headers: dict[str, str]) -> None:
        self.http, self.gateway, self.headers = http, gateway, headers

    async def call(
        self, method: str, path: str, *, json_body: Any = None, data: bytes | None = None
    ) -> tuple[int, Any]:
        # Raw bytes go as JSON too, as Uppy sends every body.
        headers = self.headers | ({"Content-Type": "application/json"} if data else {})
        async with self.http.request(
            method, f"{self.gateway}/s3{path}", json=json_body, data=data, headers=headers
        ) as resp:
            body = await resp.json(content_type=None)
            if resp.status >= 400:
                assert resp.content_type == "application/json", (resp.status, body)
                assert isinstance(body.get("error"), str), body
                assert body["error"], body
            return resp.status, body

    async def params(self, **query: str) -> tuple[int, Any]:
        qs = "&".join(f"{k}={v}" for k, v in query.items())
        return await self.call("GET", f"/params?{qs}")

    async def post_form(self, signed: dict[str, Any], data: bytes, **override: str) -> int:
        form = FormData()
        for name, value in (signed["fields"] | override).items():
            form.add_field(name, value)
        form.add_field("file", io.BytesIO(data), filename="f", content_type="image/jpeg")
        async with self.http.post(signed["url"], data=form) as resp:
            await resp.read()
            return resp.status

    async def start(self, filename: str = "clip.mp4", type_: str = "video/mp4", **meta: str) -> Any:
        status, body = await self.call(
            "POST", "/multipart", json_body={"filename": filename, "type": type_, "metadata": meta}
        )
        assert status == 200, body
        return body

    async def put_part(self, started: dict[str, Any], number: int, data: bytes) -> str:
        status, signed = await self.call(
            "GET", f"/multipart/{started['uploadId']}/{number}?key={started['key']}"
        )
        assert status == 200, signed
        # Raw bytes, no content type: what Uppy sends.
        async with self.http.put(signed["url"], data=io.BytesIO(data)) as resp:
            assert resp.status == 200, await resp.text()
            return resp.headers["ETag"]

    async def complete(self, started: dict[str, Any], parts: list[dict[str, Any]]) -> Any:
        return await self.call(
            "POST",
            f"/multipart/{started['uploadId']}/complete?key={started['key']}",
            json_body={"parts": parts},
        )


@pytest.fixture
def companion(http: ClientSession, gateway: str, owner_headers: dict[str, str]) -> Companion:
    return Companion(http, gateway, owner_headers)


@pytest.fixture
def uploads(http: ClientSession, gateway: str, owner_headers: dict[str, str]) -> Uploads:
    return Uploads(http, gateway, owner_headers)


def upload_id_of(settings: Settings, key: str) -> str:
    parsed = upload_id_from_key(settings.upload_prefix, key)
    assert parsed is not None, key
    return str(parsed)


async def test_params_signs_a_post_policy_that_storage_enforces(
    companion: Companion,
    uploads: Uploads,
    settings: Settings,
    gateway_app: web.Application,
    workers: None,
) -> None:
    status, signed = await companion.params(filename="cat photo.jpg", type="image/jpeg")
    assert status == 200, signed
    assert signed["method"] == "POST"
    assert signed["expires"] == settings.presign_ttl_seconds
    assert signed["url"] == f"{settings.browser_s3_endpoint}/{settings.bucket}/"
    fields = signed["fields"]
    key = fields["key"]
    assert key.startswith(f"{settings.upload_prefix}/")
    assert "cat" not in key
    assert fields["Content-Type"] == "image/jpeg"
    assert fields["x-amz-server-side-encryption"] == "AES256"
    assert fields["success_action_status"] == "201"
    assert fields["x-amz-algorithm"] == "AWS4-HMAC-SHA256"
    assert fields[f"x-amz-meta-{PROFILE_METADATA}"] == "image"
    conditions = json.loads(base64.b64decode(fields["policy"]))["conditions"]
    assert ["content-length-range", 1, 10_000_000] in conditions  # the image profile
    assert {f"x-amz-meta-{PROFILE_METADATA}": "image"} in conditions
    assert {"key": key} in conditions

    upload_id = upload_id_of(settings, key)
    record = await uploads.get(upload_id)
    assert (record["status"], record["profile"], record["size"]) == ("pending", "image", 0)
    assert record["filename"] == "cat photo.jpg"

    # Storage itself refuses what the policy does not allow.
    assert await companion.post_form(signed, b"\xff" * 10_000_001) == 400  # EntityTooLarge
    assert await companion.post_form(signed, b"x", **{"Content-Type": "image/png"}) == 403
    assert await companion.post_form(signed, b"x", key=key + "x") == 403
    assert await companion.post_form(signed, b"x", **{"x-amz-signature": "0" * 64}) == 403
    other_profile = {f"x-amz-meta-{PROFILE_METADATA}": "media"}
    assert await companion.post_form(signed, b"x", **other_profile) == 403

    data = make_jpeg(800, 600)
    assert await companion.post_form(signed, data) == 201
    s3 = gateway_app[S3]
    head = await s3.head_object(Bucket=settings.bucket, Key=key)
    assert head["ContentLength"] == len(data)
    assert (head["ContentType"], head["ServerSideEncryption"]) == ("image/jpeg", "AES256")
    assert head["Metadata"] == {PROFILE_METADATA: "image"}  # the processor applies its rules

    # No complete call in this flow: storage's notification (what the relay publishes)
    # drives it, and the recorder takes the landed size for the undeclared one.
    event = ObjectCreated.build(
        upload_id=uuid.UUID(upload_id),
        bucket=settings.bucket,
        key=key,
        size=len(data),
        etag=str(head["ETag"]).strip('"'),
        source="seaweedfs",
    )
    await gateway_app[PUBLISHER].publish(event)
    record = await uploads.wait_final(upload_id)
    assert record["status"] == "ready", record
    assert record["size"] == len(data)
    assert record["detected"]["type"] == "image/jpeg"
    assert {t["size"] for t in record["thumbnails"]} == set(settings.thumbnail_sizes)


async def test_a_post_upload_without_notification_is_found_by_the_reconciler(
    companion: Companion,
    uploads: Uploads,
    settings: Settings,
    gateway_app: web.Application,
    workers: None,
) -> None:
    status, signed = await companion.params(
        filename="scan.pdf", type="application/pdf", **{"metadata[profile]": "media"}
    )
    assert status == 200, signed
    conditions = json.loads(base64.b64decode(signed["fields"]["policy"]))["conditions"]
    assert ["content-length-range", 1, 2000 * MiB] in conditions
    data = pdf_file()
    assert await companion.post_form(signed, data) == 201

    upload_id = upload_id_of(settings, signed["fields"]["key"])
    reconciler = Reconciler(gateway_app[UPLOADS])
    report = await reconciler.run_once(now=datetime.now(UTC) + timedelta(hours=1))
    assert upload_id in report.landed
    record = await uploads.wait_final(upload_id)
    assert (record["status"], record["profile"], record["size"]) == ("ready", "media", len(data))


async def test_multipart_through_the_routes_completes_with_quoted_and_unquoted_etags(
    companion: Companion,
    uploads: Uploads,
    settings: Settings,
    gateway_app: web.Application,
    workers: None,
) -> None:
    data = mp4_like(11 * MiB + 12_345)
    started = await companion.start("clip.mp4", "video/mp4")
    assert set(started) == {"key", "uploadId", "bucket"}
    assert started["bucket"] == settings.bucket
    upload_id = upload_id_of(settings, started["key"])
    assert (await uploads.get(upload_id))["profile"] == "media"

    chunk = 5 * MiB
    etags = {1: await companion.put_part(started, 1, data[:chunk])}
    assert (await uploads.get(upload_id))["status"] == "uploading"
    # Older clients sign in batches.
    status, batch = await companion.call(
        "GET", f"/multipart/{started['uploadId']}/batch?key={started['key']}&partNumbers=2,3"
    )
    assert status == 200, batch
    assert set(batch["presignedUrls"]) == {"2", "3"}
    for n in (2, 3):
        async with companion.http.put(
            batch["presignedUrls"][str(n)], data=io.BytesIO(data[(n - 1) * chunk : n * chunk])
        ) as resp:
            assert resp.status == 200
            etags[n] = resp.headers["ETag"]

    status, listed = await companion.call(
        "GET", f"/multipart/{started['uploadId']}?key={started['key']}"
    )
    assert status == 200, listed
    assert [p["PartNumber"] for p in listed] == [1, 2, 3]
    assert [p["Size"] for p in listed] == [chunk, chunk, len(data) - 2 * chunk]
    assert [unquoted(p["ETag"]) for p in listed] == [unquoted(etags[n]) for n in (1, 2, 3)]
    assert all(datetime.fromisoformat(p["LastModified"]) for p in listed)

    parts = [
        {"PartNumber": 1, "ETag": etags[1]},  # quoted, as storage sends it
        {"PartNumber": 2, "ETag": unquoted(etags[2])},  # unquoted, as Uppy 6 sends it
        {"PartNumber": 3, "ETag": etags[3]},
    ]
    status, done = await companion.complete(started, parts)
    assert status == 200, done
    assert done == {
        "location": f"{settings.browser_s3_endpoint}/{settings.bucket}/{started['key']}",
        "key": started["key"],
        "bucket": settings.bucket,
    }
    head = await gateway_app[S3].head_object(Bucket=settings.bucket, Key=started["key"])
    assert head["ContentLength"] == len(data)
    assert head["Metadata"] == {PROFILE_METADATA: "media"}
    # A retried complete (Uppy retries on network errors) is answered the same way.
    assert await companion.complete(started, parts) == (200, done)

    record = await uploads.wait_final(upload_id)
    assert (record["status"], record["size"]) == ("ready", len(data)), record
    assert record["detected"]["type"] == "video/mp4"


async def test_abort_frees_storage_and_records_aborted(
    companion: Companion, uploads: Uploads, settings: Settings, gateway_app: web.Application
) -> None:
    started = await companion.start()
    await companion.put_part(started, 1, os.urandom(5 * MiB))
    path = f"/multipart/{started['uploadId']}?key={started['key']}"
    assert await companion.call("DELETE", path) == (200, {})
    with pytest.raises(ClientError) as gone:
        await gateway_app[S3].list_parts(
            Bucket=settings.bucket, Key=started["key"], UploadId=started["uploadId"]
        )
    assert gone.value.response["Error"]["Code"] == "NoSuchUpload"
    record = await uploads.get(upload_id_of(settings, started["key"]))
    assert record["status"] == "aborted"
    assert await companion.call("DELETE", path) == (200, {})  # idempotent
    status, body = await companion.call(
        "GET", f"/multipart/{started['uploadId']}/2?key={started['key']}"
    )
    assert status == 409, body


async def test_another_owners_upload_is_not_found(
    http: ClientSession,
    gateway: str,
    companion: Companion,
    token: Callable[..., str],
    settings: Settings,
) -> None:
    started = await companion.start()
    etag = await companion.put_part(started, 1, os.urandom(5 * MiB))
    mallory = Companion(http, gateway, {"Authorization": f"Bearer {token('mallory')}"})
    where = f"{started['uploadId']}?key={started['key']}"
    for method, path, body in [
        ("GET", f"/multipart/{started['uploadId']}/1?key={started['key']}", None),
        ("GET", f"/multipart/{started['uploadId']}/batch?key={started['key']}&partNumbers=1", None),
        ("GET", f"/multipart/{where}", None),
        (
            "POST",
            f"/multipart/{started['uploadId']}/complete?key={started['key']}",
            {"parts": [{"PartNumber": 1, "ETag": etag}]},
        ),
        ("DELETE", f"/multipart/{where}", None),
    ]:
        status, answer = await mallory.call(method, path, json_body=body)
        assert status == 404, (method, path, answer)
    async with http.get(
        f"{gateway}/v1/uploads/{upload_id_of(settings, started['key'])}", headers=mallory.headers
    ) as resp:
        assert resp.status == 404
    # The owner's upload is untouched.
    status, listed = await companion.call("GET", f"/multipart/{where}")
    assert (status, len(listed)) == (200, 1)


async def test_bad_requests_get_precise_error_objects(
    http: ClientSession, gateway: str, companion: Companion
) -> None:
    cases: list[tuple[str, str, Any, int]] = [
        ("GET", "/params?type=image/jpeg", None, 400),  # no filename
        ("GET", "/params?filename=a.jpg", None, 400),  # no type
        ("GET", "/params?filename=a.txt&type=text/plain", None, 422),
        ("GET", "/params?filename=a.jpg&type=image/jpeg&metadata[profile]=nope", None, 422),
        ("GET", "/params?filename=a.mp4&type=video/mp4&metadata[profile]=image", None, 422),
        ("GET", "/params?filename=../a.jpg&type=image/jpeg", None, 422),
        ("POST", "/multipart", {"filename": "a.jpg"}, 400),  # no type
        ("POST", "/multipart", {"filename": "a.jpg", "type": 5}, 400),
        ("POST", "/multipart", ["not", "an", "object"], 400),
        ("POST", "/multipart", {"filename": "a.txt", "type": "text/plain"}, 422),
        (
            "POST",
            "/multipart",
            {"filename": "a.jpg", "type": "image/jpeg", "metadata": {"profile": "image"}},
            422,  # the image profile takes single uploads only
        ),
        ("GET", "/multipart/abc/1", None, 400),  # no key
        ("GET", "/multipart/abc/1?key=uploads/x/y", None, 404),
        ("GET", f"/multipart/abc/1?key=uploads/0123456789abcdef/{uuid.uuid4()}", None, 404),
        ("DELETE", "/multipart/abc?key=elsewhere", None, 404),
    ]
    for method, path, body, expected in cases:
        status, answer = await companion.call(method, path, json_body=body)
        assert status == expected, (method, path, answer)
    status, answer = await companion.call("POST", "/multipart", data=b"{not json")
    assert status == 400, answer

    started = await companion.start()
    base = f"/multipart/{started['uploadId']}"
    for number in ("0", "401", "99999999999"):
        status, answer = await companion.call("GET", f"{base}/{number}?key={started['key']}")
        assert status == 400, (number, answer)
    status, answer = await companion.call(
        "GET", f"/multipart/not-the-upload-id/1?key={started['key']}"
    )
    assert status == 404, answer
    etag = await companion.put_part(started, 1, os.urandom(5 * MiB))
    bad_part_lists: list[list[dict[str, Any]]] = [
        [],
        [{"PartNumber": 1, "ETag": '"0123"'}],  # not the stored ETag
        [{"PartNumber": 2, "ETag": etag}],  # never uploaded
        [{"PartNumber": 1, "ETag": etag}, {"PartNumber": 1, "ETag": etag}],
        [{"PartNumber": 1}],
    ]
    for parts in bad_part_lists:
        status, answer = await companion.complete(started, parts)
        assert status == 400, (parts, answer)
    # The upload is still whole: a correct list completes it.
    status, answer = await companion.complete(started, [{"PartNumber": 1, "ETag": etag}])
    assert status == 200, answer

    # Without a token the gateway's auth answers first (problem+json; Uppy reads the status).
    async with http.get(f"{gateway}/s3/params?filename=a.jpg&type=image/jpeg") as resp:
        assert resp.status == 401


@pytest.fixture
async def tiny_gateway(settings: Settings, database: str) -> AsyncIterator[str]:
    """A second gateway whose `tiny` profile allows at most 6 MiB, multipart above 5 MiB."""
    profiles = dict(settings.profiles)
    profiles["tiny"] = UploadPolicy(
        content_types=frozenset({"video/mp4"}), max_size=6 * MiB, multipart_threshold=5 * MiB
    )
    tiny = settings.model_copy(update={"profiles": profiles})
    server = TestServer(
        create_app(tiny, with_broker=False, with_reconciler=False), host="127.0.0.1"
    )
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


async def test_an_oversized_multipart_upload_is_rejected_at_completion(
    http: ClientSession,
    tiny_gateway: str,
    owner_headers: dict[str, str],
    settings: Settings,
    gateway_app: web.Application,
) -> None:
    companion = Companion(http, tiny_gateway, owner_headers)
    started = await companion.start("big.mp4", "video/mp4", profile="tiny")
    parts = [
        {"PartNumber": 1, "ETag": await companion.put_part(started, 1, mp4_like(5 * MiB))},
        {"PartNumber": 2, "ETag": await companion.put_part(started, 2, os.urandom(2 * MiB))},
    ]
    status, answer = await companion.complete(started, parts)
    assert status == 413, answer
    record = await Uploads(http, tiny_gateway, owner_headers).get(
        upload_id_of(settings, started["key"])
    )
    assert record["status"] == "rejected"
    assert str(7 * MiB) in record["reason"]
    s3 = gateway_app[S3]
    with pytest.raises(ClientError) as gone:
        await s3.list_parts(
            Bucket=settings.bucket, Key=started["key"], UploadId=started["uploadId"]
        )
    assert gone.value.response["Error"]["Code"] == "NoSuchUpload"
    with pytest.raises(ClientError):
        await s3.head_object(Bucket=settings.bucket, Key=started["key"])
    # The POST policy of the same profile caps a single upload at 6 MiB too.
    status, signed = await companion.params(
        filename="b.mp4", type="video/mp4", **{"metadata[profile]": "tiny"}
    )
    assert status == 200, signed
    assert await companion.post_form(signed, b"\0" * (6 * MiB + 1)) == 400
