"""Application metadata through both APIs: stored, returned, and refused precisely."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import ClientSession

pytestmark = pytest.mark.integration

DECLARED = {"filename": "cat.jpg", "content_type": "image/jpeg", "size": 1000}


async def create(
    http: ClientSession, gateway: str, headers: dict[str, str], body: dict[str, Any]
) -> tuple[int, dict[str, Any], str]:
    async with http.post(f"{gateway}/v1/uploads", json=body, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None), resp.content_type


async def test_metadata_is_stored_and_returned_in_the_record_and_the_list(
    http: ClientSession, gateway: str, owner_headers: dict[str, str]
) -> None:
    metadata = {"order_id": "A-1042", "tenant": "acme", "note": "größer ✓"}
    status, created, _ = await create(
        http, gateway, owner_headers, DECLARED | {"metadata": metadata}
    )
    assert status == 201, created
    async with http.get(f"{gateway}/v1/uploads/{created['id']}", headers=owner_headers) as resp:
        record = await resp.json()
    assert record["metadata"] == metadata
    async with http.get(f"{gateway}/v1/uploads", headers=owner_headers) as resp:
        page = await resp.json()
    assert [item["metadata"] for item in page["items"]] == [metadata]
    # Without metadata, an upload has an empty map (never null).
    status, plain, _ = await create(http, gateway, owner_headers, DECLARED)
    async with http.get(f"{gateway}/v1/uploads/{plain['id']}", headers=owner_headers) as resp:
        assert (await resp.json())["metadata"] == {}


@pytest.mark.parametrize(
    ("metadata", "field", "says"),
    [
        ({f"k{i}": "v" for i in range(17)}, "metadata", "at most 16"),
        ({"blob": "x" * 2100}, "metadata", "at most 2048"),
        ({"nested": {"a": "b"}}, "metadata.nested", "must be a string, not an object"),
        ({"count": 3}, "metadata.count", "must be a string, not a number"),
        ({"OrderId": "1"}, "metadata.OrderId", "a-z, 0-9"),
        (["order", "42"], "metadata", "valid dictionary"),
    ],
)
async def test_bad_metadata_is_a_422_problem_naming_the_field(
    http: ClientSession,
    gateway: str,
    owner_headers: dict[str, str],
    metadata: Any,
    field: str,
    says: str,
) -> None:
    status, body, ctype = await create(
        http, gateway, owner_headers, DECLARED | {"metadata": metadata}
    )
    assert (status, ctype) == (422, "application/problem+json"), body
    [error] = [e for e in body["errors"] if e["field"] == field]
    assert says in error["message"], body


async def test_the_uppy_routes_store_uppys_meta_less_its_own_fields(
    http: ClientSession, gateway: str, owner_headers: dict[str, str]
) -> None:
    query = (
        "filename=a.jpg&type=image/jpeg&metadata[name]=a.jpg&metadata[type]=image/jpeg"
        "&metadata[profile]=image&metadata[order_id]=42"
    )
    async with http.get(f"{gateway}/s3/params?{query}", headers=owner_headers) as resp:
        assert resp.status == 200, await resp.text()
        key = (await resp.json())["fields"]["key"]
    body = {
        "filename": "clip.mp4",
        "type": "video/mp4",
        "metadata": {"name": "clip.mp4", "type": "video/mp4", "relativePath": None, "cut": "b"},
    }
    async with http.post(f"{gateway}/s3/multipart", json=body, headers=owner_headers) as resp:
        assert resp.status == 200, await resp.text()
        multipart_key = (await resp.json())["key"]
    async with http.get(f"{gateway}/v1/uploads", headers=owner_headers) as resp:
        items = {i["id"]: i for i in (await resp.json())["items"]}
    # The key ends in the upload id.
    assert items[key.rsplit("/", 1)[1]]["metadata"] == {"order_id": "42"}
    assert items[multipart_key.rsplit("/", 1)[1]]["metadata"] == {"cut": "b"}


async def test_the_uppy_routes_refuse_bad_metadata_with_an_error_object(
    http: ClientSession, gateway: str, owner_headers: dict[str, str]
) -> None:
    cases = [
        ("GET", "/s3/params?filename=a.jpg&type=image/jpeg&metadata[Bad]=1", None),
        ("GET", "/s3/params?filename=a.jpg&type=image/jpeg&metadata[a]=1&metadata[a]=2", None),
        ("POST", "/s3/multipart", {"filename": "c.mp4", "type": "video/mp4", "metadata": {"n": 1}}),
    ]
    for method, path, body in cases:
        async with http.request(
            method, f"{gateway}{path}", json=body, headers=owner_headers
        ) as resp:
            answer = await resp.json()
            assert resp.status == 422, answer
            assert "metadata." in answer["error"], answer
