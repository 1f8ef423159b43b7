"""Our SigV4 presigner against botocore, same inputs: a presigned PUT
(``generate_presigned_url``) and a POST policy (``generate_presigned_post``).

    .venv/bin/python bench/presign.py [--n 20000] [--repeats 7] [--min-ratio 0]

Both sides are built once (a botocore client; a ``Presigner``) and sign a
PutObject URL with content type, length and SSE signed, reading the real clock.
Each timing is a loop of N calls, repeated; the best and median per-URL times
are printed with the ratio of medians. Before timing, a sample of varied keys
is signed by both at one frozen instant and compared byte for byte; the exit
status is 1 if any URL differs (or, with ``--min-ratio``, if we are too slow).
The POST policy row decides whether the Uppy route signs its own forms or calls
botocore's ``generate_presigned_post`` on a client built once.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import timeit
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from unittest import mock

import botocore.session
from botocore.config import Config

from shared.presign import Credentials, Presigner

ENDPOINT = "http://127.0.0.1:18333"
REGION = "us-east-1"
ACCESS_KEY = "clearance-bench"
SECRET_KEY = "bench-secret-key-0123456789abcdefghij"
BUCKET = "uploads"
KEY = "uploads/3f1c9a0b7d2e4c58/8f1c2a8e-4b7a-4c1e-9a55-3f0e2d9b7c11"
CONTENT_TYPE = "image/jpeg"
CONTENT_LENGTH = 4_718_592
EXPIRES = 900


def build() -> tuple[Presigner, Any]:
    ours = Presigner(
        endpoint_url=ENDPOINT,
        region=REGION,
        credentials=Credentials(ACCESS_KEY, SECRET_KEY),
    )
    client = botocore.session.get_session().create_client(
        "s3",
        endpoint_url=ENDPOINT,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
        ),
    )
    return ours, client


def botocore_put(client: Any, key: str) -> str:
    url: str = client.generate_presigned_url(
        "put_object",
        Params={
            "Bucket": BUCKET,
            "Key": key,
            "ContentType": CONTENT_TYPE,
            "ContentLength": CONTENT_LENGTH,
            "ServerSideEncryption": "AES256",
        },
        ExpiresIn=EXPIRES,
    )
    return url


def botocore_post(client: Any, key: str) -> dict[str, Any]:
    fields = {
        "Content-Type": CONTENT_TYPE,
        "x-amz-server-side-encryption": "AES256",
        "success_action_status": "201",
    }
    conditions: list[Any] = [
        {"Content-Type": CONTENT_TYPE},
        {"x-amz-server-side-encryption": "AES256"},
        {"success_action_status": "201"},
        ["content-length-range", 1, CONTENT_LENGTH],
    ]
    post: dict[str, Any] = client.generate_presigned_post(
        BUCKET, key, Fields=fields, Conditions=conditions, ExpiresIn=EXPIRES
    )
    return post


def ours_post(ours: Presigner, key: str, now: datetime | None = None) -> dict[str, Any]:
    signed = ours.presign_form_upload(
        BUCKET,
        key,
        content_type=CONTENT_TYPE,
        min_size=1,
        max_size=CONTENT_LENGTH,
        expires_in=EXPIRES,
        now=now,
    )
    return {"url": signed.url, "fields": signed.fields}


def sample_keys(count: int) -> list[str]:
    rng = random.Random(7)
    pieces = [*"abcXYZ019-_.~/ +%=&?#!*'()", "//", "é", "日本", "🎉"]
    keys = [KEY, "/leading", "a//b", "space in name.jpg", "100% +plus~tilde"]
    while len(keys) < count:
        keys.append("".join(rng.choice(pieces) for _ in range(rng.randint(1, 24))))
    return keys


def check_identical(ours: Presigner, client: Any, keys: list[str]) -> int:
    """How many sampled URLs differ, with both clocks frozen at the same instant."""
    now = datetime(2025, 11, 27, 12, 34, 56, tzinfo=UTC)
    differing = 0
    with mock.patch("botocore.auth.get_current_datetime", return_value=now.replace(tzinfo=None)):
        for key in keys:
            expected = botocore_put(client, key)
            got = ours.presign_put(
                BUCKET, key, content_type=CONTENT_TYPE, content_length=CONTENT_LENGTH, now=now
            ).url
            if got != expected:
                differing += 1
                print(f"DIFFERENT for key {key!r}:\n  ours     {got}\n  botocore {expected}")
    naive = now.replace(tzinfo=None)
    with (
        mock.patch("botocore.signers.get_current_datetime", return_value=naive),
        mock.patch("botocore.auth.get_current_datetime", return_value=naive),
    ):
        for key in keys[:20]:
            mine, theirs = ours_post(ours, key, now), botocore_post(client, key)
            # Ours ends the bucket URL with "/" (Uppy names the object `url + key`).
            if mine["fields"] != theirs["fields"] or mine["url"] != theirs["url"] + "/":
                differing += 1
                print(f"DIFFERENT POST policy for key {key!r}")
    return differing


def per_call_us(fn: Callable[[], object], n: int, repeats: int) -> tuple[float, float]:
    """(best, median) microseconds per call over ``repeats`` loops of ``n`` calls."""
    fn()  # warm caches on both sides, as a long-running gateway would have them
    runs = timeit.Timer(fn).repeat(repeat=repeats, number=n)
    per = [r / n * 1e6 for r in runs]
    return min(per), statistics.median(per)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="our calls per repeat")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--sample", type=int, default=200, help="URLs compared byte for byte")
    parser.add_argument("--min-ratio", type=float, default=0.0, help="fail below this speed-up")
    args = parser.parse_args(argv)

    ours, client = build()
    keys = sample_keys(args.sample)
    differing = check_identical(ours, client, keys)

    def ours_put() -> object:
        return ours.presign_put(
            BUCKET, KEY, content_type=CONTENT_TYPE, content_length=CONTENT_LENGTH
        )

    def boto_put() -> object:
        return botocore_put(client, KEY)

    # botocore is ~30x slower: fewer calls per repeat keep the run short.
    boto_n = max(args.n // 20, 100)
    ours_best, ours_median = per_call_us(ours_put, args.n, args.repeats)
    boto_best, boto_median = per_call_us(boto_put, boto_n, args.repeats)
    ratio = boto_median / ours_median

    post_best, post_median = per_call_us(lambda: ours_post(ours, KEY), args.n // 4, args.repeats)
    boto_post_best, boto_post_median = per_call_us(
        lambda: botocore_post(client, KEY), boto_n, args.repeats
    )
    post_ratio = boto_post_median / post_median

    identical = "yes" if differing == 0 else f"NO ({differing}/{len(keys)} differ)"
    print(
        f"presigned PUT: ours {ours_median:.1f} µs (best {ours_best:.1f}), "
        f"botocore {boto_median:.0f} µs (best {boto_best:.0f}), "
        f"{ratio:.1f}x faster (best-to-best {boto_best / ours_best:.1f}x), "
        f"identical: {identical} ({len(keys)} sampled URLs)"
    )
    print(
        f"POST policy:   ours {post_median:.1f} µs (best {post_best:.1f}), "
        f"botocore {boto_post_median:.0f} µs (best {boto_post_best:.0f}), "
        f"{post_ratio:.1f}x faster, identical fields (20 sampled keys)"
    )
    if differing:
        return 1
    if min(ratio, post_ratio) < args.min_ratio:
        print(f"speed-up {ratio:.1f}x is below --min-ratio {args.min_ratio}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
