"""The gateway's hot storage calls as plain SigV4 header-signed HTTP requests.

HEAD, CreateMultipartUpload, ListParts, CompleteMultipartUpload and
AbortMultipartUpload are built here (pure functions, golden-tested against the
requests a botocore client sends), signed by the presigner's core
(`Presigner.sign_request`) and sent on one aiohttp connection pool built at start-up.
botocore costs ~2 ms of CPU per call; this costs a few tens of µs.

Answers are parsed with expat directly: a document type declaration or an entity
declaration is refused (no entity expansion, no external entities), and elements
are matched by local name (S3's namespace is ignored).
"""

from __future__ import annotations

import asyncio
import logging
import random
import xml.parsers.expat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from xml.etree.ElementTree import Element, TreeBuilder
from xml.sax.saxutils import escape

import aiohttp
from yarl import URL

from shared.presign import Presigner, SignedRequest, metadata_headers

log = logging.getLogger(__name__)

S3_NAMESPACE = "http://s3.amazonaws.com/doc/2006-03-01/"
# What botocore's "standard" retry mode retries: transient server answers.
RETRY_STATUSES = frozenset({500, 502, 503, 504})
ATTEMPTS = 3
BACKOFF_SECONDS = 0.05


class S3Error(Exception):
    """Storage answered with an error (its HTTP status and S3 error code)."""

    def __init__(self, status: int, code: str, message: str = "") -> None:
        super().__init__(f"{status} {code}: {message}" if message else f"{status} {code}")
        self.status = status
        self.code = code

    @property
    def not_found(self) -> bool:
        return self.status == 404 or self.code in {"NoSuchKey", "NoSuchUpload", "NotFound"}


class S3Unreachable(Exception):
    """Storage could not be reached, or did not answer in time, after every attempt."""


class UnsafeXml(ValueError):
    """An answer with a DTD or entity declarations, or one that is not well-formed."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes


# -- requests (pure) ---------------------------------------------------------------


def head_object_request(
    signer: Presigner,
    bucket: str,
    key: str,
    *,
    now: datetime | None = None,
) -> SignedRequest:
    return signer.sign_request("HEAD", bucket, key, now=now)


def create_multipart_request(
    signer: Presigner,
    bucket: str,
    key: str,
    *,
    content_type: str,
    sse: str = "AES256",
    metadata: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> SignedRequest:
    """User `metadata` goes as signed `x-amz-meta-*` headers, as botocore sends it."""
    headers = {"Content-Type": content_type, "x-amz-server-side-encryption": sse}
    headers.update(metadata_headers(metadata))
    return signer.sign_request(
        "POST", bucket, key, query=[("uploads", None)], headers=headers, now=now
    )


def list_parts_request(
    signer: Presigner,
    bucket: str,
    key: str,
    upload_id: str,
    *,
    max_parts: int,
    marker: int,
    now: datetime | None = None,
) -> SignedRequest:
    query: list[tuple[str, str | None]] = [  # botocore's order
        ("uploadId", upload_id),
        ("max-parts", str(max_parts)),
        ("part-number-marker", str(marker)),
    ]
    return signer.sign_request("GET", bucket, key, query=query, now=now)


def complete_multipart_request(
    signer: Presigner,
    bucket: str,
    key: str,
    upload_id: str,
    parts: Iterable[tuple[int, str]],
    *,
    now: datetime | None = None,
) -> SignedRequest:
    """`parts` are (part number, ETag without quotes), in order."""
    listed = "".join(
        f"<Part><PartNumber>{n}</PartNumber><ETag>{escape(_quoted(etag))}</ETag></Part>"
        for n, etag in parts
    )
    body = f'<CompleteMultipartUpload xmlns="{S3_NAMESPACE}">{listed}</CompleteMultipartUpload>'
    return signer.sign_request(
        "POST",
        bucket,
        key,
        query=[("uploadId", upload_id)],
        body=body.encode(),
        now=now,
    )


def _quoted(etag: str) -> str:
    return f'"{etag}"'


def abort_multipart_request(
    signer: Presigner,
    bucket: str,
    key: str,
    upload_id: str,
    *,
    now: datetime | None = None,
) -> SignedRequest:
    return signer.sign_request("DELETE", bucket, key, query=[("uploadId", upload_id)], now=now)


# -- answers (pure) ----------------------------------------------------------------


def _refuse(*_: Any) -> Any:
    raise UnsafeXml("document type and entity declarations are refused")


def _local(tag: str) -> str:
    return tag.rpartition(":")[2]


def parse_xml(body: bytes) -> Element:
    """A well-formed XML answer as an element tree, by local names; no DTD, no entities."""
    builder = TreeBuilder()
    parser = xml.parsers.expat.ParserCreate()
    parser.StartDoctypeDeclHandler = _refuse
    parser.EntityDeclHandler = _refuse
    parser.ExternalEntityRefHandler = _refuse
    parser.StartElementHandler = lambda tag, attrs: builder.start(_local(tag), attrs)
    parser.EndElementHandler = lambda tag: builder.end(_local(tag))
    parser.CharacterDataHandler = builder.data
    try:
        parser.Parse(body, True)
        return builder.close()
    except xml.parsers.expat.ExpatError as exc:
        raise UnsafeXml(f"storage answered with malformed XML: {exc}") from None


def _text(element: Element, name: str) -> str:
    child = element.find(name)
    return "" if child is None or child.text is None else child.text


def error_of(answer: Answer) -> S3Error:
    """The S3 error an answer carries (HEAD answers have no body: the status says it)."""
    code, message = str(answer.status), ""
    if answer.body:
        try:
            root = parse_xml(answer.body)
        except UnsafeXml:
            pass  # a proxy's HTML error page, say: the status is all we know
        else:
            if root.tag == "Error":
                code = _text(root, "Code") or code
                message = _text(root, "Message")
    return S3Error(answer.status, code, message)


@dataclass(frozen=True, slots=True)
class ListedPart:
    part_number: int
    etag: str  # as storage sends it, quoted
    size: int
    last_modified: datetime | None


@dataclass(frozen=True, slots=True)
class PartsPage:
    parts: list[ListedPart]
    truncated: bool
    next_marker: int


def parse_parts_page(body: bytes) -> PartsPage:
    root = parse_xml(body)
    parts = []
    for p in root.iter("Part"):
        modified = _text(p, "LastModified")
        parts.append(
            ListedPart(
                part_number=int(_text(p, "PartNumber")),
                etag=_text(p, "ETag"),
                size=int(_text(p, "Size") or 0),
                last_modified=datetime.fromisoformat(modified) if modified else None,
            )
        )
    return PartsPage(
        parts,
        truncated=_text(root, "IsTruncated").strip().lower() == "true",
        next_marker=int(_text(root, "NextPartNumberMarker") or 0),
    )


# -- sending -----------------------------------------------------------------------


class S3Requests:
    """Sends header-signed storage calls on one connection pool (built at start-up)."""

    def __init__(self, session: aiohttp.ClientSession, signer: Presigner) -> None:
        self._session = session
        self._signer = signer

    async def send(self, request: SignedRequest) -> Answer:
        """One call, retried on connection failures and 5xx answers (3 attempts)."""
        for attempt in range(1, ATTEMPTS + 1):
            try:
                async with self._session.request(
                    request.method,
                    URL(request.url, encoded=True),  # signed as encoded: never re-quoted
                    headers=request.headers,
                    data=request.body or None,
                    skip_auto_headers=("Content-Type",),
                    allow_redirects=False,
                ) as resp:
                    body = await resp.read()
                    answer = Answer(resp.status, resp.headers, body)
            except (aiohttp.ClientError, TimeoutError) as exc:
                if attempt == ATTEMPTS:
                    raise S3Unreachable(f"{request.method} failed: {exc!r}") from None
            else:
                if answer.status not in RETRY_STATUSES or attempt == ATTEMPTS:
                    return answer
            await asyncio.sleep(BACKOFF_SECONDS * 2**attempt * random.random())
        raise AssertionError("unreachable")

    async def head(self, bucket: str, key: str) -> tuple[int, str] | None:
        """(size, ETag as sent) of an object; None if it does not exist."""
        answer = await self.send(head_object_request(self._signer, bucket, key))
        if answer.status == 404:
            return None
        if answer.status != 200:
            raise error_of(answer)
        return int(answer.headers.get("Content-Length", -1)), answer.headers.get("ETag", "")

    async def create_multipart(
        self, bucket: str, key: str, content_type: str, *, metadata: Mapping[str, str]
    ) -> str:
        answer = await self.send(
            create_multipart_request(
                self._signer, bucket, key, content_type=content_type, metadata=metadata
            )
        )
        if answer.status != 200:
            raise error_of(answer)
        upload_id = _text(parse_xml(answer.body), "UploadId")
        if not upload_id:
            raise S3Error(answer.status, "NoUploadId", "storage answered without an UploadId")
        return upload_id

    async def list_parts(
        self, bucket: str, key: str, upload_id: str, *, max_parts: int, marker: int
    ) -> PartsPage:
        answer = await self.send(
            list_parts_request(
                self._signer, bucket, key, upload_id, max_parts=max_parts, marker=marker
            )
        )
        if answer.status != 200:
            raise error_of(answer)
        return parse_parts_page(answer.body)

    async def complete_multipart(
        self, bucket: str, key: str, upload_id: str, parts: Iterable[tuple[int, str]]
    ) -> None:
        answer = await self.send(
            complete_multipart_request(self._signer, bucket, key, upload_id, parts)
        )
        if answer.status != 200:
            raise error_of(answer)
        # S3 may answer 200 and still fail: the error is then in the body.
        if parse_xml(answer.body).tag == "Error":
            raise error_of(Answer(500, answer.headers, answer.body))

    async def abort_multipart(self, bucket: str, key: str, upload_id: str) -> None:
        answer = await self.send(abort_multipart_request(self._signer, bucket, key, upload_id))
        if answer.status not in (200, 204):
            raise error_of(answer)
