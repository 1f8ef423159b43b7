"""The upload contract end to end: gateway → presigned PUT → SeaweedFS → complete."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import jwt
import pytest
from aiohttp import ClientSession
from botocore.config import Config

from shared.keys import PROFILE_METADATA
from shared.s3 import browser_presigner
from shared.settings import Settings

pytestmark = pytest.mark.integration

VALID = {"filename": "cat.jpg", "content_type": "image/jpeg", "size": 1000}


def assert_problem(status: int, body: dict[str, Any], expected: int, field: str | None) -> None:
    assert status == expected, body
    assert {"type", "title", "status", "detail"} <= body.keys()
    assert body["status"] == expected
    if field is not None:
        assert field in [e["field"] for e in body["errors"]], body


async def post_upload(
    http: ClientSession, gateway: str, headers: dict[str, str], body: Any
) -> tuple[int, dict[str, Any], str]:
    async with http.post(f"{gateway}/v1/uploads", json=body, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None), resp.content_type


@pytest.fixture(scope="module")
def s3(settings: Settings) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key,
        aws_secret_access_key=settings.s3_secret_key.get_secret_value(),
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"filename": ""}, "filename"),
        ({"filename": "a" * 197 + ".jpg"}, "filename"),
        ({"filename": "../etc/passwd"}, "filename"),
        ({"content_type": "image/svg+xml"}, "content_type"),
        ({"size": 0}, "size"),
        ({"size": -1}, "size"),
        ({"size": 10_000_001}, "size"),
        ({"size": 1.5}, "size"),
        ({"size": "1000"}, "size"),
        ({"size": True}, "size"),
        ({"sha256": "not-a-digest"}, "sha256"),
        ({"profile": "nope"}, "profile"),
        ({"colour": "blue"}, "colour"),
    ],
)
async def test_declared_file_outside_policy_is_refused_naming_the_field(
    http: ClientSession,
    gateway: str,
    owner_headers: dict[str, str],
    change: dict[str, Any],
    field: str,
) -> None:
    status, body, ctype = await post_upload(http, gateway, owner_headers, VALID | change)
    assert ctype == "application/problem+json"
    assert_problem(status, body, 422, field)


@pytest.mark.parametrize("missing", ["filename", "content_type", "size"])
async def test_missing_field_is_named(
    http: ClientSession, gateway: str, owner_headers: dict[str, str], missing: str
) -> None:
    body = {k: v for k, v in VALID.items() if k != missing}
    status, problem, _ = await post_upload(http, gateway, owner_headers, body)
    assert_problem(status, problem, 422, missing)


async def test_filename_of_exactly_200_characters_is_accepted(
    http: ClientSession, gateway: str, owner_headers: dict[str, str]
) -> None:
    status, body, _ = await post_upload(
        http, gateway, owner_headers, VALID | {"filename": "b" * 196 + ".jpg"}
    )
    assert status == 201, body


@pytest.mark.parametrize(
    ("payload", "expected"),
    [(b"{not json", 400), (b"[1, 2]", 400), (b"", 400), (b"x" * 200_000, 413)],
)
async def test_malformed_or_oversized_bodies_get_a_problem(
    http: ClientSession,
    gateway: str,
    owner_headers: dict[str, str],
    payload: bytes,
    expected: int,
) -> None:
    headers = owner_headers | {"Content-Type": "application/json"}
    async with http.post(f"{gateway}/v1/uploads", data=payload, headers=headers) as resp:
        assert resp.status == expected
        assert resp.content_type == "application/problem+json"
        body = await resp.json(content_type=None)
    assert_problem(resp.status, body, expected, None)


async def test_single_put_lands_in_storage_and_completes(
    http: ClientSession,
    gateway: str,
    owner_headers: dict[str, str],
    jpeg: bytes,
    s3: Any,
    settings: Settings,
) -> None:
    status, created, _ = await post_upload(
        http,
        gateway,
        owner_headers,
        {"filename": "photo.jpg", "content_type": "image/jpeg", "size": len(jpeg)},
    )
    assert status == 201, created
    assert created["status"] == "pending"
    assert created["key"].startswith("uploads/")
    assert "photo" not in created["key"]
    assert created["upload"]["method"] == "PUT"
    signed_url: str = created["upload"]["url"]
    assert "X-Amz-Signature=" in signed_url
    signed_headers = ";".join(
        [
            "content-length",
            "content-type",
            "host",
            f"x-amz-meta-{PROFILE_METADATA}",  # the profile travels with the object
            "x-amz-server-side-encryption",
        ]
    )
    assert f"X-Amz-SignedHeaders={signed_headers.replace(';', '%3B')}&" in signed_url
    assert created["upload"]["headers"][f"x-amz-meta-{PROFILE_METADATA}"] == "image"
    expires = datetime.fromisoformat(created["expires_at"])
    assert timedelta(0) < expires - datetime.now(UTC) <= timedelta(minutes=15)

    async with http.put(signed_url, data=jpeg, headers=created["upload"]["headers"]) as resp:
        assert resp.status == 200, await resp.text()

    async with http.post(
        f"{gateway}/v1/uploads/{created['id']}/complete", json={}, headers=owner_headers
    ) as resp:
        assert resp.status == 202
        accepted = await resp.json()
    assert accepted == {"id": created["id"], "status": "uploaded"}

    head = s3.head_object(Bucket=settings.bucket, Key=created["key"])
    assert head["ContentLength"] == len(jpeg)
    assert head["ServerSideEncryption"] == "AES256"
    assert head["ContentType"] == "image/jpeg"
    assert head["Metadata"] == {PROFILE_METADATA: "image"}

    async with http.get(f"{gateway}/v1/uploads/{created['id']}", headers=owner_headers) as resp:
        record = await resp.json()
    assert record["status"] == "uploaded"
    assert record["declared"]["size"] == len(jpeg)
    assert [e["status"] for e in record["timeline"]] == ["pending", "uploaded"]

    # Completing again is harmless and reports the current state.
    async with http.post(
        f"{gateway}/v1/uploads/{created['id']}/complete", headers=owner_headers
    ) as resp:
        assert resp.status == 202


async def test_declared_sha256_is_enforced_by_storage(
    http: ClientSession, gateway: str, owner_headers: dict[str, str], jpeg: bytes
) -> None:
    digest = hashlib.sha256(jpeg).hexdigest()
    status, created, _ = await post_upload(
        http,
        gateway,
        owner_headers,
        {"filename": "p.jpg", "content_type": "image/jpeg", "size": len(jpeg), "sha256": digest},
    )
    assert status == 201
    url, headers = created["upload"]["url"], created["upload"]["headers"]
    assert "x-amz-checksum-sha256" in {h.lower() for h in headers}
    corrupted = bytes([jpeg[0] ^ 0xFF]) + jpeg[1:]
    async with http.put(url, data=corrupted, headers=headers) as resp:
        assert resp.status in (400, 403), await resp.text()
    async with http.put(url, data=jpeg, headers=headers) as resp:
        assert resp.status == 200, await resp.text()


async def test_complete_before_the_bytes_arrive_is_a_conflict(
    http: ClientSession, gateway: str, owner_headers: dict[str, str]
) -> None:
    _, created, _ = await post_upload(http, gateway, owner_headers, VALID)
    async with http.post(
        f"{gateway}/v1/uploads/{created['id']}/complete", json={}, headers=owner_headers
    ) as resp:
        body = await resp.json(content_type=None)
    assert_problem(resp.status, body, 409, None)


class TestStorageRefusesBypasses:
    """A client that ignores the returned headers gains nothing: storage says 403."""

    @pytest.fixture
    async def signed(
        self, http: ClientSession, gateway: str, owner_headers: dict[str, str], jpeg: bytes
    ) -> dict[str, Any]:
        _, created, _ = await post_upload(
            http,
            gateway,
            owner_headers,
            {"filename": "x.jpg", "content_type": "image/jpeg", "size": len(jpeg)},
        )
        return dict(created["upload"])

    async def put(self, http: ClientSession, url: str, body: bytes, headers: dict[str, str]) -> int:
        async with http.put(url, data=body, headers=headers) as resp:
            await resp.read()
            return resp.status

    async def test_longer_body(
        self, http: ClientSession, signed: dict[str, Any], jpeg: bytes
    ) -> None:
        headers = {k: v for k, v in signed["headers"].items() if k.lower() != "content-length"}
        assert await self.put(http, signed["url"], jpeg + b"extra", headers) == 403
        assert await self.put(http, signed["url"], jpeg, signed["headers"]) == 200

    async def test_other_content_type(
        self, http: ClientSession, signed: dict[str, Any], jpeg: bytes
    ) -> None:
        headers = signed["headers"] | {"Content-Type": "text/html"}
        assert await self.put(http, signed["url"], jpeg, headers) == 403
        assert await self.put(http, signed["url"], jpeg, signed["headers"]) == 200

    async def test_missing_encryption_header(
        self, http: ClientSession, signed: dict[str, Any], jpeg: bytes
    ) -> None:
        headers = {
            k: v
            for k, v in signed["headers"].items()
            if k.lower() != "x-amz-server-side-encryption"
        }
        assert await self.put(http, signed["url"], jpeg, headers) == 403
        assert await self.put(http, signed["url"], jpeg, signed["headers"]) == 200

    async def test_tampered_signature(
        self, http: ClientSession, signed: dict[str, Any], jpeg: bytes
    ) -> None:
        url: str = signed["url"]
        sig_at = url.index("X-Amz-Signature=") + len("X-Amz-Signature=")
        flipped = "0" if url[sig_at] != "0" else "1"
        tampered = url[:sig_at] + flipped + url[sig_at + 1 :]
        assert await self.put(http, tampered, jpeg, signed["headers"]) == 403
        other_key = url.replace("/uploads/", "/uploads-elsewhere/", 1)
        assert await self.put(http, other_key, jpeg, signed["headers"]) == 403
        assert await self.put(http, url, jpeg, signed["headers"]) == 200

    async def test_expired_url(self, http: ClientSession, settings: Settings, jpeg: bytes) -> None:
        presigner = browser_presigner(settings)
        key = f"uploads/test/{uuid.uuid4()}"
        expired = presigner.presign_put(
            settings.bucket,
            key,
            content_type="image/jpeg",
            content_length=len(jpeg),
            expires_in=1,
            now=datetime.now(UTC) - timedelta(seconds=30),
        )
        assert await self.put(http, expired.url, jpeg, expired.headers) == 403
        fresh = presigner.presign_put(
            settings.bucket, key, content_type="image/jpeg", content_length=len(jpeg), expires_in=60
        )
        assert await self.put(http, fresh.url, jpeg, fresh.headers) == 200


class TestAuth:
    @pytest.mark.parametrize(
        "kind", ["none", "expired", "wrong-signature", "alg-none", "garbage", "basic"]
    )
    async def test_bad_credentials_get_401(
        self,
        http: ClientSession,
        gateway: str,
        token: Callable[..., str],
        settings: Settings,
        kind: str,
    ) -> None:
        now = int(datetime.now(UTC).timestamp())
        claims = {"sub": "mallory", "exp": now + 600}
        forged = jwt.encode(claims, "not-the-secret-but-long-enough-32b", algorithm="HS256")
        headers = {
            "none": {},
            "expired": {"Authorization": f"Bearer {token('mallory', ttl=-10)}"},
            "wrong-signature": {"Authorization": f"Bearer {forged}"},
            "alg-none": {
                "Authorization": f"Bearer {jwt.encode(claims, None, algorithm='none')}"  # type: ignore[arg-type]
            },
            "garbage": {"Authorization": "Bearer abc.def.ghi"},
            "basic": {"Authorization": "Basic bWFsbG9yeTp4"},
        }[kind]
        for method, path in [("POST", "/v1/uploads"), ("GET", "/v1/uploads")]:
            async with http.request(
                method, f"{gateway}{path}", json=VALID, headers=headers
            ) as resp:
                body = await resp.json(content_type=None)
                assert resp.status == 401, body
                assert resp.content_type == "application/problem+json"
                assert resp.headers["WWW-Authenticate"].startswith("Bearer")

    async def test_owners_see_only_their_own_uploads(
        self, http: ClientSession, gateway: str, token: Callable[..., str]
    ) -> None:
        alice = {"Authorization": f"Bearer {token('alice-' + uuid.uuid4().hex)}"}
        bob = {"Authorization": f"Bearer {token('bob-' + uuid.uuid4().hex)}"}
        _, created, _ = await post_upload(http, gateway, alice, VALID)
        uid = created["id"]
        for method, path in [
            ("GET", f"/v1/uploads/{uid}"),
            ("POST", f"/v1/uploads/{uid}/complete"),
            ("DELETE", f"/v1/uploads/{uid}"),
            ("GET", f"/v1/uploads/{uid}/download"),
        ]:
            async with http.request(method, f"{gateway}{path}", headers=bob) as resp:
                assert resp.status == 404, (method, path)
                assert resp.content_type == "application/problem+json"
        async with http.get(f"{gateway}/v1/uploads", headers=bob) as resp:
            assert uid not in [i["id"] for i in (await resp.json())["items"]]
        async with http.get(f"{gateway}/v1/uploads/{uid}", headers=alice) as resp:
            assert resp.status == 200
            assert (await resp.json())["status"] == "pending"


async def test_listing_pages_newest_first_with_a_cursor(
    http: ClientSession, gateway: str, token: Callable[..., str]
) -> None:
    headers = {"Authorization": f"Bearer {token()}"}
    ids = []
    for i in range(5):
        _, created, _ = await post_upload(http, gateway, headers, VALID | {"filename": f"{i}.jpg"})
        ids.append(created["id"])
    seen: list[str] = []
    url = f"{gateway}/v1/uploads?limit=2"
    while True:
        async with http.get(url, headers=headers) as resp:
            assert resp.status == 200
            page = await resp.json()
        assert len(page["items"]) <= 2
        seen += [item["id"] for item in page["items"]]
        if not page["next_cursor"]:
            break
        url = f"{gateway}/v1/uploads?limit=2&cursor={page['next_cursor']}"
    assert seen == list(reversed(ids))

    async with http.get(f"{gateway}/v1/uploads?status=ready", headers=headers) as resp:
        assert (await resp.json())["items"] == []
    for bad in ["limit=0", "limit=101", "limit=x", "status=bogus", "cursor=%%%"]:
        async with http.get(f"{gateway}/v1/uploads?{bad}", headers=headers) as resp:
            body = await resp.json(content_type=None)
            assert_problem(resp.status, body, 422, bad.split("=")[0])


async def test_delete_aborts_a_pending_upload_then_removes_it(
    http: ClientSession, gateway: str, owner_headers: dict[str, str]
) -> None:
    _, created, _ = await post_upload(http, gateway, owner_headers, VALID)
    url = f"{gateway}/v1/uploads/{created['id']}"
    async with http.delete(url, headers=owner_headers) as resp:
        assert resp.status == 204
    async with http.get(url, headers=owner_headers) as resp:
        assert (await resp.json())["status"] == "aborted"
    async with http.post(f"{url}/complete", headers=owner_headers) as resp:
        assert resp.status == 409
    async with http.delete(url, headers=owner_headers) as resp:
        assert resp.status == 204
    async with http.get(url, headers=owner_headers) as resp:
        assert resp.status == 404


async def test_download_is_refused_until_ready(
    http: ClientSession, gateway: str, owner_headers: dict[str, str]
) -> None:
    _, created, _ = await post_upload(http, gateway, owner_headers, VALID)
    async with http.get(
        f"{gateway}/v1/uploads/{created['id']}/download",
        headers=owner_headers,
        allow_redirects=False,
    ) as resp:
        assert resp.status == 409


@pytest.mark.parametrize("bad_id", ["not-a-uuid", "00000000-0000-0000-0000-000000000000"])
async def test_unknown_ids_are_404(
    http: ClientSession, gateway: str, owner_headers: dict[str, str], bad_id: str
) -> None:
    async with http.get(f"{gateway}/v1/uploads/{bad_id}", headers=owner_headers) as resp:
        assert resp.status == 404
        assert resp.content_type == "application/problem+json"
