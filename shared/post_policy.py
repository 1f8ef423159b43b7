"""AWS Signature V4 *POST policies* for browser form uploads straight to S3.

A presigned POST is an HTML-form upload: the browser sends ``fields`` (plus the file,
last) as ``multipart/form-data`` to the bucket URL. Storage checks the signed policy:
every condition must hold (exact key, exact content type, encryption, a byte range),
no unlisted field may appear, and the policy must not have expired. This is what
Uppy's Companion-style single uploads use (``GET /s3/params``).

The policy and signature are byte-identical to botocore's ``generate_presigned_post``
(signature version ``s3v4``) for the same fields, conditions and clock — a golden
unit test holds us to it — but nothing is built per call beyond the JSON document and
one HMAC; the day's signing key is derived once.

Addressing: the form goes to the *bucket* URL, which always ends in ``/`` (Uppy
builds an object's location as ``url + key``). Path style is ``{endpoint}/{bucket}/``;
virtual style is ``{scheme}://{bucket}.{host}/`` for a bucket that is one lowercase
DNS label on a non-IP endpoint, and path style otherwise.
"""

from __future__ import annotations

import base64
import calendar
import hashlib
import hmac
import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal
from urllib.parse import urlsplit

from shared.presign import MAX_EXPIRES_IN, MIN_EXPIRES_IN, Credentials

__all__ = ["Condition", "PostPolicySigner", "PresignedPost"]

_ALGORITHM: Final = "AWS4-HMAC-SHA256"

# A condition: ``{"field": "exact value"}`` or ``["op", "$field"|..., value...]``
# (e.g. ``["content-length-range", 1, 10]``, ``["starts-with", "$key", "a/"]``).
Condition = Mapping[str, str] | Sequence[str | int]

_DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{1,61}[a-z0-9])")
_IPV4_SHAPED = re.compile(r"(?:[0-9]{1,3}\.){3}[0-9]{1,3}")
_VALID_BUCKET = re.compile(r"[a-zA-Z0-9.\-_]{1,255}")
# Fields storage sets from the signature itself; callers may not pass them.
_RESERVED_FIELDS: Final = frozenset(
    {
        "key",
        "policy",
        "x-amz-algorithm",
        "x-amz-credential",
        "x-amz-date",
        "x-amz-signature",
        "x-amz-security-token",
        "file",
    }
)


@dataclass(frozen=True, slots=True)
class PresignedPost:
    """Send ``fields`` then the file (as the last part, named ``file``) to ``url``."""

    url: str  # the bucket URL, ending in "/"
    fields: dict[str, str]
    expires_at: datetime  # tz-aware UTC; storage refuses the form after this


class PostPolicySigner:
    """Signs POST policies for one endpoint, region and set of credentials.

    Build one at start-up and share it; calls are pure CPU work (tens of µs).
    """

    __slots__ = (
        "_access_key",
        "_addressing_style",
        "_endpoint",
        "_key_cache",
        "_region",
        "_secret",
        "_service",
        "_token",
    )

    def __init__(
        self,
        *,
        endpoint_url: str,
        region: str,
        credentials: Credentials,
        addressing_style: Literal["path", "virtual"] = "path",
        service: str = "s3",
    ) -> None:
        parts = urlsplit(endpoint_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("endpoint_url must be an http:// or https:// URL with a host")
        if parts.query or parts.fragment or "@" in parts.netloc:
            raise ValueError("endpoint_url must not carry a query, fragment or credentials")
        if addressing_style not in ("path", "virtual"):
            raise ValueError(
                f"addressing_style must be 'path' or 'virtual', not {addressing_style!r}"
            )
        if not region or "/" in region:
            raise ValueError(f"invalid region {region!r}")
        self._endpoint = parts
        self._addressing_style = addressing_style
        self._region = region
        self._service = service
        self._access_key = credentials.access_key
        self._secret = ("AWS4" + credentials.secret_key).encode()
        self._token = credentials.session_token
        self._key_cache: tuple[str, bytes] = ("", b"")

    def bucket_url(self, bucket: str) -> str:
        """Where the form is posted: the bucket's URL, always ending in ``/``."""
        if not _VALID_BUCKET.fullmatch(bucket):
            raise ValueError(f"invalid bucket name {bucket!r}")
        ep = self._endpoint
        host = ep.hostname or ""
        is_ip = ep.netloc.startswith("[") or _IPV4_SHAPED.fullmatch(host) is not None
        path = ep.path.rstrip("/")
        if (
            self._addressing_style == "virtual"
            and not is_ip
            and _DNS_LABEL.fullmatch(bucket)
            and not _IPV4_SHAPED.fullmatch(bucket)
        ):
            return f"{ep.scheme}://{bucket}.{ep.netloc}{path}/"
        return f"{ep.scheme}://{ep.netloc}{path}/{bucket}/"

    def presign_post(
        self,
        bucket: str,
        key: str,
        *,
        fields: Mapping[str, str] | None = None,
        conditions: Sequence[Condition] = (),
        expires_in: int = 900,
        now: datetime | None = None,
    ) -> PresignedPost:
        """Sign a POST policy for exactly ``key`` in ``bucket``.

        ``fields`` are sent with the form and each needs a matching condition (storage
        refuses unlisted fields); ``conditions`` come first in the policy, followed by
        the bucket, the key and the signature's own fields — botocore's order.
        """
        if type(expires_in) is not int or not MIN_EXPIRES_IN <= expires_in <= MAX_EXPIRES_IN:
            raise ValueError(f"expires_in must be {MIN_EXPIRES_IN}..{MAX_EXPIRES_IN} seconds")
        if not isinstance(key, str) or not key or len(key.encode()) > 1024:
            raise ValueError("key must be a non-empty string of at most 1024 bytes")
        form = dict(fields or {})
        reserved = sorted(name for name in form if name.lower() in _RESERVED_FIELDS)
        if reserved:
            raise ValueError(f"fields {reserved} are set by the signer")
        seconds = _seconds(now)
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(seconds))
        datestamp = amz_date[:8]
        credential = f"{self._access_key}/{datestamp}/{self._region}/{self._service}/aws4_request"

        policy_conditions: list[object] = [_condition(c) for c in conditions]
        policy_conditions.append({"bucket": bucket})
        policy_conditions.append({"key": key})
        policy_conditions.append({"x-amz-algorithm": _ALGORITHM})
        policy_conditions.append({"x-amz-credential": credential})
        policy_conditions.append({"x-amz-date": amz_date})
        form["key"] = key
        form["x-amz-algorithm"] = _ALGORITHM
        form["x-amz-credential"] = credential
        form["x-amz-date"] = amz_date
        if self._token is not None:
            form["x-amz-security-token"] = self._token
            policy_conditions.append({"x-amz-security-token": self._token})
        expiration = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds + expires_in))
        # json.dumps with its default separators: the bytes botocore signs.
        document = json.dumps({"expiration": expiration, "conditions": policy_conditions})
        policy = base64.b64encode(document.encode()).decode()
        form["policy"] = policy
        form["x-amz-signature"] = hmac.new(
            self._signing_key(datestamp), policy.encode(), hashlib.sha256
        ).hexdigest()
        return PresignedPost(
            url=self.bucket_url(bucket),
            fields=form,
            expires_at=datetime.fromtimestamp(seconds + expires_in, UTC),
        )

    def presign_upload(
        self,
        bucket: str,
        key: str,
        *,
        content_type: str,
        min_size: int,
        max_size: int,
        sse: str = "AES256",
        success_action_status: str = "201",
        expires_in: int = 900,
        now: datetime | None = None,
    ) -> PresignedPost:
        """A form upload storage accepts only as scoped: this key, this exact content
        type, server-side encryption, and a body of ``min_size..max_size`` bytes
        (larger → 400 ``EntityTooLarge``, anything else off-policy → 403)."""
        if not content_type.isascii() or not content_type.isprintable() or not content_type:
            raise ValueError("content_type must be non-empty printable ASCII")
        if not 0 <= min_size <= max_size:
            raise ValueError("need 0 <= min_size <= max_size")
        fields = {
            "Content-Type": content_type,
            "x-amz-server-side-encryption": sse,
            "success_action_status": success_action_status,
        }
        conditions: list[Condition] = [
            {"Content-Type": content_type},
            {"x-amz-server-side-encryption": sse},
            {"success_action_status": success_action_status},
            ["content-length-range", min_size, max_size],
        ]
        return self.presign_post(
            bucket, key, fields=fields, conditions=conditions, expires_in=expires_in, now=now
        )

    def _signing_key(self, datestamp: str) -> bytes:
        """kSecret → kDate → kRegion → kService → kSigning, derived once per UTC day."""
        cached = self._key_cache
        if cached[0] == datestamp:
            return cached[1]
        key = hmac.digest(self._secret, datestamp.encode(), "sha256")
        for part in (self._region, self._service, "aws4_request"):
            key = hmac.digest(key, part.encode(), "sha256")
        self._key_cache = (datestamp, key)
        return key


def _seconds(now: datetime | None) -> int:
    if now is None:
        return int(time.time())
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    # Sub-second precision is dropped, as botocore's strftime does.
    return calendar.timegm(now.utctimetuple())


def _condition(condition: Condition) -> object:
    if isinstance(condition, Mapping):
        return dict(condition)
    if isinstance(condition, str | bytes) or not isinstance(condition, Sequence):
        raise ValueError(f"a condition is a mapping or a list, not {condition!r}")
    return list(condition)
