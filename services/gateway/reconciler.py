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
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg
from aiohttp import web

from services.gateway import store, transitions
from services.gateway.appkeys import SETTINGS, UPLOADS
from services.gateway.uploads import UploadService
from shared.events import ObjectCreated, ScanClean, scan_clean_id
from shared.problems import Problem, ServiceUnavailable
from shared.status import Status
from shared.tasks import cancel_and_wait

log = logging.getLogger(__name__)

ACTOR = "reconciler"
BATCH = 500
# One reconciler pass at a time across every gateway replica (an advisory lock id).
LOCK_ID = 0x636C_6561_7200  # "clear"
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
    def __init__(self, uploads: UploadService) -> None:
        self._uploads = uploads
        self._settings = uploads.settings
        self._pool = uploads.pool
        self._storage = uploads.storage
        # upload id → monotonic time of the last republish, so a stalled upload is
        # nudged once per `stuck_after_seconds`, not on every pass.
        self._nudged: dict[str, float] = {}

    async def run_once(self, now: datetime | None = None) -> ReconcileReport:
        """One pass; a replica finding another's pass under way skips its own."""
        now = now or datetime.now(UTC)
        report = ReconcileReport()
        async with self._pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", LOCK_ID):
                return report
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
            try:
                await self._settle(upload, report)
            except ServiceUnavailable as exc:  # storage down: the next pass retries
                log.warning("reconciling %s failed: %s", upload.id, exc.detail)

    async def _settle(self, upload: store.Upload, report: ReconcileReport) -> None:
        """An overdue upload: landed after all, or expired (its storage cleaned first)."""
        stored = await self._storage.head(upload.bucket, upload.key)
        if stored is not None:
            await self._uploads.land(upload, stored, "reconciler")
            report.landed.append(str(upload.id))
            return
        if upload.multipart_upload_id is not None:
            await self._storage.abort_multipart(upload)
        result = await self._uploads.apply(upload, transitions.expired(upload))
        if result is not None and result.entry is not None:
            report.expired.append(str(upload.id))

    async def _stalled(self, now: datetime, report: ReconcileReport) -> None:
        if self._uploads.publisher is None:
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
            if event is None or not await self._uploads.publish(event):
                continue
            self._nudged[key] = clock
            report.republished.append(key)
        # Forget uploads that are no longer stalled.
        live = {str(r["id"]) for r in rows}
        for key in list(self._nudged):
            if key not in live:
                del self._nudged[key]

    async def _work_event(self, upload: store.Upload) -> ObjectCreated | ScanClean | None:
        stored = await self._storage.head(upload.bucket, upload.key)
        if stored is None:
            log.warning("stalled upload %s has no object in storage", upload.id)
            return None
        if upload.status is Status.PROCESSING:
            return ScanClean(
                event_id=scan_clean_id(upload.id, upload.key),
                upload_id=upload.id,
                correlation_id=upload.correlation_id,
                bucket=upload.bucket,
                key=upload.key,
                size=stored.size,
                duration_ms=0,
                producer=ACTOR,
            )
        return transitions.landed_event(upload, stored, "reconciler")


async def reconciler_context(app: web.Application) -> AsyncIterator[None]:
    """Run the reconciler in the background for the app's lifetime."""
    settings = app[SETTINGS]
    reconciler = Reconciler(app[UPLOADS])

    async def loop() -> None:
        while True:
            await asyncio.sleep(settings.reconcile_interval_seconds)
            try:
                await reconciler.run_once()
            except (asyncpg.PostgresError, OSError, Problem) as exc:
                log.warning("reconcile pass failed, next pass retries: %s", exc)

    task = asyncio.create_task(loop(), name="reconciler")
    try:
        yield
    finally:
        await cancel_and_wait(task)
