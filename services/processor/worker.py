"""The processor: `scan.clean` → verify, measure, thumbnail → `processing.done|rejected`.

Nothing declared is trusted: the real bytes are sniffed against the declared type
(the object's signed Content-Type), images are decoded under a pixel limit in a
process pool (never on the event loop), and thumbnails are written beside the object
without metadata. Each object version is processed once: the result is recorded in
the work ledger before it is published, and a duplicate `scan.clean` republishes it
without reading, decoding or writing anything (see `shared.ledger`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from prometheus_client import Histogram

from services.processor.archive import (
    TAIL_BYTES,
    ArchiveError,
    central_directory_span,
    members,
    unscannable_reason,
)
from services.processor.imaging import (
    FileReport,
    ImageReport,
    Rejection,
    analyse_image,
)
from services.processor.lifeline import die_with
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
from shared.s3 import error_code, is_not_found
from shared.sniff import SNIFF_BYTES, sniff_type, type_matches
from shared.worker import WorkerResources, ensure_upload_object, failure_reporter

log = logging.getLogger(__name__)

STAGE = "processing"
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
# Images are decoded in memory; anything larger is described by streaming instead.
MAX_IMAGE_BYTES = 64 * 1024 * 1024
CHUNK = 1 << 20

PROCESS_SECONDS = Histogram(
    "clearance_processing_duration_seconds",
    "Time to verify and describe one object, thumbnails included",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


class Processor:
    def __init__(
        self,
        resources: WorkerResources,
        pool: ProcessPoolExecutor,
        *,
        metrics: WorkMetrics | None = None,
    ) -> None:
        self._settings = resources.settings
        self._s3 = resources.s3
        self._publisher = resources.publisher
        self._ledger = resources.ledger
        self._pool = pool
        self._metrics = metrics or default_work_metrics(STAGE)

    async def __call__(self, event: AnyEvent, delivery: Delivery) -> None:
        if not isinstance(event, ScanClean):
            raise Reject(f"the processor does not handle {event.type}")
        ensure_upload_object(self._settings, event.bucket, event.key, event.upload_id)
        extra = {"upload_id": str(event.upload_id), "correlation_id": event.correlation_id}
        try:
            head = await self._s3.head_object(Bucket=event.bucket, Key=event.key)
        except ClientError as exc:
            if is_not_found(exc):
                log.info("object %s is gone; nothing to process", event.key, extra=extra)
                return
            raise Retry(f"storage HEAD failed: {exc}") from exc
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
        declared = str(head.get("ContentType", "")).lower()
        size = int(head["ContentLength"])
        etag = str(head.get("ETag", "")).strip('"')
        # Every read below is pinned to this version: a client re-using its upload URL
        # can't swap the bytes between the checks and the verified copy.
        pinned = {"IfMatch": f'"{etag}"'} if etag else {}

        if declared in IMAGE_TYPES and size <= MAX_IMAGE_BYTES:
            data = await self._read(event, pinned)
            outcome: (
                ImageReport | FileReport | Rejection
            ) = await asyncio.get_running_loop().run_in_executor(
                self._pool,
                _analyse_image_job,
                data,
                declared,
                tuple(self._settings.thumbnail_sizes),
                self._settings.max_image_pixels,
                self._settings.processor_threads,
            )
        else:
            outcome = await self._describe_stream(event, declared, size, pinned)
            if isinstance(outcome, FileReport) and outcome.detected_type == "application/zip":
                outcome = await self._check_archive(event, size, pinned) or outcome

        duration_ms = (time.perf_counter() - started) * 1000
        if isinstance(outcome, Rejection):
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

        await self._keep_verified(event, etag)
        thumbnails: list[Thumbnail] = []
        metadata: dict[str, Any]
        if isinstance(outcome, ImageReport):
            thumbnails = await self._write_thumbnails(event, outcome)
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

    async def _keep_verified(self, event: ScanClean, etag: str) -> None:
        """Copy the verified version where no client URL can write; downloads read it."""
        target = verified_key(self._settings.verified_prefix, event.key)
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

    async def _write_thumbnails(self, event: ScanClean, report: ImageReport) -> list[Thumbnail]:
        written = []
        for derivative in report.derivatives:
            key = thumbnail_key(event.key, derivative.size)
            await self._put(key, derivative.data, derivative.content_type)
            written.append(
                Thumbnail(
                    size=derivative.size,
                    key=key,
                    width=derivative.width,
                    height=derivative.height,
                    content_type=derivative.content_type,
                    bytes=len(derivative.data),
                )
            )
        return written

    async def _put(self, key: str, data: bytes, content_type: str) -> None:
        try:
            await self._s3.put_object(
                Bucket=self._settings.bucket,
                Key=key,
                Body=data,
                ContentType=content_type,
                ServerSideEncryption="AES256",
            )
        except (ClientError, BotoCoreError) as exc:
            raise Retry(f"storage PUT failed: {exc}") from exc


def read_failure(exc: ClientError | BotoCoreError) -> Reject | Retry:
    """A changed object can never succeed (reject); anything else may (retry)."""
    if isinstance(exc, ClientError) and error_code(exc) == "PreconditionFailed":
        return Reject("the object changed while it was being processed")
    return Retry(f"storage GET failed: {exc}")


def _analyse_image_job(
    data: bytes, declared: str, sizes: tuple[int, ...], max_pixels: int, threads: int
) -> ImageReport | Rejection:
    """Runs in a worker process."""
    return analyse_image(
        data, declared_type=declared, sizes=sizes, max_pixels=max_pixels, threads=threads
    )


def process_pool(workers: int) -> ProcessPoolExecutor:
    # forkserver: never fork the event loop's process with its threads and sockets.
    # `die_with`: no pool process outlives this one, however it ends (see lifeline).
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("forkserver"),
        initializer=die_with,
        initargs=(os.getpid(),),
    )


def _warm() -> int:
    """A no-op job: a pool process that ran it has imported everything jobs need."""
    return os.getpid()


async def warm(pool: ProcessPoolExecutor, workers: int) -> None:
    """Start every pool process now, so the first files after a (re)start don't wait.

    Measured on a busy 2-core machine: a cold pool held its first jobs ~8 s.
    """
    loop = asyncio.get_running_loop()
    await asyncio.gather(*(loop.run_in_executor(pool, _warm) for _ in range(workers)))


async def build_processor(
    resources: WorkerResources, pool: ProcessPoolExecutor
) -> tuple[Handler, OnDeadLetter]:
    await warm(pool, resources.settings.processor_workers)
    return Processor(resources, pool), failure_reporter(resources.publisher, STAGE)
