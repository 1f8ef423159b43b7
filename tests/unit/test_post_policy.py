"""Golden tests: our POST-policy signer against botocore's `generate_presigned_post`.

botocore reads the clock twice (`botocore.signers` for the expiration,
`botocore.auth` for `x-amz-date`); patching both (a pure unit seam) makes both
signers sign at the same instant, so fields, policy and signature must match
byte for byte.
"""

from __future__ import annotations

import base64
import functools
import json
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Literal
from unittest import mock

import botocore.session
import pytest
from botocore.config import Config

from shared.presign import Credentials, Presigner

Style = Literal["path", "virtual"]


@dataclass(frozen=True)
class Scenario:
    endpoint: str
    style: Style
    region: str = "us-east-1"
    access_key: str = "AKIDEXAMPLE"
    secret_key: str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
    token: str | None = None


TOKEN = "FwoGZXIvYXdzEJr//////////wEaDOm+Example/Session=Token"
SCENARIOS = [
    Scenario("http://127.0.0.1:18333", "path"),
    Scenario("http://127.0.0.1:18333", "virtual", token=TOKEN),
    Scenario("http://localhost:8333", "virtual"),
    Scenario("https://s3.example.com", "virtual", region="eu-central-1"),
    Scenario("https://s3.example.com:8443", "path", token=TOKEN),
    Scenario("http://minio.internal:9000/base", "path", region="garage"),
    Scenario("http://10.1.2.3", "path", access_key="key with+/=~"),
]
FIXED = datetime(2025, 11, 27, 23, 59, 59, 999_999, tzinfo=UTC)

_SESSION = botocore.session.get_session()


@functools.cache
def boto_client(scenario: Scenario) -> Any:
    return _SESSION.create_client(
        "s3",
        endpoint_url=scenario.endpoint,
        region_name=scenario.region,
        aws_access_key_id=scenario.access_key,
        aws_secret_access_key=scenario.secret_key,
        aws_session_token=scenario.token,
        config=Config(signature_version="s3v4", s3={"addressing_style": scenario.style}),
    )


@functools.cache
def ours(scenario: Scenario) -> Presigner:
    return Presigner(
        endpoint_url=scenario.endpoint,
        region=scenario.region,
        credentials=Credentials(scenario.access_key, scenario.secret_key, scenario.token),
        addressing_style=scenario.style,
    )


def boto_post(
    scenario: Scenario,
    bucket: str,
    key: str,
    fields: dict[str, str],
    conditions: list[Any],
    expires: int,
    now: datetime,
) -> dict[str, Any]:
    naive = now.astimezone(UTC).replace(tzinfo=None)
    with (
        mock.patch("botocore.signers.get_current_datetime", return_value=naive),
        mock.patch("botocore.auth.get_current_datetime", return_value=naive),
    ):
        result: dict[str, Any] = boto_client(scenario).generate_presigned_post(
            bucket, key, Fields=dict(fields), Conditions=list(conditions), ExpiresIn=expires
        )
    return result


def upload_fields(content_type: str) -> dict[str, str]:
    return {
        "Content-Type": content_type,
        "x-amz-server-side-encryption": "AES256",
        "success_action_status": "201",
    }


def upload_conditions(content_type: str, low: int, high: int) -> list[Any]:
    return [
        {"Content-Type": content_type},
        {"x-amz-server-side-encryption": "AES256"},
        {"success_action_status": "201"},
        ["content-length-range", low, high],
    ]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: f"{s.endpoint}-{s.style}")
def test_upload_policy_is_byte_identical_to_botocore(scenario: Scenario) -> None:
    key = "uploads/0123456789abcdef/6f1c2b9e-0c1d-4a8e-9b7f-0a1b2c3d4e5f"
    signed = ours(scenario).presign_form_upload(
        "clearance-uploads",
        key,
        content_type="image/jpeg",
        min_size=1,
        max_size=10_000_000,
        expires_in=900,
        now=FIXED,
    )
    expected = boto_post(
        scenario,
        "clearance-uploads",
        key,
        upload_fields("image/jpeg"),
        upload_conditions("image/jpeg", 1, 10_000_000),
        900,
        FIXED,
    )
    assert signed.fields == expected["fields"]
    assert list(signed.fields) == list(expected["fields"])
    # botocore leaves the bucket URL's trailing slash off; Uppy needs it (url + key).
    assert signed.url == expected["url"].rstrip("/") + "/"
    assert signed.expires_at == datetime(2025, 11, 28, 0, 14, 59, tzinfo=UTC)


def test_generated_policies_match_botocore() -> None:
    rng = random.Random(20251127)
    types = ["image/jpeg", "video/mp4", "application/pdf", "image/png; charset=x", "a/b+c"]
    start = int(datetime(2020, 1, 1, tzinfo=UTC).timestamp())
    end = int(datetime(2035, 1, 1, tzinfo=UTC).timestamp())
    for _ in range(200):
        scenario = rng.choice(SCENARIOS)
        now = datetime.fromtimestamp(rng.randint(start, end), UTC).astimezone(
            timezone(timedelta(hours=rng.randint(-12, 12)))
        )
        bucket = rng.choice(["upl", "clearance-uploads", "data-2025", "x1y"])
        key = "/".join(rng.choice(["uploads", "a b", "é", "日本", "x+y", "🎉"]) for _ in range(3))
        ctype = rng.choice(types)
        low, high = sorted((rng.randint(0, 10**6), rng.randint(0, 5 * 1024**3)))
        expires = rng.randint(1, 604_800)
        signed = ours(scenario).presign_post(
            bucket,
            key,
            fields=upload_fields(ctype),
            conditions=upload_conditions(ctype, low, high),
            expires_in=expires,
            now=now,
        )
        expected = boto_post(
            scenario, bucket, key, upload_fields(ctype), upload_conditions(ctype, low, high),
            expires, now,
        )  # fmt: skip
        assert signed.fields == expected["fields"], (scenario, bucket, key, now)
        assert signed.url == expected["url"].rstrip("/") + "/"


def test_the_policy_pins_what_storage_must_enforce() -> None:
    scenario = SCENARIOS[0]
    signed = ours(scenario).presign_form_upload(
        "clearance-uploads", "uploads/k", content_type="video/mp4", min_size=1,
        max_size=2000 * 1024 * 1024, expires_in=60, now=FIXED,
    )  # fmt: skip
    policy = json.loads(base64.b64decode(signed.fields["policy"]))
    assert policy["expiration"] == "2025-11-28T00:00:59Z"
    assert policy["conditions"][:6] == [
        {"Content-Type": "video/mp4"},
        {"x-amz-server-side-encryption": "AES256"},
        {"success_action_status": "201"},
        ["content-length-range", 1, 2000 * 1024 * 1024],
        {"bucket": "clearance-uploads"},
        {"key": "uploads/k"},  # exact: no starts-with, no ${filename}
    ]
    assert signed.fields["x-amz-credential"] == "AKIDEXAMPLE/20251127/us-east-1/s3/aws4_request"
    assert signed.url == "http://127.0.0.1:18333/clearance-uploads/"


def test_form_metadata_is_a_field_and_an_exact_condition() -> None:
    signed = ours(SCENARIOS[0]).presign_form_upload(
        "clearance-uploads", "uploads/k", content_type="image/png", min_size=1, max_size=10,
        metadata={"clearance-profile": "image"}, now=FIXED,
    )  # fmt: skip
    policy = json.loads(base64.b64decode(signed.fields["policy"]))
    assert signed.fields["x-amz-meta-clearance-profile"] == "image"
    assert {"x-amz-meta-clearance-profile": "image"} in policy["conditions"]


@pytest.mark.parametrize(
    ("endpoint", "style", "bucket", "url"),
    [
        ("http://127.0.0.1:18333", "path", "upl", "http://127.0.0.1:18333/upl/"),
        ("http://127.0.0.1:18333", "virtual", "upl", "http://127.0.0.1:18333/upl/"),
        ("https://s3.example.com", "virtual", "upl", "https://upl.s3.example.com/"),
        ("https://s3.example.com/", "path", "upl", "https://s3.example.com/upl/"),
        ("http://minio:9000/base/", "path", "upl", "http://minio:9000/base/upl/"),
        ("https://s3.example.com", "virtual", "my.bucket", "https://s3.example.com/my.bucket/"),
        ("https://s3.example.com", "virtual", "UPPER", "https://s3.example.com/UPPER/"),
    ],
)
def test_bucket_url_always_ends_with_a_slash(
    endpoint: str, style: Style, bucket: str, url: str
) -> None:
    signer = Presigner(
        endpoint_url=endpoint,
        region="us-east-1",
        credentials=Credentials("a", "b"),
        addressing_style=style,
    )
    assert signer.bucket_url(bucket) == url


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: s.presign_post("upl", "k", expires_in=0), "expires_in"),
        (lambda s: s.presign_post("upl", "k", expires_in=604_801), "expires_in"),
        (lambda s: s.presign_post("upl", "", expires_in=60), "key"),
        (lambda s: s.presign_post("upl", "k" * 1025), "key"),
        (lambda s: s.presign_post("upl", "k", fields={"Policy": "x"}), "set by the signer"),
        (lambda s: s.presign_post("upl", "k", now=datetime(2025, 1, 1)), "timezone"),
        (lambda s: s.presign_post("b/d", "k"), "bucket"),
        (
            lambda s: s.presign_form_upload("upl", "k", content_type="", min_size=1, max_size=2),
            "content_type",
        ),
        (
            lambda s: s.presign_form_upload("upl", "k", content_type="a/b", min_size=3, max_size=2),
            "min_size",
        ),
    ],
)
def test_bad_input_is_refused(call: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call(ours(SCENARIOS[0]))


def test_bad_endpoints_are_refused() -> None:
    for endpoint in ("ftp://x", "http://", "http://h?x=1", "http://u:p@h"):
        with pytest.raises(ValueError, match="endpoint_url"):
            Presigner(endpoint_url=endpoint, region="r", credentials=Credentials("a", "b"))
