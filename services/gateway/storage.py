"""The gateway's storage calls, with S3's answers turned into the gateway's terms.

Only control calls go to storage from the gateway (HEAD, multipart control, delete);
bytes never pass through it. Every call either returns what the caller needs, or
raises a precise `Problem`: the multipart upload is gone, storage refused a part
list, or storage could not be reached (503, try again).

The calls on the request path (HEAD and multipart control) are plain signed HTTP
requests (`s3_requests`); the rare ones (deleting objects) keep the aiobotocore client.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from services.gateway.policy import PartListRefused, PartsGone
from services.gateway.s3_requests import S3Error, S3Requests, S3Unreachable, UnsafeXml
from services.gateway.store import Upload
from shared.problems import Conflict, ServiceUnavailable

log = logging.getLogger(__name__)

LIST_PAGE = 1000  # S3's own maximum per ListParts call
# What storage says when the part list does not fit the stored parts.
REFUSED_PART_LISTS = frozenset({"InvalidPart", "InvalidPartOrder", "EntityTooSmall"})
UNREACHABLE = "storage could not be reached; try again"


@dataclass(frozen=True, slots=True)
class HeldPart:
    """A part as storage holds it."""

    part_number: int
    etag: str  # without quotes
    size: int
    last_modified: datetime | None


@dataclass(frozen=True, slots=True)
class StoredObject:
    """What a HEAD tells about an object."""

    size: int
    etag: str | None  # without quotes


def unquoted(etag: str) -> str:
    """An ETag without the quotes S3 puts around it (clients send either form)."""
    return etag.strip().strip('"')


def _multipart(upload: Upload) -> tuple[str, str, str]:
    if upload.multipart_upload_id is None:
        raise Conflict("this is a single-PUT upload; it has no parts")
    return upload.bucket, upload.key, upload.multipart_upload_id


@contextmanager
def _answers(call: str, key: str) -> Iterator[None]:
    """Any failure that is not a domain answer means storage is unavailable (503)."""
    try:
        yield
    except (ClientError, BotoCoreError, S3Error, S3Unreachable, UnsafeXml) as exc:
        log.warning("storage %s %s failed: %s", call, key, exc)
        raise ServiceUnavailable(UNREACHABLE) from None


class Storage:
    """The gateway's view of storage: signed requests on one pool, and one aiobotocore
    client for the rest (both built once, at start-up)."""

    def __init__(self, client: Any, requests: S3Requests) -> None:
        self.client = client
        self.requests = requests

    async def head(self, bucket: str, key: str) -> StoredObject | None:
        """The object's size and ETag; None if it does not exist."""
        with _answers("HEAD", key):
            head = await self.requests.head(bucket, key)
        if head is None:
            return None
        size, etag = head
        return StoredObject(size, unquoted(etag) or None)

    async def create_multipart(
        self, bucket: str, key: str, content_type: str, *, metadata: dict[str, str]
    ) -> str:
        """Open a multipart upload (encrypted at rest, with user `metadata`); its id."""
        with _answers("CreateMultipartUpload", key):
            return await self.requests.create_multipart(
                bucket, key, content_type, metadata=metadata
            )

    async def parts(self, upload: Upload) -> list[HeldPart]:
        """Every part storage holds (all pages); `PartsGone` if the upload no longer exists."""
        bucket, key, upload_id = _multipart(upload)
        parts: list[HeldPart] = []
        marker = 0
        while True:
            with _answers("ListParts", key):
                try:
                    page = await self.requests.list_parts(
                        bucket, key, upload_id, max_parts=LIST_PAGE, marker=marker
                    )
                except S3Error as exc:
                    if exc.not_found:
                        raise PartsGone("storage no longer holds this multipart upload") from None
                    raise
            parts.extend(
                HeldPart(
                    part_number=p.part_number,
                    etag=unquoted(p.etag),
                    size=p.size,
                    last_modified=p.last_modified,
                )
                for p in page.parts
            )
            if not page.truncated or page.next_marker <= marker:
                return parts
            marker = page.next_marker

    async def complete_multipart(self, upload: Upload, parts: Iterable[tuple[int, str]]) -> None:
        """Complete with (part number, ETag) pairs, in order."""
        bucket, key, upload_id = _multipart(upload)
        with _answers("CompleteMultipartUpload", key):
            try:
                await self.requests.complete_multipart(bucket, key, upload_id, parts)
            except S3Error as exc:
                if exc.code in REFUSED_PART_LISTS:
                    raise PartListRefused(
                        f"storage refused to complete the upload: {exc.code}"
                    ) from None
                if exc.not_found:
                    raise PartsGone("storage no longer holds this multipart upload") from None
                raise

    async def abort_multipart(self, upload: Upload) -> None:
        """Abort a multipart upload; one that is already gone counts as aborted."""
        bucket, key, upload_id = _multipart(upload)
        with _answers("AbortMultipartUpload", key):
            try:
                await self.requests.abort_multipart(bucket, key, upload_id)
            except S3Error as exc:
                if not exc.not_found:
                    raise

    async def delete(self, bucket: str, keys: Iterable[str]) -> None:
        """Delete objects (missing ones are fine)."""
        objects = [{"Key": k} for k in keys]
        with _answers("DeleteObjects", objects[0]["Key"] if objects else bucket):
            await self.client.delete_objects(
                Bucket=bucket, Delete={"Objects": objects, "Quiet": True}
            )
