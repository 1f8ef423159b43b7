"""Golden tests: header-signed requests (``Presigner.sign_request``) against botocore.

Two comparisons, both with the clock frozen through ``botocore.auth.get_current_datetime``:

1. the signer alone: for many generated requests (keys with unicode and specials,
   query parameters, bodies, header values with odd whitespace, session tokens, any
   instant), our ``Authorization``, ``X-Amz-Date``, ``X-Amz-Content-SHA256`` and
   ``X-Amz-Security-Token`` equal what ``botocore.auth.S3SigV4Auth`` adds to the same
   ``AWSRequest``;
2. the whole request of each storage call the gateway makes (HEAD, Create/Abort/
   Complete multipart, ListParts): our method, URL, body and signature equal the
   request a botocore S3 client would send (captured before it is sent; its own
   bookkeeping headers, ``amz-sdk-*``, are added after signing and not signed).
"""

from __future__ import annotations

import functools
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from unittest import mock

import botocore.session
import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest, AWSResponse
from botocore.config import Config
from botocore.credentials import Credentials as BotoCredentials

from services.gateway.s3_requests import (
    abort_multipart_request,
    complete_multipart_request,
    create_multipart_request,
    head_object_request,
    list_parts_request,
)
from shared.presign import Credentials, Presigner, SignedRequest

TOKEN = "FwoGZXIvYXdzEJr//////////wEaDOm+Example/Session=Token"


@dataclass(frozen=True)
class Scenario:
    endpoint: str
    style: str = "path"
    region: str = "us-east-1"
    access_key: str = "AKIDEXAMPLE"
    secret_key: str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
    token: str | None = None


SCENARIOS = [
    Scenario("http://127.0.0.1:18333"),
    Scenario("http://127.0.0.1:18333", token=TOKEN),
    Scenario("http://localhost:8333", "virtual"),
    Scenario("https://s3.example.com", "virtual", region="eu-central-1", token="t"),
    Scenario("https://s3.example.com:443", region="auto"),
    Scenario("https://S3.Example.COM:8443", "virtual", token=TOKEN),
    Scenario("http://minio.internal:9000/base"),
    Scenario("http://[::1]:18333", access_key="key with+/=~"),
]
KEY_PIECES = [
    *"aZ09-_.~/ +%=&?#!*'();:@$,[]{}|\\^`\"<>",
    "//", "%2F", "%20", "uploads/", "..", "\t", "é", "ß", "日本語", "🎉", "e\u0301", "\u00a0",
]  # fmt: skip
QUERY_VALUES = ["", "1", "10000", "a b", "x+y=z&w", "~._-", "é/🎉", "2~abc%2F", None]
HEADER_VALUES = ["image/png", "text/plain;  charset=UTF-8 ", " video/mp4", "a   b", "AES256"]
ZONES = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]


@functools.cache
def signer(scenario: Scenario) -> Presigner:
    return Presigner(
        endpoint_url=scenario.endpoint,
        region=scenario.region,
        credentials=Credentials(scenario.access_key, scenario.secret_key, scenario.token),
        addressing_style="virtual" if scenario.style == "virtual" else "path",
    )


def boto_signed(scenario: Scenario, request: SignedRequest, now: datetime) -> dict[str, str]:
    """The headers botocore's S3SigV4Auth adds to the same request (our URL, body)."""
    given = {k: v for k, v in request.headers.items() if not _signer_header(k)}
    aws = AWSRequest(method=request.method, url=request.url, headers=given, data=request.body)
    creds = BotoCredentials(scenario.access_key, scenario.secret_key, scenario.token)
    with mock.patch(
        "botocore.auth.get_current_datetime", return_value=now.astimezone(UTC).replace(tzinfo=None)
    ):
        S3SigV4Auth(creds, "s3", scenario.region).add_auth(aws)
    return dict(aws.headers.items())


def _signer_header(name: str) -> bool:
    return name.lower() in {
        "host",
        "authorization",
        "x-amz-date",
        "x-amz-content-sha256",
        "x-amz-security-token",
    }


@dataclass(frozen=True)
class Case:
    scenario: Scenario
    method: str
    bucket: str
    key: str | None
    query: list[tuple[str, str | None]]
    headers: dict[str, str]
    body: bytes
    now: datetime = field(compare=False)


def generate_cases(count: int, seed: int = 20260214) -> Iterator[Case]:
    rng = random.Random(seed)
    start = int(datetime(2020, 1, 1, tzinfo=UTC).timestamp())
    end = int(datetime(2035, 1, 1, tzinfo=UTC).timestamp())
    for _ in range(count):
        scenario = rng.choice(SCENARIOS)
        key = "".join(rng.choice(KEY_PIECES) for _ in range(rng.randint(1, 12)))
        names = rng.sample(
            ["uploads", "uploadId", "partNumber", "max-parts", "part-number-marker", "x y", "é"],
            rng.randint(0, 3),
        )
        query = [(n, rng.choice(QUERY_VALUES)) for n in names]
        headers: dict[str, str] = {}
        for name in rng.sample(["Content-Type", "x-amz-server-side-encryption", "Content-MD5"], 2):
            if rng.random() < 0.5:
                headers[name] = rng.choice(HEADER_VALUES)
        body = rng.choice([b"", b"<x/>", "<a>é</a>".encode(), rng.randbytes(rng.randint(0, 300))])
        moment = datetime.fromtimestamp(rng.randint(start, end), UTC)
        moment = moment.replace(microsecond=rng.randint(0, 999_999)).astimezone(rng.choice(ZONES))
        yield Case(
            scenario,
            rng.choice(["GET", "HEAD", "PUT", "POST", "DELETE"]),
            rng.choice(["clearance-uploads", "upl", "data-2025"]),
            None if rng.random() < 0.05 else key,
            query,
            headers,
            body,
            moment,
        )


CASES = list(generate_cases(800))
SIGNER_HEADERS = ["Authorization", "X-Amz-Date", "X-Amz-Content-SHA256", "X-Amz-Security-Token"]


def test_generated_cases_cover_the_interesting_inputs() -> None:
    assert {c.method for c in CASES} == {"GET", "HEAD", "PUT", "POST", "DELETE"}
    assert any(c.scenario.token for c in CASES)
    assert any(not c.scenario.token for c in CASES)
    assert any(c.key and "日本語" in c.key for c in CASES)
    assert any(c.key is None for c in CASES)
    assert any(v is None for c in CASES for _, v in c.query)
    assert any("  " in v for c in CASES for v in c.headers.values())
    assert any(c.body and not c.body.isascii() for c in CASES)


@pytest.mark.parametrize("chunk", range(8))
def test_signatures_match_botocore_byte_for_byte(chunk: int) -> None:
    for case in CASES[chunk::8]:
        ours = signer(case.scenario).sign_request(
            case.method,
            case.bucket,
            case.key,
            query=case.query,
            headers=case.headers,
            body=case.body,
            now=case.now,
        )
        theirs = boto_signed(case.scenario, ours, case.now)
        for name in SIGNER_HEADERS:
            assert ours.headers.get(name) == theirs.get(name), (case, name)
        assert {k: v for k, v in ours.headers.items() if k not in SIGNER_HEADERS} == {
            **case.headers,
            "Host": ours.headers["Host"],
        }


# -- the gateway's own storage calls, against a botocore client's requests ----------


@functools.cache
def boto_client(scenario: Scenario) -> Any:
    client = botocore.session.get_session().create_client(
        "s3",
        endpoint_url=scenario.endpoint,
        region_name=scenario.region,
        aws_access_key_id=scenario.access_key,
        aws_secret_access_key=scenario.secret_key,
        aws_session_token=scenario.token,
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": scenario.style},
            request_checksum_calculation="when_required",
            retries={"max_attempts": 1},
        ),
    )
    return client


def boto_request(scenario: Scenario, operation: str, params: dict[str, Any], now: datetime) -> Any:
    """The request a botocore client sends for `operation`, captured before it goes out."""
    client = boto_client(scenario)
    captured: list[Any] = []

    def capture(request: Any, **_: Any) -> AWSResponse:
        captured.append(request)
        return AWSResponse(request.url, 200, {}, _EmptyRaw())

    client.meta.events.register_first("before-send.s3", capture)
    try:
        with mock.patch(
            "botocore.auth.get_current_datetime",
            return_value=now.astimezone(UTC).replace(tzinfo=None),
        ):
            getattr(client, operation)(**params)
    finally:
        client.meta.events.unregister("before-send.s3", capture)
    return captured[0]


class _EmptyRaw:
    def stream(self, **_: Any) -> Iterator[bytes]:
        yield b""


OPERATION_KEYS = ["uploads/3f/0a1b-2c3d", "a b/é+?#.txt", "日本語/🎉~x", "sp ace//x%2F"]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: f"{s.endpoint}-{s.style}")
@pytest.mark.parametrize("key", OPERATION_KEYS)
def test_storage_calls_are_the_requests_botocore_sends(scenario: Scenario, key: str) -> None:
    now = datetime(2026, 2, 14, 12, 34, 56, 789, tzinfo=UTC)
    bucket = "clearance-uploads"
    upload_id = "2~Ab+c/d=e f"
    parts = [(1, "9b2cf535f27731c974343645a3985328"), (2, 'a&b<c>"d"')]
    calls: list[tuple[str, dict[str, Any], Any]] = [
        (
            "head_object",
            {"Bucket": bucket, "Key": key},
            lambda s: head_object_request(s, bucket, key, now=now),
        ),
        (
            "create_multipart_upload",
            {
                "Bucket": bucket,
                "Key": key,
                "ContentType": "image/png",
                "ServerSideEncryption": "AES256",
                "Metadata": {"clearance-profile": "image"},
            },
            lambda s: create_multipart_request(
                s,
                bucket,
                key,
                content_type="image/png",
                metadata={"clearance-profile": "image"},
                now=now,
            ),
        ),
        (
            "list_parts",
            {
                "Bucket": bucket,
                "Key": key,
                "UploadId": upload_id,
                "MaxParts": 1000,
                "PartNumberMarker": 7,
            },
            lambda s: list_parts_request(
                s, bucket, key, upload_id, max_parts=1000, marker=7, now=now
            ),
        ),
        (
            "complete_multipart_upload",
            {
                "Bucket": bucket,
                "Key": key,
                "UploadId": upload_id,
                "MultipartUpload": {
                    "Parts": [{"PartNumber": n, "ETag": f'"{etag}"'} for n, etag in parts]
                },
            },
            lambda s: complete_multipart_request(s, bucket, key, upload_id, parts, now=now),
        ),
        (
            "abort_multipart_upload",
            {"Bucket": bucket, "Key": key, "UploadId": upload_id},
            lambda s: abort_multipart_request(s, bucket, key, upload_id, now=now),
        ),
    ]
    for operation, params, build in calls:
        theirs = boto_request(scenario, operation, params, now)
        ours: SignedRequest = build(signer(scenario))
        assert ours.method == theirs.method, operation
        assert ours.url == theirs.url, operation
        assert ours.body == (theirs.body or b""), operation
        for name in SIGNER_HEADERS:
            expected = theirs.headers.get(name)
            if isinstance(expected, bytes):
                expected = expected.decode()
            assert ours.headers.get(name) == expected, (operation, name)
