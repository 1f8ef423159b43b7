"""The scanner: `object.created` → stream the object into clamd → clean, infected or failed.

Memory stays bounded whatever the file size: the object is read from storage in
chunks and each chunk goes straight into clamd's INSTREAM. A file clamd could not
scan completely is never reported clean: the upload fails with clamd's reason.
Infected objects are moved to the quarantine prefix, outside anything served.

Each object version is scanned once: the verdict is recorded in the work ledger
before it is published, and a duplicate `object.created` republishes it (see
`shared.ledger`). Quarantining comes after the verdict is recorded and is repeated
for a duplicate, so a crash at any point leaves neither an infected object in place
nor an upload whose verdict is lost with the object it was about.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from prometheus_client import Histogram

from services.scanner.clamd import ClamdClient, ClamdUnavailable, ScanIncomplete
from shared.amqp.consumer import Delivery, Handler, OnDeadLetter, Reject, Retry
from shared.events import (
    AnyEvent,
    Event,
    ObjectCreated,
    ScanClean,
    ScanInfected,
    ScanStarted,
    UploadFailed,
    failed_id,
    scan_clean_id,
    scan_infected_id,
    scan_started_id,
)
from shared.keys import quarantine_key
from shared.ledger import ObjectVersion, WorkMetrics, default_work_metrics
from shared.s3 import error_code, is_not_found
from shared.worker import WorkerResources, ensure_upload_object, failure_reporter

log = logging.getLogger(__name__)

STAGE = "scan"
CHUNK = 1 << 20

SCAN_SECONDS = Histogram(
    "clearance_scan_duration_seconds",
    "Time to stream one object through clamd",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)


class Scanner:
    def __init__(
        self,
        resources: WorkerResources,
        clamd: ClamdClient,
        *,
        metrics: WorkMetrics | None = None,
    ) -> None:
        self._settings = resources.settings
        self._s3 = resources.s3
        self._publisher = resources.publisher
        self._ledger = resources.ledger
        self._clamd = clamd
        self._metrics = metrics or default_work_metrics(STAGE)

    async def __call__(self, event: AnyEvent, delivery: Delivery) -> None:
        if not isinstance(event, ObjectCreated):
            raise Reject(f"the scanner does not handle {event.type}")
        ensure_upload_object(self._settings, event.bucket, event.key, event.upload_id)
        extra = {"upload_id": str(event.upload_id), "correlation_id": event.correlation_id}
        etag = event.etag or await self._current_etag(event)
        if etag is None:
            log.info("object %s is gone; nothing to scan", event.key, extra=extra)
            return
        outcome = await self._ledger.once(
            STAGE, ObjectVersion(event.bucket, event.key, etag), lambda: self._scan(event, etag)
        )
        self._metrics.count(outcome)
        if outcome.duplicate:
            log.info("already scanned; republishing the recorded verdict", extra=extra)
        for verdict in outcome.events:
            if isinstance(verdict, ScanInfected):
                await self._quarantine(event)
            await self._publish(verdict)

    async def _scan(self, event: ObjectCreated, etag: str) -> list[Event]:
        """Scan the version `etag` of the object; return the verdict to record and publish."""
        extra = {"upload_id": str(event.upload_id), "correlation_id": event.correlation_id}
        # The broker's confirm of `scan.started` (a quorum-queue write) is awaited while
        # the object streams into clamd, not before: every verdict is published only
        # after it, on the same channel, so the recorder still sees them in order.
        announce = asyncio.create_task(
            self._publish(
                ScanStarted(
                    event_id=scan_started_id(event.upload_id, event.key),
                    upload_id=event.upload_id,
                    correlation_id=event.correlation_id,
                    bucket=event.bucket,
                    key=event.key,
                    producer="scanner",
                )
            )
        )
        try:
            verdict = await self._verdict(event, etag, extra)
            await announce
            return verdict
        finally:
            # A failure above is the handler's outcome (retried, re-announced by id).
            await asyncio.gather(announce, return_exceptions=True)

    async def _verdict(self, event: ObjectCreated, etag: str, extra: dict[str, str]) -> list[Event]:
        if event.size > self._clamd.max_bytes:
            return [
                self._failed(
                    event,
                    f"the file is {event.size} bytes; the virus scanner can fully scan at most "
                    f"{self._clamd.max_bytes}",
                )
            ]

        started = time.perf_counter()
        try:
            body = await self._open(event, etag)
        except FileNotFoundError:
            # Deleted or aborted by its owner: nothing to scan.
            log.info("object %s is gone; nothing to scan", event.key, extra=extra)
            return []
        try:
            result = await self._clamd.scan_stream(_chunks(body))
        except ScanIncomplete as exc:
            return [
                self._failed(
                    event, f"the virus scanner could not scan the whole file: {exc.reason}"
                )
            ]
        except ClamdUnavailable as exc:
            raise Retry(str(exc)) from exc
        finally:
            body.close()
        SCAN_SECONDS.observe(time.perf_counter() - started)

        if result.clean:
            log.info(
                "clean (%d bytes, %.0f ms)",
                result.scanned_bytes,
                result.duration_s * 1000,
                extra=extra,
            )
            return [
                ScanClean(
                    event_id=scan_clean_id(event.upload_id, event.key),
                    upload_id=event.upload_id,
                    correlation_id=event.correlation_id,
                    bucket=event.bucket,
                    key=event.key,
                    size=result.scanned_bytes,
                    etag=etag,
                    duration_ms=result.duration_s * 1000,
                    producer="scanner",
                )
            ]
        signature = result.signature or "unknown"
        target = quarantine_key(self._settings.quarantine_prefix, event.key)
        log.warning("infected: %s; quarantining at %s", signature, target, extra=extra)
        return [
            ScanInfected(
                event_id=scan_infected_id(event.upload_id, event.key),
                upload_id=event.upload_id,
                correlation_id=event.correlation_id,
                bucket=event.bucket,
                key=event.key,
                signature=signature,
                quarantine_key=target,
                producer="scanner",
            )
        ]

    async def _current_etag(self, event: ObjectCreated) -> str | None:
        """The stored version's ETag, for an event that did not carry one (None: gone)."""
        try:
            head = await self._s3.head_object(Bucket=event.bucket, Key=event.key)
        except ClientError as exc:
            if is_not_found(exc):
                return None
            raise Retry(f"storage HEAD failed: {error_code(exc)}") from exc
        except BotoCoreError as exc:
            raise Retry(f"storage HEAD failed: {exc}") from exc
        return str(head.get("ETag", "")).strip('"') or None

    async def _open(self, event: ObjectCreated, etag: str) -> Any:
        # Scan exactly the version that landed; a replaced object is another event.
        try:
            response = await self._s3.get_object(
                Bucket=event.bucket, Key=event.key, IfMatch=f'"{etag}"'
            )
        except ClientError as exc:
            if is_not_found(exc):
                raise FileNotFoundError(event.key) from exc
            code = error_code(exc)
            if code == "PreconditionFailed":
                raise Reject("the object changed after it landed") from exc
            raise Retry(f"storage GET failed: {code}") from exc
        except BotoCoreError as exc:
            raise Retry(f"storage GET failed: {exc}") from exc
        return response["Body"]

    async def _quarantine(self, event: ObjectCreated) -> str:
        """Copy the object under the quarantine prefix, then delete the original.

        Idempotent: once the original is gone (moved by an earlier run), nothing happens.
        """
        target = quarantine_key(self._settings.quarantine_prefix, event.key)
        try:
            await self._s3.copy_object(
                Bucket=event.bucket,
                Key=target,
                CopySource={"Bucket": event.bucket, "Key": event.key},
                ServerSideEncryption="AES256",
                MetadataDirective="COPY",
            )
            await self._s3.delete_object(Bucket=event.bucket, Key=event.key)
        except ClientError as exc:
            if is_not_found(exc):
                return target  # already moved by an earlier attempt
            raise Retry(f"quarantine failed: {exc}") from exc
        except BotoCoreError as exc:
            raise Retry(f"quarantine failed: {exc}") from exc
        return target

    def _failed(self, event: ObjectCreated, reason: str) -> UploadFailed:
        log.warning("scan failed: %s", reason, extra={"upload_id": str(event.upload_id)})
        return UploadFailed(
            event_id=failed_id(event.upload_id, STAGE),
            upload_id=event.upload_id,
            correlation_id=event.correlation_id,
            reason=reason[:1000],
            stage=STAGE,
            producer="scanner",
        )

    async def _publish(self, event: Any) -> None:
        await self._publisher.publish(event)


async def _chunks(body: Any) -> AsyncIterator[bytes]:
    while True:
        chunk: bytes = await body.read(CHUNK)
        if not chunk:
            return
        yield chunk


async def build_scanner(resources: WorkerResources) -> tuple[Handler, OnDeadLetter]:
    settings = resources.settings
    clamd = ClamdClient.from_settings(settings)
    # A quick look only: a slow or absent clamd must not hold up consuming.
    probe = ClamdClient(settings.clamd_host, settings.clamd_port, timeout=2, max_bytes=1)
    if not await probe.ping():
        log.warning(
            "clamd at %s:%d does not answer yet; scans retry until it does",
            settings.clamd_host,
            settings.clamd_port,
        )
    return Scanner(resources, clamd), failure_reporter(resources.publisher, STAGE)
