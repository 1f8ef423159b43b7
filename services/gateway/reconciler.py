"""The reconciler: converges uploads whose notification never came or whose work stalled.

Every `reconcile_interval_seconds` it
1. HEADs the object of each `pending`/`uploading` upload past its deadline: present →
   recorded as landed (and the pipeline started), absent → `expired` (an abandoned
   multipart upload is aborted in storage first);
2. republishes work stuck in `uploaded`/`scanning` (→ `object.created`) or
   `processing` (→ `scan.clean`) for longer than `stuck_after_seconds`.
It is idempotent: it only ever proposes forward moves and re-sends deterministic
events, which every consumer drops when they are duplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aiohttp import web
from botocore.exceptions import BotoCoreError, ClientError

from services.gateway import store
from services.gateway.appkeys import METRICS, POOL, PUBLISHER, S3, SETTINGS, EventPublisher
from services.gateway.landing import landed_event, record_landing
from services.gateway.lifecycle import Status
from services.gateway.metrics import GatewayMetrics
from shared.amqp.publisher import PublishFailed
from shared.amqp.topology import BrokerUnavailable
from shared.events import ObjectCreated, ScanClean, scan_clean_id
from shared.s3 import is_not_found
from shared.settings import Settings

log = logging.getLogger(__name__)

ACTOR = "reconciler"
BATCH = 500
# A single PUT may still be in flight when its URL expires (it was started in time).
LANDING_GRACE = timedelta(minutes=1)


@dataclass
class ReconcileReport:
    landed: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)
    republished: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.landed or self.expired or self.republished)


class Reconciler:
    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool[Any],
        s3: Any,
        publisher: EventPublisher | None,
        metrics: GatewayMetrics,
    ) -> None:
        self._settings = settings
        self._pool = pool
        self._s3 = s3
        self._publisher = publisher
        self._metrics = metrics
        # upload id → monotonic time of the last republish, so a stalled upload is
        # nudged once per `stuck_after_seconds`, not on every pass.
        self._nudged: dict[str, float] = {}

    async def run_once(self, now: datetime | None = None) -> ReconcileReport:
        now = now or datetime.now(UTC)
        report = ReconcileReport()
        await self._overdue(now, report)
        await self._stalled(now, report)
        if report:
            log.info(
                "reconciled: %d landed, %d expired, %d republished",
                len(report.landed),
                len(report.expired),
                len(report.republished),
            )
        return report

    async def _overdue(self, now: datetime, report: ReconcileReport) -> None:
        abandon = timedelta(seconds=self._settings.multipart_abandon_seconds)
        rows = await self._pool.fetch(
            "SELECT id FROM uploads WHERE status = ANY($1::text[]) AND ("
            " (multipart_upload_id IS NULL AND expires_at < $2)"
            " OR (multipart_upload_id IS NOT NULL AND created_at < $3))"
            " ORDER BY updated_at LIMIT $4",
            [Status.PENDING.value, Status.UPLOADING.value],
            now - LANDING_GRACE,
            now - abandon,
            BATCH,
        )
        for row in rows:
            upload = await store.get_upload(self._pool, row["id"])
            if upload is None or upload.status not in (Status.PENDING, Status.UPLOADING):
                continue
            head = await self._head(upload)
            if head is not None:
                event = landed_event(upload, head, "reconciler")
                await record_landing(
                    self._pool, self._publisher, self._metrics, upload, event, actor=ACTOR
                )
                report.landed.append(str(upload.id))
                continue
            if upload.multipart_upload_id and not await self._abort_multipart(upload):
                continue
            result = await store.transition(
                self._pool,
                upload.id,
                to=Status.EXPIRED,
                event_id=f"expired:{upload.id}",
                actor=ACTOR,
                detail={"deadline": upload.expires_at.isoformat()},
                updates={"reason": "the file never arrived before the upload expired"},
            )
            if result is not None and result.entry is not None:
                self._metrics.transitions.labels(Status.EXPIRED.value).inc()
                report.expired.append(str(upload.id))

    async def _stalled(self, now: datetime, report: ReconcileReport) -> None:
        if self._publisher is None:
            return
        stuck = timedelta(seconds=self._settings.stuck_after_seconds)
        rows = await self._pool.fetch(
            "SELECT id FROM uploads WHERE status = ANY($1::text[]) AND updated_at < $2"
            " ORDER BY updated_at LIMIT $3",
            [Status.UPLOADED.value, Status.SCANNING.value, Status.PROCESSING.value],
            now - stuck,
            BATCH,
        )
        clock = time.monotonic()
        for row in rows:
            key = str(row["id"])
            last = self._nudged.get(key)
            if last is not None and clock - last < self._settings.stuck_after_seconds:
                continue
            upload = await store.get_upload(self._pool, row["id"])
            if upload is None:
                continue
            event = await self._work_event(upload)
            if event is None:
                continue
            try:
                await self._publisher.publish(event)
            except (PublishFailed, BrokerUnavailable, ConnectionError, TimeoutError) as exc:
                log.warning("republishing %s for %s failed: %s", event.type, key, exc)
                continue
            self._nudged[key] = clock
            report.republished.append(key)
        # Forget uploads that are no longer stalled.
        live = {str(r["id"]) for r in rows}
        for key in list(self._nudged):
            if key not in live:
                del self._nudged[key]

    async def _work_event(self, upload: store.Upload) -> ObjectCreated | ScanClean | None:
        head = await self._head(upload)
        if head is None:
            log.warning("stalled upload %s has no object in storage", upload.id)
            return None
        if upload.status is Status.PROCESSING:
            return ScanClean(
                event_id=scan_clean_id(upload.id, upload.key),
                upload_id=upload.id,
                correlation_id=upload.correlation_id,
                bucket=upload.bucket,
                key=upload.key,
                size=int(head.get("ContentLength", 0)),
                duration_ms=0,
                producer=ACTOR,
            )
        return landed_event(upload, head, "reconciler")

    async def _head(self, upload: store.Upload) -> dict[str, Any] | None:
        try:
            head: dict[str, Any] = await self._s3.head_object(Bucket=upload.bucket, Key=upload.key)
        except ClientError as exc:
            if is_not_found(exc):
                return None
            raise
        return head

    async def _abort_multipart(self, upload: store.Upload) -> bool:
        try:
            await self._s3.abort_multipart_upload(
                Bucket=upload.bucket, Key=upload.key, UploadId=upload.multipart_upload_id
            )
        except ClientError as exc:
            if not is_not_found(exc):
                log.warning("aborting multipart upload of %s failed: %s", upload.id, exc)
                return False
        return True


async def reconciler_context(app: web.Application) -> AsyncIterator[None]:
    """Run the reconciler in the background for the app's lifetime."""
    settings = app[SETTINGS]
    reconciler = Reconciler(settings, app[POOL], app[S3], app.get(PUBLISHER), app[METRICS])

    async def loop() -> None:
        while True:
            await asyncio.sleep(settings.reconcile_interval_seconds)
            try:
                await reconciler.run_once()
            except (asyncpg.PostgresError, OSError, ClientError, BotoCoreError) as exc:
                log.warning("reconcile pass failed, next pass retries: %s", exc)

    task = asyncio.create_task(loop(), name="reconciler")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
