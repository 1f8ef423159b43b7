"""The status recorder: pipeline events → monotonic, idempotent status transitions.

It runs inside the gateway (the only database writer) as a consumer of the
`clearance.recorder` queue. Every event maps to at most one forward move
(`transitions.move_for`), applied through `UploadService.apply`; a duplicate or late
event finds the upload already at or past that status and changes nothing, so
redeliveries are harmless.
"""

from __future__ import annotations

import logging

from services.gateway import store
from services.gateway.transitions import move_for
from services.gateway.uploads import UploadService
from shared.amqp.consumer import Delivery
from shared.events import AnyEvent, ObjectCreated

log = logging.getLogger(__name__)


class StatusRecorder:
    """The consumer handler: one event, one move."""

    def __init__(self, uploads: UploadService) -> None:
        self._uploads = uploads

    async def __call__(self, event: AnyEvent, delivery: Delivery) -> None:
        upload = await store.get_upload(self._uploads.pool, event.upload_id)
        extra = {"upload_id": str(event.upload_id), "correlation_id": event.correlation_id}
        if upload is None:
            # Deleted by its owner, or an object no upload declared: nothing to record.
            log.info("%s for an unknown upload ignored", event.type, extra=extra)
            return
        if isinstance(event, ObjectCreated) and (
            event.key != upload.key or event.bucket != upload.bucket
        ):
            log.warning("%s names %s, not the upload's key", event.type, event.key, extra=extra)
            return
        move = move_for(event, upload)
        result = await self._uploads.apply(upload, move)
        if result is not None and result.entry is not None:
            log.info("%s → %s (%s)", upload.status.value, move.to.value, event.type, extra=extra)
