"""Storage's answers in the gateway's terms, with the signed-request client on a real
HTTP connection to a tiny local server that answers what S3 answers (and worse):
missing uploads, refused part lists, an error hidden in a 200, hostile XML, 5xx
bursts, a dropped connection. The real storage paths are covered by the multipart and
Companion integration tests; these are the answers SeaweedFS can't be made to give.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from services.gateway.policy import PartListRefused, PartsGone
from services.gateway.s3_requests import S3Requests, UnsafeXml, parse_parts_page, parse_xml
from services.gateway.storage import Storage
from services.gateway.store import Upload
from shared.presign import Credentials, Presigner
from shared.problems import ServiceUnavailable

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;">]>
<ListPartsResult><Part><PartNumber>1</PartNumber><ETag>&lol2;</ETag></Part></ListPartsResult>"""
EXTERNAL = b"""<?xml version="1.0"?>
<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><Error><Code>&e;</Code></Error>"""


def error(code: str, status: int) -> web.Response:
    body = f"<Error><Code>{code}</Code><Message>m</Message></Error>"
    return web.Response(status=status, body=body.encode(), content_type="application/xml")


Answer = Callable[[web.Request], web.StreamResponse]


@pytest.fixture
async def fake_s3() -> AsyncIterator[tuple[list[Answer], list[web.Request], Storage]]:
    answers: list[Answer] = []
    seen: list[web.Request] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        seen.append(request)
        await request.read()
        return answers.pop(0)(request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    signer = Presigner(
        endpoint_url=str(server.make_url("")).rstrip("/"),
        region="us-east-1",
        credentials=Credentials("AK", "SK"),
    )
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield answers, seen, Storage(None, S3Requests(session, signer))
    await server.close()


def upload() -> Upload:
    u = Upload.pending(
        id=uuid.uuid4(),
        owner="o",
        profile="media",
        filename="a.mp4",
        content_type="video/mp4",
        size=0,
        bucket="b",
        key="uploads/x/é y",
        ttl_seconds=60,
        correlation_id="c",
        multipart_upload_id="mpu+/=",
    )
    return u


def fixed(response: Callable[[], web.StreamResponse]) -> Answer:
    return lambda _request: response()


async def test_missing_upload_and_refused_part_lists(fake_s3: Any) -> None:
    answers, seen, storage = fake_s3
    answers += [fixed(lambda: error("NoSuchUpload", 404))]
    with pytest.raises(PartsGone):
        await storage.parts(upload())
    for code in ("InvalidPart", "InvalidPartOrder", "EntityTooSmall"):
        answers.append(fixed(lambda code=code: error(code, 400)))
        with pytest.raises(PartListRefused, match=code):
            await storage.complete_multipart(upload(), [(1, "e")])
    answers.append(fixed(lambda: error("NoSuchUpload", 404)))
    with pytest.raises(PartsGone):
        await storage.complete_multipart(upload(), [(1, "e")])
    # S3 may fail a complete after answering 200: the error is in the body.
    answers.append(fixed(lambda: error("InvalidPart", 200)))
    with pytest.raises(PartListRefused):
        await storage.complete_multipart(upload(), [(1, "e")])
    answers.append(fixed(lambda: error("NoSuchUpload", 404)))
    await storage.abort_multipart(upload())  # already gone counts as aborted
    assert seen[0].path_qs.startswith("/b/uploads/x/%C3%A9%20y?uploadId=mpu%2B%2F%3D")
    assert seen[0].headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=AK/")


async def test_anything_else_is_unavailable(fake_s3: Any) -> None:
    answers, _, storage = fake_s3
    answers += [fixed(lambda: error("AccessDenied", 403))]
    with pytest.raises(ServiceUnavailable):
        await storage.create_multipart(
            "b", "k", "video/mp4", metadata={"clearance-profile": "media"}
        )
    answers += [fixed(lambda: web.Response(status=500))] * 3
    with pytest.raises(ServiceUnavailable):
        await storage.head("b", "k")
    answers += [fixed(lambda: web.Response(status=200, body=BILLION_LAUGHS))]
    with pytest.raises(ServiceUnavailable):
        await storage.parts(upload())
    answers += [fixed(lambda: web.Response(status=403))]
    with pytest.raises(ServiceUnavailable):  # a HEAD's error has no body
        await storage.head("b", "k")


async def test_transient_failures_are_retried(fake_s3: Any) -> None:
    answers, seen, storage = fake_s3
    answers += [fixed(lambda: error("SlowDown", 503)), fixed(lambda: web.Response(status=502))]
    answers.append(
        fixed(
            lambda: web.Response(
                body=b"<InitiateMultipartUploadResult><UploadId>u-1</UploadId>"
                b"</InitiateMultipartUploadResult>"
            )
        )
    )
    assert (
        await storage.create_multipart(
            "b", "k", "video/mp4", metadata={"clearance-profile": "media"}
        )
        == "u-1"
    )
    assert len(seen) == 3
    assert seen[0].headers["x-amz-server-side-encryption"] == "AES256"
    assert seen[0].headers["x-amz-meta-clearance-profile"] == "media"
    answers += [fixed(lambda: web.Response(status=404))]
    assert await storage.head("b", "missing") is None
    answers += [fixed(lambda: web.Response(headers={"ETag": '"abc"', "Content-Length": "0"}))]
    head = await storage.head("b", "k")
    assert head is not None
    assert head.etag == "abc"


def test_hostile_xml_is_refused() -> None:
    for doc in (BILLION_LAUGHS, EXTERNAL, b"<a>&undefined;</a>", b"<a>", b"not xml"):
        with pytest.raises(UnsafeXml):
            parse_xml(doc)


def test_parts_pages_are_read_by_local_name() -> None:
    page = parse_parts_page(
        b'<?xml version="1.0" encoding="UTF-8"?>'
        b'<ListPartsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        b"<IsTruncated>true</IsTruncated><NextPartNumberMarker>2</NextPartNumberMarker>"
        b"<Part><PartNumber>1</PartNumber><LastModified>2026-02-14T10:00:00.000Z</LastModified>"
        b"<ETag>&quot;e1&quot;</ETag><Size>5242880</Size></Part>"
        b'<Part><PartNumber>2</PartNumber><ETag>"e2"</ETag><Size>7</Size></Part>'
        b"</ListPartsResult>"
    )
    assert page.truncated
    assert page.next_marker == 2
    assert [(p.part_number, p.etag, p.size) for p in page.parts] == [
        (1, '"e1"', 5242880),
        (2, '"e2"', 7),
    ]
    assert page.parts[0].last_modified == datetime(2026, 2, 14, 10, tzinfo=UTC)
