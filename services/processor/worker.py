"""The processor: `scan.clean` → verify, measure, thumbnail → `processing.done|rejected`.

Nothing declared is trusted: the real bytes are sniffed against the declared type
(the object's signed Content-Type), images are decoded under a pixel limit in a
process pool (never on the event loop), and thumbnails are written beside the object
without metadata. Each object version is processed once: the result is recorded in
the work ledger before it is published, and a duplicate `scan.clean` republishes it
without reading, decoding or writing anything (see `shared.ledger`).

Videos and PDFs are described in the pool too, by jobs that read the object
themselves with ranged GETs on a presigned URL (only what the demuxer or PDFium
asks for, within a byte budget) while this process streams the whole object
through SHA-256 beside them. Every job has a wall-time limit: a job over it is
killed with its pool process, a job that crashes its process is reported, and
either way the file is rejected with the reason and the next job gets a fresh
process.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

from botocore.exceptions import BotoCoreError, ClientError
from prometheus_client import Histogram

from services.processor.archive import (
    TAIL_BYTES,
    ArchiveError,
    central_directory_span,
    members,
    unscannable_reason,
)
from services.processor.document import analyse_pdf
from services.processor.imaging import (
    PILLOW_FORMATS,
    Derivative,
    FileReport,
    ImagePolicy,
    ImageReport,
    Rejection,
    analyse_image,
)
from services.processor.media import MediaLimits, MediaReport, MediaSource
from services.processor.pool import JobCrashed, JobPool, JobTimeout, describe_exit
from services.processor.profiles import image_policy, profile_of
from services.processor.ranged import StorageReadError
from services.processor.video import VIDEO_TYPES, analyse_video
from shared.amqp.consumer import Delivery, Handler, OnDeadLetter, Reject, Retry
from shared.events import (
    AnyEvent,
    Event,
    ProcessingDone,
    ProcessingRejected,
    ScanClean,
    Thumbnail,
    processing_id,
)
from shared.keys import thumbnail_key, verified_key
from shared.ledger import ObjectVersion, WorkMetrics, default_work_metrics
from shared.presign import Presigner
from shared.s3 import credentials, error_code, is_not_found
from shared.sniff import SNIFF_BYTES, sniff_type, type_matches
from shared.worker import WorkerResources, ensure_upload_object, failure_reporter

log = logging.getLogger(__name__)

STAGE = "processing"
IMAGE_TYPES = frozenset(PILLOW_FORMATS)
# Described by a pool job reading ranges of the object (never held in memory).
MEDIA_TYPES = VIDEO_TYPES | {"application/pdf"}
_JOBS: dict[str, Callable[..., MediaReport | Rejection]] = {
    **dict.fromkeys(VIDEO_TYPES, analyse_video),
    "application/pdf": analyse_pdf,
}
# Images are decoded in memory; anything larger is described by streaming instead.
MAX_IMAGE_BYTES = 64 * 1024 * 1024
CHUNK = 1 << 20

PROCESS_SECONDS = Histogram(
    "clearance_processing_duration_seconds",
    "Time to verify and describe one object, thumbnails included",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
READ_BYTES = Histogram(
    "clearance_processing_read_bytes",
    "Bytes a video or PDF job read from storage for its metadata and poster/preview",
    ["kind"],
    buckets=(64e3, 256e3, 1e6, 4e6, 16e6, 64e6, 256e6),
)

_T = TypeVar("_T")


class Processor:
    def __init__(
        self,
        resources: WorkerResources,
        pool: JobPool,
        *,
        metrics: WorkMetrics | None = None,
    ) -> None:
        settings = resources.settings
        self._settings = settings
        self._s3 = resources.s3
        self._publisher = resources.publisher
        self._ledger = resources.ledger
        self._pool = pool
        self._metrics = metrics or default_work_metrics(STAGE)
        # Signs the GET URLs pool jobs read from (the endpoint this process uses).
        self._storage = Presigner(
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            credentials=credentials(settings),
            addressing_style=settings.s3_addressing_style,
        )
        self._limits = MediaLimits(
            sizes=tuple(settings.thumbnail_sizes),
            max_pixels=settings.max_image_pixels,
            read_bytes=settings.media_read_bytes,
            max_frames=settings.media_max_frames,
            max_seconds=settings.media_max_seconds,
            max_pages=settings.pdf_max_pages,
        )

    async def __call__(self, event: AnyEvent, delivery: Delivery) -> None:
        if not isinstance(event, ScanClean):
            raise Reject(f"the processor does not handle {event.type}")
        ensure_upload_object(self._settings, event.bucket, event.key, event.upload_id)
        extra = {"upload_id": str(event.upload_id), "correlation_id": event.correlation_id}
        head = await self._head(event)
        if head is None:
            log.info("object %s is gone; nothing to process", event.key, extra=extra)
            return
        etag = str(head.get("ETag", "")).strip('"')
        if event.etag and etag != event.etag:
            raise Reject("the object changed after it was scanned")
        # Once per object version: a duplicate gets the recorded result, and no work.
        outcome = await self._ledger.once(
            STAGE, ObjectVersion(event.bucket, event.key, etag), lambda: self._process(event, head)
        )
        self._metrics.count(outcome)
        if outcome.duplicate:
            log.info("already processed; republishing the recorded result", extra=extra)
        for result in outcome.events:
            await self._publisher.publish(result)

    async def _process(self, event: ScanClean, head: dict[str, Any]) -> list[Event]:
        """Verify, describe and thumbnail the version `head` names; return the result event."""
        extra = {"upload_id": str(event.upload_id), "correlation_id": event.correlation_id}
        started = time.perf_counter()
        size = int(head["ContentLength"])
        etag = str(head.get("ETag", "")).strip('"')
        # The verified copy does not depend on what the checks find (but for an image
        # whose trailing data is stripped, rewritten below), so storage makes it while
        # they run; a rejected file's copy is deleted again. Downloads serve it only
        # once the upload is `ready`.
        copying = asyncio.ensure_future(self._keep_verified(event, etag, None, head))
        try:
            outcome, served = await self._check(event, head)
        except BaseException:
            await _cancelled(copying)
            raise
        duration_ms = (time.perf_counter() - started) * 1000
        if isinstance(outcome, Rejection):
            await _settled(copying)
            await self._drop_verified(event)
            log.info("rejected (%s): %s", outcome.code, outcome.reason, extra=extra)
            return [
                ProcessingRejected(
                    event_id=processing_id("processing.rejected", event.upload_id, event.key),
                    upload_id=event.upload_id,
                    correlation_id=event.correlation_id,
                    reason=outcome.reason[:1000],
                    code=outcome.code,
                    producer="processor",
                )
            ]
        if served is not None:
            # The image alone replaces the whole object's copy.
            await _settled(copying)
            copying = asyncio.ensure_future(self._keep_verified(event, etag, served, head))

        # The result is recorded in the ledger only once every write below is stored.
        derivatives = outcome.derivatives if isinstance(outcome, MediaReport | ImageReport) else []
        try:
            thumbnails = await self._write_thumbnails(event, derivatives)
        except BaseException:
            await _cancelled(copying)
            raise
        await copying
        metadata: dict[str, Any]
        if isinstance(outcome, MediaReport):
            metadata = {
                "type": outcome.detected_type,
                "size": size,
                "sha256": outcome.sha256,
                outcome.kind: outcome.facts,
            }
            READ_BYTES.labels(outcome.kind).observe(outcome.read.bytes_read)
            log.info(
                "%s described from %d of %d bytes (%d ranged GETs)",
                outcome.kind,
                outcome.read.bytes_read,
                size,
                outcome.read.requests,
                extra=extra,
            )
        elif isinstance(outcome, ImageReport):
            metadata = {
                "type": outcome.detected_type,
                "size": size,
                "sha256": outcome.sha256,
                "width": outcome.width,
                "height": outcome.height,
                "format": outcome.format,
                "mode": outcome.mode,
                "frames": outcome.frames,
                "exif": outcome.exif,
                "metadata_bytes": outcome.metadata_bytes,
                "trailing_bytes": outcome.trailing_bytes,
                "trailing_bytes_removed": outcome.trailing_bytes_removed,
                # What the download serves: the upload, or its image alone.
                "served_size": outcome.served_size,
                "served_sha256": outcome.served_sha256,
            }
        else:
            metadata = {
                "type": outcome.detected_type,
                "size": outcome.size,
                "sha256": outcome.sha256,
            }
        done = ProcessingDone(
            event_id=processing_id("processing.done", event.upload_id, event.key),
            upload_id=event.upload_id,
            correlation_id=event.correlation_id,
            metadata=metadata,
            thumbnails=thumbnails,
            duration_ms=duration_ms,
            producer="processor",
        )
        PROCESS_SECONDS.observe(time.perf_counter() - started)
        log.info("ready (%d thumbnails, %.0f ms)", len(thumbnails), duration_ms, extra=extra)
        return [done]

    async def _check(
        self, event: ScanClean, head: dict[str, Any]
    ) -> tuple[ImageReport | MediaReport | FileReport | Rejection, bytes | None]:
        """What the file is, and the bytes to serve when they are not the whole object."""
        declared = str(head.get("ContentType", "")).lower()
        size = int(head["ContentLength"])
        etag = str(head.get("ETag", "")).strip('"')
        # Every read below is pinned to this version: a client re-using its upload URL
        # can't swap the bytes between the checks and the verified copy.
        pinned = {"IfMatch": f'"{etag}"'} if etag else {}
        profile = profile_of(self._settings, head.get("Metadata"))
        if not profile.recorded:
            extra = {"upload_id": str(event.upload_id), "correlation_id": event.correlation_id}
            log.warning("the object names no known profile; applying %s", profile.name, extra=extra)
        outcome: ImageReport | MediaReport | FileReport | Rejection
        served: bytes | None = None  # what the verified copy holds, if not the whole object
        if declared in IMAGE_TYPES and size <= MAX_IMAGE_BYTES:
            data = await self._read(event, pinned)
            outcome = await self._in_pool(
                _analyse_image_job,
                data,
                declared,
                tuple(self._settings.thumbnail_sizes),
                self._settings.max_image_pixels,
                job_threads(self._settings.processor_threads, self._pool.running),
                image_policy(profile.policy),
            )
            if isinstance(outcome, ImageReport) and outcome.trailing_bytes_removed:
                served = data[: outcome.served_size]  # a prefix of the scanned bytes
        elif declared in MEDIA_TYPES and size > 0:
            outcome = await self._describe_media(event, declared, size, etag, pinned)
        else:
            outcome = await self._describe_stream(event, declared, size, pinned)
            if isinstance(outcome, FileReport) and outcome.detected_type == "application/zip":
                outcome = await self._check_archive(event, size, pinned) or outcome
        return outcome, served

    async def _drop_verified(self, event: ScanClean) -> None:
        """Delete the verified copy of a file the checks refused."""
        target = verified_key(self._settings.verified_prefix, event.key)
        try:
            await self._s3.delete_object(Bucket=event.bucket, Key=target)
        except (ClientError, BotoCoreError) as exc:
            raise Retry(f"storage DELETE failed: {exc}") from exc

    async def _head(self, event: ScanClean) -> dict[str, Any] | None:
        """The object's HEAD; None if it is gone."""
        try:
            head: dict[str, Any] = await self._s3.head_object(Bucket=event.bucket, Key=event.key)
        except ClientError as exc:
            if is_not_found(exc):
                return None
            raise Retry(f"storage HEAD failed: {exc}") from exc
        return head

    async def _keep_verified(
        self, event: ScanClean, etag: str, served: bytes | None, head: dict[str, Any]
    ) -> None:
        """Copy the verified version where no client URL can write; downloads read it.

        `served` (the image without its trailing data) is written instead of a copy.
        """
        target = verified_key(self._settings.verified_prefix, event.key)
        if served is not None:
            await self._put(
                target, served, str(head.get("ContentType", "")), head.get("Metadata") or {}
            )
            return
        params: dict[str, Any] = {
            "Bucket": event.bucket,
            "Key": target,
            "CopySource": {"Bucket": event.bucket, "Key": event.key},
            "ServerSideEncryption": "AES256",
            "MetadataDirective": "COPY",
        }
        if etag:
            params["CopySourceIfMatch"] = f'"{etag}"'
        try:
            await self._s3.copy_object(**params)
        except ClientError as exc:
            raise read_failure(exc) from exc
        except BotoCoreError as exc:
            raise Retry(f"storage copy failed: {exc}") from exc

    async def _read(self, event: ScanClean, pinned: dict[str, str]) -> bytes:
        try:
            response = await self._s3.get_object(Bucket=event.bucket, Key=event.key, **pinned)
            async with response["Body"] as body:
                data: bytes = await body.read()
        except (ClientError, BotoCoreError) as exc:
            raise read_failure(exc) from exc
        return data

    async def _describe_media(
        self, event: ScanClean, declared: str, size: int, etag: str, pinned: dict[str, str]
    ) -> MediaReport | FileReport | Rejection:
        """A video or PDF: a pool job reads what it needs while this process hashes it all."""
        head = await self._range(event, 0, min(size, SNIFF_BYTES) - 1, pinned)
        detected = sniff_type(head)
        if detected is None or not type_matches(declared, detected):
            return Rejection(
                "type_mismatch",
                f"declared {declared} but the content is {detected or 'of an unknown type'}",
            )
        job = _JOBS.get(detected)
        if job is None:
            return await self._describe_stream(event, declared, size, pinned)
        signed = self._storage.presign_get(
            event.bucket,
            event.key,
            expires_in=int(self._settings.processor_job_seconds) + 300,
        )
        source = MediaSource(url=signed.url, size=size, etag=etag or None)
        digest = asyncio.create_task(self._sha256(event, pinned))
        try:
            outcome = await self._in_pool(job, source, detected, self._limits)
        except BaseException:
            await _cancelled(digest)
            raise
        if isinstance(outcome, Rejection):
            await _cancelled(digest)
            return outcome
        return dataclasses.replace(outcome, sha256=await digest)

    async def _in_pool(self, fn: Callable[..., _T], *args: Any) -> _T | Rejection:
        """Run a job in the pool under the wall-time limit; its failures become verdicts."""
        limit = self._settings.processor_job_seconds
        try:
            return await self._pool.run(fn, *args, timeout=limit)
        except JobTimeout as exc:
            return Rejection(
                "over_limit",
                f"processing it took longer than {exc.seconds:g} s (the limit per file) "
                "and was stopped",
            )
        except JobCrashed as exc:
            if exc.by_crash_signal:
                return Rejection(
                    "corrupt", f"the file crashed its decoder ({describe_exit(exc.exitcode)})"
                )
            # Killed from outside (an operator, shutdown): the file may be fine.
            raise Retry(f"the processing worker died ({describe_exit(exc.exitcode)})") from exc
        except StorageReadError as exc:
            if exc.changed:
                raise Reject("the object changed while it was being processed") from exc
            raise Retry(f"storage read failed: {exc}") from exc

    async def _sha256(self, event: ScanClean, pinned: dict[str, str]) -> str:
        """The object's SHA-256, streamed (bounded memory)."""
        digest = hashlib.sha256()
        try:
            response = await self._s3.get_object(Bucket=event.bucket, Key=event.key, **pinned)
            body = response["Body"]
            try:
                while chunk := await body.read(CHUNK):
                    await asyncio.to_thread(digest.update, chunk)
            finally:
                body.close()
        except (ClientError, BotoCoreError) as exc:
            raise read_failure(exc) from exc
        return digest.hexdigest()

    async def _describe_stream(
        self, event: ScanClean, declared: str, size: int, pinned: dict[str, str]
    ) -> FileReport | Rejection:
        """Sniff and hash a large or non-image object without holding it in memory."""
        digest = hashlib.sha256()
        head = b""
        try:
            response = await self._s3.get_object(Bucket=event.bucket, Key=event.key, **pinned)
            body = response["Body"]  # aiobotocore StreamingBody: read(n) streams
            try:
                while chunk := await body.read(CHUNK):
                    if len(head) < SNIFF_BYTES:
                        head += chunk[: SNIFF_BYTES - len(head)]
                    # hashlib releases the GIL on large buffers: a thread keeps the loop free.
                    await asyncio.to_thread(digest.update, chunk)
            finally:
                body.close()
        except (ClientError, BotoCoreError) as exc:
            raise read_failure(exc) from exc
        detected = sniff_type(head)
        if detected is None or not type_matches(declared, detected):
            return Rejection(
                "type_mismatch",
                f"declared {declared} but the content is {detected or 'of an unknown type'}",
            )
        return FileReport(size=size, sha256=digest.hexdigest(), detected_type=detected)

    async def _check_archive(
        self, event: ScanClean, size: int, pinned: dict[str, str]
    ) -> Rejection | None:
        """Reject archives whose members the scanner could not have fully scanned."""
        try:
            tail_start = max(0, size - TAIL_BYTES)
            tail = await self._range(event, tail_start, size - 1, pinned)
            offset, length = central_directory_span(tail, size)
            if offset >= tail_start:  # usually the directory is in the tail already
                directory = tail[offset - tail_start : offset - tail_start + length]
            else:
                directory = await self._range(event, offset, offset + length - 1, pinned)
            reason = unscannable_reason(members(directory), self._settings.clamd_max_bytes)
        except ArchiveError as exc:
            return Rejection("corrupt", f"the archive can't be read: {exc}")
        return Rejection("unscannable", reason) if reason else None

    async def _range(
        self, event: ScanClean, first: int, last: int, pinned: dict[str, str]
    ) -> bytes:
        if last < first:
            return b""
        try:
            response = await self._s3.get_object(
                Bucket=event.bucket, Key=event.key, Range=f"bytes={first}-{last}", **pinned
            )
            body = response["Body"]
            try:
                data: bytes = await body.read()
            finally:
                body.close()
        except (ClientError, BotoCoreError) as exc:
            raise read_failure(exc) from exc
        return data

    async def _write_thumbnails(
        self, event: ScanClean, derivatives: list[Derivative]
    ) -> list[Thumbnail]:
        written = [
            Thumbnail(
                size=d.size,
                key=thumbnail_key(event.key, d.size),
                width=d.width,
                height=d.height,
                content_type=d.content_type,
                bytes=len(d.data),
            )
            for d in derivatives
        ]
        await asyncio.gather(
            *(
                self._put(t.key, d.data, d.content_type)
                for t, d in zip(written, derivatives, strict=True)
            )
        )
        return written

    async def _put(
        self, key: str, data: bytes, content_type: str, metadata: dict[str, str] | None = None
    ) -> None:
        try:
            await self._s3.put_object(
                Bucket=self._settings.bucket,
                Key=key,
                Body=data,
                ContentType=content_type,
                ServerSideEncryption="AES256",
                Metadata=metadata or {},
            )
        except (ClientError, BotoCoreError) as exc:
            raise Retry(f"storage PUT failed: {exc}") from exc


def read_failure(exc: ClientError | BotoCoreError) -> Reject | Retry:
    """A changed object can never succeed (reject); anything else may (retry)."""
    if isinstance(exc, ClientError) and error_code(exc) == "PreconditionFailed":
        return Reject("the object changed while it was being processed")
    return Retry(f"storage GET failed: {exc}")


def job_threads(setting: int | None, running: int, cpus: int | None = None) -> int:
    """Threads for an image job: `setting` if given, else 2 on an idle pool, 1 on a busy one."""
    if setting is not None:
        return setting
    if running:
        return 1
    return min(2, cpus if cpus is not None else os.cpu_count() or 1)


def _analyse_image_job(
    data: bytes,
    declared: str,
    sizes: tuple[int, ...],
    max_pixels: int,
    threads: int,
    policy: ImagePolicy,
) -> ImageReport | Rejection:
    """Runs in a worker process."""
    return analyse_image(
        data,
        declared_type=declared,
        sizes=sizes,
        max_pixels=max_pixels,
        threads=threads,
        policy=policy,
    )


async def _settled(task: asyncio.Future[Any]) -> None:
    """Wait for a write that is about to be replaced or deleted; its failure no longer matters."""
    with contextlib.suppress(Retry, Reject):
        await task


async def _cancelled(task: asyncio.Future[Any]) -> None:
    """Cancel a helper task and wait for it; its own failure no longer matters."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Retry, Reject):
        await task


def _warm() -> None:
    """A no-op job: a pool process that ran it has imported this module and its own."""


def process_pool(workers: int) -> JobPool:
    """The pool CPU work runs in: one process per slot, jobs killed past their limit."""
    return JobPool(workers)


async def build_processor(
    resources: WorkerResources, pool: JobPool
) -> tuple[Handler, OnDeadLetter]:
    # Every pool process started now, so the first files after a (re)start don't wait
    # (measured on a busy 2-core machine: a cold pool held its first jobs ~8 s).
    await pool.warm(_warm)
    return Processor(resources, pool), failure_reporter(resources.publisher, STAGE)
