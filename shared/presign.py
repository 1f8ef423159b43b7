"""AWS Signature V4 presigning for S3, without botocore on the hot path.

Three kinds share one signing core (the day's signing key, the clock stamp, the
bucket's address):

* *query-string* URLs (PUT, UploadPart, GET), byte-identical to botocore's
  ``generate_presigned_url``;
* *POST policies* for browser form uploads (``presign_post``), byte-identical to
  botocore's ``generate_presigned_post``: the browser sends ``fields`` (then the
  file, last) as ``multipart/form-data`` to the bucket URL and storage checks
  every condition (exact key and type, encryption, a byte range);
* *header-signed* requests (``sign_request``) that a service sends itself (the
  gateway's multipart control calls), byte-identical to botocore's
  ``S3SigV4Auth``: an ``Authorization`` header, ``X-Amz-Date`` and the payload's
  SHA-256 in ``X-Amz-Content-SHA256``.

The query URLs are byte-identical to botocore's ``generate_presigned_url`` (signature
version ``s3v4``) for the same inputs and clock, and about 30x cheaper: the day's
signing key is derived once and cached, the per-bucket URL prefix and host are
resolved once, and the canonical request is assembled directly as a string.

Addressing follows botocore's S3 endpoint rules for a custom ``endpoint_url``:

* ``path``: ``{endpoint}/{bucket}/{key}`` always.
* ``virtual``: ``{bucket}.{host}/{key}`` when the bucket is a lowercase DNS label
  of 3..63 characters that is not shaped like an IPv4 address; on an IP-literal
  endpoint such buckets stay path-style. A bucket with dots is virtual-hosted
  only over ``http`` (over ``https`` its name would not match a wildcard TLS
  certificate, so botocore falls back to path style, and so do we).

Where botocore would produce something unusable or silently weaker, we refuse or
differ on purpose (each is covered by a unit test):

* Expiry outside 1..604800 s raises ``ValueError`` (botocore signs anything).
* A dotted bucket, virtual style, over ``http`` on an IP-literal endpoint would
  give a host like ``my.bucket.10.0.0.1``; we raise instead.
* botocore drops the header ``content-type: application/x-www-form-urlencoded;
  charset=utf-8`` from the signature (its own form-encoding default); we always
  sign the content type we are given, so storage enforces it.
* S3 Express / Outposts / Object Lambda bucket suffixes and ARNs are refused:
  they need other signing schemes.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import hashlib
import hmac
import ipaddress
import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, Literal, NamedTuple
from urllib.parse import quote, urlsplit

__all__ = [
    "MAX_EXPIRES_IN",
    "MIN_EXPIRES_IN",
    "Condition",
    "Credentials",
    "PresignedPost",
    "PresignedRequest",
    "Presigner",
    "SignedRequest",
    "metadata_headers",
]

MIN_EXPIRES_IN: Final = 1
# SigV4 presigned URLs are valid for at most seven days.
MAX_EXPIRES_IN: Final = 604_800

_ALGORITHM: Final = "AWS4-HMAC-SHA256"
_UNSIGNED_PAYLOAD: Final = "UNSIGNED-PAYLOAD"
# S3 object keys are at most 1024 bytes of UTF-8.
_MAX_KEY_BYTES: Final = 1024
_MAX_PART_NUMBER: Final = 10_000

# Bytes urllib's quote() never escapes (plus "/" for object keys). A value made
# only of these needs no quoting at all: the common case, and much cheaper.
_UNRESERVED: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~"
_UNRESERVED_KEY: Final = _UNRESERVED + b"/"

# botocore's own rules (handlers.VALID_BUCKET, endpoint_provider regexes, compat.IPV4_RE).
_VALID_BUCKET = re.compile(r"[a-zA-Z0-9.\-_]{1,255}")
_HOST_LABEL = re.compile(r"(?!-)[a-zA-Z\d-]{1,63}(?<!-)")
_IPV4_SHAPED = re.compile(r"(?:[0-9]{1,3}\.){3}[0-9]{1,3}")
# Bucket suffixes that botocore routes to S3 Express, access points or Outposts.
_SPECIAL_BUCKET_SUFFIXES: Final = ("--x-s3", "--xa-s3", "--op-s3", "--ol-s3")

# An endpoint path we can join without normalisation: "/a/b" or "/a/b/", no dot segments.
_ENDPOINT_PATH = re.compile(r"(?:/(?!\.\.?(?:/|$))[A-Za-z0-9._~-]+)*/?")
_SERVICE = re.compile(r"[a-z0-9-]{1,63}")
# RFC 9110 token, for header names.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_METHOD = re.compile(r"[A-Za-z]{1,20}")
# User metadata names: lowercase, as S3 returns them.
_METADATA_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")

# botocore never signs these (SIGNED_HEADERS_BLACKLIST); "host" is ours to compute.
_UNSIGNABLE_HEADERS: Final = frozenset(
    {"expect", "transfer-encoding", "user-agent", "x-amzn-trace-id", "host"}
)
# Headers a header-signed request gets from the signer itself.
_SIGNER_HEADERS: Final = frozenset(
    {"authorization", "x-amz-date", "x-amz-content-sha256", "x-amz-security-token", "date"}
)
# POST-policy fields storage sets from the signature itself; callers may not pass them.
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
# A POST-policy condition: ``{"field": "exact value"}`` or ``["op", "$field", value...]``
# (e.g. ``["content-length-range", 1, 10]``, ``["starts-with", "$key", "a/"]``).
Condition = Mapping[str, str] | Sequence[str | int]
_AUTH_QUERY_NAMES: Final = frozenset(
    {
        "x-amz-algorithm",
        "x-amz-credential",
        "x-amz-date",
        "x-amz-expires",
        "x-amz-signedheaders",
        "x-amz-security-token",
        "x-amz-signature",
    }
)


@dataclass(frozen=True, slots=True)
class Credentials:
    """Static S3 credentials; the secret and token never appear in ``repr``."""

    access_key: str
    secret_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.access_key or not self.secret_key:
            raise ValueError("access_key and secret_key must not be empty")
        if self.session_token == "":
            raise ValueError("session_token must be None or non-empty")


@dataclass(frozen=True, slots=True)
class PresignedRequest:
    """A presigned request: send ``method`` to ``url`` with exactly ``headers``.

    ``headers`` are the signed headers; a request without any of them, or with
    another value, is refused by storage with 403. ``Content-Length`` is included
    as the signed value: HTTP clients (and browsers, which may not set it) derive
    it from the body, which must therefore be exactly that many bytes.
    """

    method: str
    url: str
    headers: dict[str, str]
    expires_at: datetime  # tz-aware UTC


@dataclass(frozen=True, slots=True)
class PresignedPost:
    """Send ``fields`` then the file (as the last part, named ``file``) to ``url``."""

    url: str  # the bucket URL, ending in "/"
    fields: dict[str, str]
    expires_at: datetime  # tz-aware UTC; storage refuses the form after this


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """A request signed in its headers: send ``method`` to ``url`` with exactly
    ``headers`` (``Host`` included) and ``body``.

    ``url`` is already percent-encoded and must be sent verbatim (no re-quoting).
    """

    method: str
    url: str
    headers: dict[str, str]
    body: bytes


class _Target(NamedTuple):
    """Where a bucket lives: URL up to the authority, path before the key, Host header."""

    origin: str
    path_prefix: str
    host: str


class Presigner:
    """Presigns S3 requests for one endpoint, region and set of credentials.

    Build one at start-up and share it; calls are pure CPU work (a few µs) and
    safe to make from the event loop. Caches (per-bucket targets, the signing key
    of the current day) are replaced atomically, so concurrent use from threads
    is safe as well.
    """

    __slots__ = (
        "_access_key",
        "_addressing_style",
        "_authority",
        "_cred_prefix",
        "_default_port",
        "_endpoint_path",
        "_hostname",
        "_is_ip",
        "_key_cache",
        "_port",
        "_region",
        "_scheme",
        "_scope_suffix",
        "_scope_suffix_enc",
        "_secret",
        "_service",
        "_stamp_cache",
        "_targets",
        "_token",
        "_token_enc",
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
        if addressing_style not in ("path", "virtual"):
            raise ValueError(
                f"addressing_style must be 'path' or 'virtual', not {addressing_style!r}"
            )
        if not _HOST_LABEL.fullmatch(region):
            raise ValueError(f"region {region!r} is not a valid DNS label")
        if not _SERVICE.fullmatch(service):
            raise ValueError(f"service {service!r} is not a valid signing name")
        self._addressing_style = addressing_style
        self._region = region
        self._service = service
        self._parse_endpoint(endpoint_url)

        self._secret = ("AWS4" + credentials.secret_key).encode()
        self._access_key = credentials.access_key
        self._token = credentials.session_token
        self._cred_prefix = _quote_query(credentials.access_key) + "%2F"
        self._scope_suffix = f"/{region}/{service}/aws4_request"
        self._scope_suffix_enc = f"%2F{region}%2F{service}%2Faws4_request"
        token = credentials.session_token
        self._token_enc = None if token is None else _quote_query(token)

        self._targets: dict[str, _Target] = {}
        self._key_cache: tuple[str, _Hmac] = ("", _Hmac(b""))
        self._stamp_cache: tuple[int, str, str] = (-1, "", "")

    def _parse_endpoint(self, endpoint_url: str) -> None:
        if not endpoint_url.isascii() or not endpoint_url.isprintable() or " " in endpoint_url:
            raise ValueError("endpoint_url must be printable ASCII without spaces")
        parts = urlsplit(endpoint_url)
        if parts.scheme not in ("http", "https"):
            raise ValueError("endpoint_url must be an http:// or https:// URL")
        if not parts.hostname or "@" in parts.netloc:
            raise ValueError("endpoint_url needs a host and must not carry credentials")
        if parts.query or parts.fragment or "?" in endpoint_url or "#" in endpoint_url:
            raise ValueError("endpoint_url must not have a query or fragment")
        if not _ENDPOINT_PATH.fullmatch(parts.path):
            raise ValueError("endpoint_url path must be plain segments like /prefix")
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"endpoint_url has an invalid port: {exc}") from None
        hostname = parts.hostname  # lowercased by urlsplit, as in the Host header
        is_ipv6 = parts.netloc.startswith("[")
        if is_ipv6:
            try:
                ipaddress.IPv6Address(hostname.partition("%")[0])
            except ValueError:
                raise ValueError("endpoint_url has an invalid IPv6 address") from None
            hostname = f"[{hostname}]"
        self._scheme = parts.scheme
        self._authority = parts.netloc  # kept verbatim in URLs, as botocore does
        self._endpoint_path = parts.path
        self._hostname = hostname
        self._is_ip = is_ipv6 or _IPV4_SHAPED.fullmatch(hostname) is not None
        self._default_port = 80 if parts.scheme == "http" else 443
        self._port = port

    # -- public API ---------------------------------------------------------

    def presign_url(
        self,
        method: str,
        bucket: str,
        key: str,
        *,
        expires_in: int,
        signed_headers: Mapping[str, str] | None = None,
        query: Mapping[str, str] | None = None,
        now: datetime | None = None,
    ) -> str:
        """Presign ``method`` on ``bucket``/``key`` and return the URL.

        ``signed_headers`` must then be sent exactly (names are case-insensitive);
        ``query`` holds extra operation parameters (raw, unencoded), kept in the
        given order before the authentication parameters. ``now`` (tz-aware)
        defaults to the current time.
        """
        if not isinstance(method, str) or not _METHOD.fullmatch(method):
            raise ValueError(f"invalid HTTP method {method!r}")
        headers = _check_headers(signed_headers) if signed_headers else []
        pairs = _check_query(query) if query else []
        url, _ = self._presign(method.upper(), bucket, key, expires_in, headers, pairs, now)
        return url

    def presign_put(
        self,
        bucket: str,
        key: str,
        *,
        content_type: str,
        content_length: int,
        sse: str | None = "AES256",
        checksum_sha256: str | None = None,
        metadata: Mapping[str, str] | None = None,
        expires_in: int = 900,
        now: datetime | None = None,
    ) -> PresignedRequest:
        """Presign a single-request PutObject that storage accepts only as declared.

        Content type, length, server-side encryption (unless ``sse`` is None), the
        base64 SHA-256 checksum (when given) and user ``metadata`` (``x-amz-meta-*``)
        are signed headers: another type, another body size, a missing SSE header,
        other metadata or other bytes fail with 403.
        """
        _check_value("content_type", content_type)
        length = _check_length(content_length)
        headers = {"Content-Type": content_type, "Content-Length": length}
        signed = [("content-length", length), ("content-type", content_type)]
        for name, value in metadata_headers(metadata):
            headers[name] = value
            signed.append((name, value))
        if sse is not None:
            _check_value("sse", sse)
            headers["x-amz-server-side-encryption"] = sse
            signed.append(("x-amz-server-side-encryption", sse))
        if checksum_sha256 is not None:
            _check_checksum(checksum_sha256)
            headers["x-amz-checksum-sha256"] = checksum_sha256
            signed.append(("x-amz-checksum-sha256", checksum_sha256))
        url, expires = self._presign("PUT", bucket, key, expires_in, signed, [], now)
        return PresignedRequest("PUT", url, headers, datetime.fromtimestamp(expires, UTC))

    def presign_upload_part(
        self,
        bucket: str,
        key: str,
        *,
        upload_id: str,
        part_number: int,
        content_length: int | None = None,
        checksum_sha256: str | None = None,
        expires_in: int = 900,
        now: datetime | None = None,
    ) -> PresignedRequest:
        """Presign UploadPart ``part_number`` (1..10000) of multipart ``upload_id``.

        The query carries ``partNumber`` then ``uploadId`` (the order of the S3
        model). ``content_length`` and ``checksum_sha256``, when given, are signed.
        """
        if type(part_number) is not int or not 1 <= part_number <= _MAX_PART_NUMBER:
            raise ValueError(f"part_number must be 1..{_MAX_PART_NUMBER}")
        if not isinstance(upload_id, str) or not upload_id:
            raise ValueError("upload_id must be a non-empty string")
        headers: dict[str, str] = {}
        signed: list[tuple[str, str]] = []
        if content_length is not None:
            length = _check_length(content_length)
            headers["Content-Length"] = length
            signed.append(("content-length", length))
        if checksum_sha256 is not None:
            _check_checksum(checksum_sha256)
            headers["x-amz-checksum-sha256"] = checksum_sha256
            signed.append(("x-amz-checksum-sha256", checksum_sha256))
        pairs = [("partNumber", str(part_number)), ("uploadId", _quote_query(upload_id))]
        url, expires = self._presign("PUT", bucket, key, expires_in, signed, pairs, now)
        return PresignedRequest("PUT", url, headers, datetime.fromtimestamp(expires, UTC))

    def presign_get(
        self,
        bucket: str,
        key: str,
        *,
        expires_in: int = 300,
        response_content_disposition: str | None = None,
        response_content_type: str | None = None,
        now: datetime | None = None,
    ) -> PresignedRequest:
        """Presign GetObject, optionally overriding the response's disposition and type."""
        pairs: list[tuple[str, str]] = []
        if response_content_disposition is not None:
            pairs.append(
                ("response-content-disposition", _quote_query(response_content_disposition))
            )
        if response_content_type is not None:
            pairs.append(("response-content-type", _quote_query(response_content_type)))
        url, expires = self._presign("GET", bucket, key, expires_in, [], pairs, now)
        return PresignedRequest("GET", url, {}, datetime.fromtimestamp(expires, UTC))

    def bucket_url(self, bucket: str) -> str:
        """Where a POST form for ``bucket`` is sent: its URL, always ending in ``/``.

        Uppy and browsers name the stored object ``bucket_url + key``.
        """
        target = self._targets.get(bucket) or self._resolve(bucket)
        return f"{target.origin}{target.path_prefix}/"

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
        if not isinstance(key, str) or not key or len(key.encode()) > _MAX_KEY_BYTES:
            raise ValueError(f"key must be a non-empty string of at most {_MAX_KEY_BYTES} bytes")
        url = self.bucket_url(bucket)
        form = dict(fields or {})
        reserved = sorted(name for name in form if name.lower() in _RESERVED_FIELDS)
        if reserved:
            raise ValueError(f"fields {reserved} are set by the signer")
        seconds, amz_date, datestamp = self._stamp(now)
        credential = f"{self._access_key}/{datestamp}{self._scope_suffix}"

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
        form["x-amz-signature"] = self._signer(datestamp).hexdigest(policy.encode())
        return PresignedPost(url, form, datetime.fromtimestamp(seconds + expires_in, UTC))

    def presign_form_upload(
        self,
        bucket: str,
        key: str,
        *,
        content_type: str,
        min_size: int,
        max_size: int,
        sse: str = "AES256",
        success_action_status: str = "201",
        metadata: Mapping[str, str] | None = None,
        expires_in: int = 900,
        now: datetime | None = None,
    ) -> PresignedPost:
        """A form upload storage accepts only as scoped: this key, this exact content
        type, server-side encryption, exactly this user ``metadata`` and a body of
        ``min_size..max_size`` bytes (larger → 400 ``EntityTooLarge``, anything else
        off-policy → 403)."""
        _check_value("content_type", content_type)
        if type(min_size) is not int or type(max_size) is not int or not 0 <= min_size <= max_size:
            raise ValueError("need integers 0 <= min_size <= max_size")
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
        for name, value in metadata_headers(metadata):
            fields[name] = value
            conditions.append({name: value})
        return self.presign_post(
            bucket, key, fields=fields, conditions=conditions, expires_in=expires_in, now=now
        )

    def sign_request(
        self,
        method: str,
        bucket: str,
        key: str | None = None,
        *,
        query: Sequence[tuple[str, str | None]] = (),
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        now: datetime | None = None,
    ) -> SignedRequest:
        """Sign a request in its headers, as botocore's ``S3SigV4Auth`` does.

        ``key`` None addresses the bucket itself. ``query`` holds raw (unencoded)
        parameters in URL order; a None value is a bare flag such as ``?uploads``.
        ``headers`` are all signed, with ``Host``, ``X-Amz-Date``, the payload's
        SHA-256 (``X-Amz-Content-SHA256``) and the session token, if any.
        """
        if not isinstance(method, str) or not _METHOD.fullmatch(method):
            raise ValueError(f"invalid HTTP method {method!r}")
        if not isinstance(body, bytes):
            raise ValueError("body must be bytes")
        method = method.upper()
        signed = _check_headers(headers) if headers else []
        for name, _ in signed:
            if name in _SIGNER_HEADERS:
                raise ValueError(f"header {name!r} is set by the signer")
        target = self._targets.get(bucket) or self._resolve(bucket)
        path = (target.path_prefix or "/") if key is None else target.path_prefix + _quote_key(key)
        pairs = [
            (_quote_query(name), "" if value is None else _quote_query(value))
            for name, value in query
        ]
        if pairs:
            url_qs = "&".join([name if value == "" else f"{name}={value}" for name, value in pairs])
            url = f"{target.origin}{path}?{url_qs}"
        else:
            url = f"{target.origin}{path}"
        _, amz_date, datestamp = self._stamp(now)
        payload = hashlib.sha256(body).hexdigest()
        out = dict(headers or {})
        out["Host"] = target.host
        out["X-Amz-Date"] = amz_date
        out["X-Amz-Content-SHA256"] = payload
        signed += [("host", target.host), ("x-amz-date", amz_date)]
        signed.append(("x-amz-content-sha256", payload))
        if self._token is not None:
            out["X-Amz-Security-Token"] = self._token
            signed.append(("x-amz-security-token", self._token))
        signed.sort()
        signed_names = ";".join([name for name, _ in signed])
        canonical_qs = "&".join([f"{name}={value}" for name, value in sorted(pairs)])
        canonical_request = (
            f"{method}\n{path}\n{canonical_qs}\n{_canonical_headers(signed)}\n"
            f"{signed_names}\n{payload}"
        )
        scope = f"{datestamp}{self._scope_suffix}"
        string_to_sign = (
            f"{_ALGORITHM}\n{amz_date}\n{scope}\n"
            + hashlib.sha256(canonical_request.encode()).hexdigest()
        )
        signature = self._signer(datestamp).hexdigest(string_to_sign.encode())
        out["Authorization"] = (
            f"{_ALGORITHM} Credential={self._access_key}/{scope}, "
            f"SignedHeaders={signed_names}, Signature={signature}"
        )
        return SignedRequest(method, url, out, body)

    # -- signing ------------------------------------------------------------

    def _presign(
        self,
        method: str,
        bucket: str,
        key: str,
        expires_in: int,
        headers: list[tuple[str, str]],
        query: list[tuple[str, str]],
        now: datetime | None,
    ) -> tuple[str, int]:
        """Sign; ``headers`` are (lowercase name, value), ``query`` already encoded.

        Returns the URL and the expiry as a Unix timestamp.
        """
        if type(expires_in) is not int or not MIN_EXPIRES_IN <= expires_in <= MAX_EXPIRES_IN:
            raise ValueError(f"expires_in must be {MIN_EXPIRES_IN}..{MAX_EXPIRES_IN} seconds")
        target = self._targets.get(bucket)
        if target is None:
            target = self._resolve(bucket)
        path = target.path_prefix + _quote_key(key)
        seconds, amz_date, datestamp = self._stamp(now)
        signer = self._signer(datestamp)

        headers.append(("host", target.host))
        headers.sort()
        signed_names = ";".join([name for name, _ in headers])
        canonical_headers = _canonical_headers(headers)

        credential = self._cred_prefix + datestamp + self._scope_suffix_enc
        expires = str(expires_in)
        signed_enc = signed_names.replace(";", "%3B")
        head = (
            f"X-Amz-Algorithm={_ALGORITHM}&X-Amz-Credential={credential}"
            f"&X-Amz-Date={amz_date}&X-Amz-Expires={expires}"
        )
        token = self._token_enc
        if token is None:
            auth_qs = f"{head}&X-Amz-SignedHeaders={signed_enc}"
            canonical_auth = auth_qs  # already in sorted order
        else:
            auth_qs = f"{head}&X-Amz-SignedHeaders={signed_enc}&X-Amz-Security-Token={token}"
            # Sorted, "Security-Token" precedes "SignedHeaders".
            canonical_auth = f"{head}&X-Amz-Security-Token={token}&X-Amz-SignedHeaders={signed_enc}"
        if query:
            url_qs = "&".join([f"{k}={v}" for k, v in query]) + "&" + auth_qs
            # Sorted by (encoded name, encoded value), exactly like botocore.
            pairs = [
                ("X-Amz-Algorithm", _ALGORITHM),
                ("X-Amz-Credential", credential),
                ("X-Amz-Date", amz_date),
                ("X-Amz-Expires", expires),
                ("X-Amz-SignedHeaders", signed_enc),
            ]
            if token is not None:
                pairs.append(("X-Amz-Security-Token", token))
            pairs.extend(query)
            pairs.sort()
            canonical_qs = "&".join([f"{k}={v}" for k, v in pairs])
        else:
            url_qs = auth_qs
            canonical_qs = canonical_auth

        canonical_request = (
            f"{method}\n{path}\n{canonical_qs}\n{canonical_headers}\n"
            f"{signed_names}\n{_UNSIGNED_PAYLOAD}"
        )
        string_to_sign = (
            f"{_ALGORITHM}\n{amz_date}\n{datestamp}{self._scope_suffix}\n"
            + hashlib.sha256(canonical_request.encode()).hexdigest()
        )
        signature = signer.hexdigest(string_to_sign.encode())
        url = f"{target.origin}{path}?{url_qs}&X-Amz-Signature={signature}"
        return url, seconds + expires_in

    def _stamp(self, now: datetime | None) -> tuple[int, str, str]:
        """(Unix seconds, ``YYYYMMDDTHHMMSSZ``, ``YYYYMMDD``), formatted once per second."""
        if now is None:
            seconds = int(time.time())
        else:
            if now.tzinfo is None or now.utcoffset() is None:
                raise ValueError("now must be timezone-aware")
            # utctimetuple drops microseconds exactly as botocore's strftime does.
            seconds = calendar.timegm(now.utctimetuple())
        cached = self._stamp_cache
        if cached[0] == seconds:
            return cached
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(seconds))
        stamp = (seconds, amz_date, amz_date[:8])
        self._stamp_cache = stamp
        return stamp

    def _signer(self, datestamp: str) -> _Hmac:
        """HMAC with the day's signing key, derived once per UTC day."""
        cached = self._key_cache
        if cached[0] == datestamp:
            return cached[1]
        signer = _Hmac(_derive_signing_key(self._secret, datestamp, self._region, self._service))
        self._key_cache = (datestamp, signer)
        return signer

    def _resolve(self, bucket: str) -> _Target:
        """Where ``bucket`` is addressed, following botocore's S3 endpoint rules."""
        if not isinstance(bucket, str) or not _VALID_BUCKET.fullmatch(bucket):
            raise ValueError(f"invalid bucket name {bucket!r}")
        if bucket.endswith(_SPECIAL_BUCKET_SUFFIXES):
            raise ValueError(f"bucket {bucket!r} needs S3 Express/Outposts signing")
        virtual = False
        if self._addressing_style == "virtual":
            if _virtual_hostable(bucket, allow_dots=False):
                virtual = not self._is_ip
            elif self._scheme == "http" and _virtual_hostable(bucket, allow_dots=True):
                if self._is_ip:
                    raise ValueError(
                        f"bucket {bucket!r} cannot be virtual-hosted on an IP endpoint; "
                        "use path addressing"
                    )
                virtual = True
        port = self._port
        port_suffix = f":{port}" if port is not None and port != self._default_port else ""
        if virtual:
            base = self._endpoint_path
            path_prefix = base[:-1] if base.endswith("/") else base
            return self._remember(
                bucket,
                _Target(
                    f"{self._scheme}://{bucket}.{self._authority}",
                    path_prefix,
                    f"{bucket}.{self._hostname}{port_suffix}",
                ),
            )
        base = self._endpoint_path
        base = base if base.endswith("/") else base + "/"
        return self._remember(
            bucket,
            _Target(
                f"{self._scheme}://{self._authority}",
                base + bucket,  # bucket characters never need percent-encoding
                f"{self._hostname}{port_suffix}",
            ),
        )

    def _remember(self, bucket: str, target: _Target) -> _Target:
        targets = self._targets
        if len(targets) >= 256:  # a service uses few buckets; bound it anyway
            targets.clear()
        targets[bucket] = target
        return target


class _Hmac:
    """HMAC-SHA256 with a fixed key whose padded inner/outer states are hashed once.

    Per message this costs two hash copies instead of a full HMAC set-up, which
    is most of the time ``hmac.digest`` spends on short messages (RFC 2104).
    """

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        block = key.ljust(64, b"\0")  # SHA-256 block size; SigV4 keys are 32 bytes
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))

    def hexdigest(self, message: bytes) -> str:
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()


def _derive_signing_key(secret: bytes, datestamp: str, region: str, service: str) -> bytes:
    """HMAC chain kSecret → kDate → kRegion → kService → kSigning."""
    key = hmac.digest(secret, datestamp.encode(), "sha256")
    key = hmac.digest(key, region.encode(), "sha256")
    key = hmac.digest(key, service.encode(), "sha256")
    return hmac.digest(key, b"aws4_request", "sha256")


def _canonical_headers(headers: list[tuple[str, str]]) -> str:
    """Sorted ``name:value`` lines; SigV4 "trimall" strips and collapses inner runs of
    whitespace in each value (as botocore does)."""
    return "".join([f"{name}:{' '.join(value.split())}\n" for name, value in headers])


def _virtual_hostable(bucket: str, *, allow_dots: bool) -> bool:
    if len(bucket) < 3 or bucket.lower() != bucket or _IPV4_SHAPED.fullmatch(bucket):
        return False
    labels = bucket.split(".") if allow_dots else [bucket]
    return all(_HOST_LABEL.fullmatch(label) for label in labels)


def _quote_key(key: str) -> str:
    """'/' + the key percent-encoded as botocore does (``/`` and ``~`` kept)."""
    if not isinstance(key, str) or not key:
        raise ValueError("key must be a non-empty string")
    raw = key.encode()  # raises UnicodeEncodeError (a ValueError) on lone surrogates
    if len(raw) > _MAX_KEY_BYTES:
        raise ValueError(f"key is longer than {_MAX_KEY_BYTES} bytes")
    if not raw.rstrip(_UNRESERVED_KEY):
        return "/" + key
    return "/" + quote(raw, safe="/~")


def _condition(condition: Condition) -> object:
    if isinstance(condition, Mapping):
        return dict(condition)
    if isinstance(condition, str | bytes) or not isinstance(condition, Sequence):
        raise ValueError(f"a condition is a mapping or a list, not {condition!r}")
    return list(condition)


def _quote_query(value: str) -> str:
    """Percent-encode a query name or value as botocore does (only ``-_.~`` kept)."""
    raw = value.encode()
    if not raw.rstrip(_UNRESERVED):
        return value
    return quote(raw, safe="-_.~")


def _sendable(value: str) -> bool:
    """A header value any HTTP client can send verbatim: printable ASCII (0x20..0x7e)."""
    return isinstance(value, str) and value.isascii() and value.isprintable()


def _check_value(name: str, value: str) -> None:
    if not _sendable(value) or not value.strip():
        raise ValueError(f"{name} must be non-empty printable ASCII")


def metadata_headers(metadata: Mapping[str, str] | None) -> list[tuple[str, str]]:
    """``x-amz-meta-<name>`` headers (lowercase names) for user metadata."""
    headers = []
    for name, value in (metadata or {}).items():
        if not isinstance(name, str) or not _METADATA_NAME.fullmatch(name):
            raise ValueError(f"invalid metadata name {name!r}: use a-z, 0-9 and '-'")
        _check_value(f"metadata {name!r}", value)
        headers.append((f"x-amz-meta-{name}", value))
    return headers


def _check_length(content_length: int) -> str:
    if type(content_length) is not int or content_length < 0:
        raise ValueError("content_length must be a non-negative integer")
    return str(content_length)


def _check_checksum(checksum_sha256: str) -> None:
    try:
        ok = len(base64.b64decode(checksum_sha256, validate=True)) == 32
    except (binascii.Error, ValueError, TypeError):
        ok = False
    if not ok or len(checksum_sha256) != 44:
        raise ValueError("checksum_sha256 must be the base64 of a 32-byte SHA-256 digest")


def _check_headers(signed_headers: Mapping[str, str]) -> list[tuple[str, str]]:
    headers: dict[str, str] = {}
    for name, value in signed_headers.items():
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            raise ValueError(f"invalid header name {name!r}")
        lname = name.lower()
        if lname in _UNSIGNABLE_HEADERS:
            raise ValueError(f"header {name!r} cannot be presigned")
        if lname in headers:
            raise ValueError(f"header {name!r} given twice")
        if not _sendable(value):
            raise ValueError(f"header {name!r} must be printable ASCII")
        headers[lname] = value
    return list(headers.items())


def _check_query(query: Mapping[str, str]) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for name, value in query.items():
        if not isinstance(name, str) or not name or not isinstance(value, str):
            raise ValueError(f"invalid query parameter {name!r}")
        if name.lower() in _AUTH_QUERY_NAMES:
            raise ValueError(f"query parameter {name!r} is reserved for the signature")
        pairs.append((_quote_query(name), _quote_query(value)))
    return pairs
