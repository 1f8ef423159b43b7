"""The upload service: every operation the gateway offers, behind both of its APIs.

`/v1` and the Uppy Companion routes (`/s3`) are thin adapters over this class: they
translate request and response shapes and error envelopes, nothing else. The rules
(policy, part layout, what a landing means) are pure functions in `policy` and
`transitions`; storage calls go through `Storage`; every status change goes through
`apply`, which writes the transition, the timeline entry, the public event (the
outbox) and the NOTIFY (in one transaction, `store.transition`) and counts it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, NoReturn, Protocol

import asyncpg

from services.gateway import store, transitions
from services.gateway.creates import CreateBatcher
from services.gateway.limits import OwnerLimits
from services.gateway.metadata import MetadataRefused, check_metadata
from services.gateway.metrics import GatewayMetrics
from services.gateway.outbox import NotificationOutbox
from services.gateway.parts import (
    check_part_numbers,
    expected_length,
    highest_part,
    listed_parts,
    multipart_id,
    require_open,
    stored_total,
)
from services.gateway.policy import (
    UNDECLARED_SIZE,
    PolicyRefused,
    TooLarge,
    check_declared,
    choose_profile,
    part_layout,
    profile_named,
    single_request_max,
    size_range,
    uses_multipart,
)
from services.gateway.storage import HeldPart, Storage, StoredObject
from services.gateway.transitions import Move
from shared.amqp.publisher import PublishFailed
from shared.amqp.topology import BrokerUnavailable
from shared.events import Event
from shared.keys import PROFILE_METADATA, object_key, sidecar_key, verified_key
from shared.presign import PresignedPost, PresignedRequest, Presigner
from shared.problems import Conflict, FieldError, NotFound, ServiceUnavailable, ValidationFailed
from shared.settings import Settings, UploadPolicy
from shared.status import BEFORE_LANDING, LANDED, Status

log = logging.getLogger(__name__)

Via = Literal["v1", "companion"]


class EventPublisher(Protocol):
    async def publish(self, event: Event) -> None: ...


class UploadService:
    """Create, sign, complete, abort and delete uploads; apply every status change."""

    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool[Any],
        storage: Storage,
        presigner: Presigner,
        publisher: EventPublisher | None,
        metrics: GatewayMetrics,
        announce: Callable[[], None] = lambda: None,
    ) -> None:
        self.limits = OwnerLimits(settings, pool)
        self.settings = settings
        self.pool = pool
        self.storage = storage
        self.presigner = presigner
        self.publisher = publisher
        self.metrics = metrics
        # Wakes this process's outbox relay and webhook dispatcher after a create (which
        # sends no NOTIFY: `store.insert_upload`).
        self.announce = announce
        # Every change's public event, written in the change's transaction.
        self.outbox = NotificationOutbox(settings)
        # Creates' database work, several creates per statement when they come together.
        self.creates = CreateBatcher(
            pool, self.outbox, self.limits.create_limits, metrics.create_batch_size
        )

    # -- reading -------------------------------------------------------------------

    async def get(self, upload_id: uuid.UUID, owner: str) -> store.Upload:
        """The owner's upload; someone else's is as absent as a missing one (404)."""
        upload = await store.get_upload(self.pool, upload_id, owner=owner)
        if upload is None:
            raise NotFound("no such upload")
        return upload

    def policy_of(self, upload: store.Upload) -> UploadPolicy:
        policy = self.settings.profiles.get(upload.profile)
        if policy is None:  # the profile was removed from the configuration since
            raise Conflict(f"the upload's profile {upload.profile!r} no longer exists")
        return policy

    # -- creating ------------------------------------------------------------------

    async def create(
        self,
        owner: str,
        *,
        filename: str,
        content_type: str,
        size: int | None,
        correlation_id: str,
        profile: str | None = None,
        sha256: str | None = None,
        multipart: bool = False,
        metadata: object = None,
    ) -> store.Upload:
        """Validate a declared file against its profile and record a `pending` upload.

        `metadata` is the application's small string map, checked by `check_metadata`
        (a refusal names each bad key) before the profile is.

        `size=None` is an undeclared size (Uppy never sends one): the profile is then
        chosen by type and `multipart` says which kind of upload the client starts;
        storage enforces the byte range when the bytes land. With a declared size,
        the profile's threshold decides single PUT or multipart.
        """
        name = profile or "unknown"
        try:
            app_metadata = check_metadata(metadata)
            if size is None:
                name, policy = choose_profile(
                    self.settings, content_type, profile, multipart=multipart
                )
            else:
                name, policy = profile_named(self.settings, profile)
            declared, errors = check_declared(
                policy,
                filename=filename,
                content_type=content_type,
                size=policy.min_size if size is None else size,
                sha256=sha256,
            )
            if declared is None:
                raise PolicyRefused(
                    "the declared file does not meet the upload policy", errors=errors
                )
        except (PolicyRefused, MetadataRefused):
            # A client's unknown profile name is no label: /metrics stays bounded.
            known = name if name in self.settings.profiles else "unknown"
            self.metrics.count_create(known, "rejected")
            raise
        part_size = part_count = None
        if size is not None:
            multipart = uses_multipart(policy, declared.size)
            if multipart:
                part_size, part_count = part_layout(declared.size)
        upload_id = uuid.uuid4()
        key = object_key(self.settings.upload_prefix, owner, upload_id)
        bucket = self.settings.bucket
        mpu_id = None
        if multipart:
            # Admitted before storage opens anything: a refused create costs it nothing.
            self.limits.check(await self.creates.admit(owner))
            mpu_id = await self.storage.create_multipart(
                bucket, key, declared.content_type, metadata={PROFILE_METADATA: name}
            )
        upload = store.Upload.pending(
            id=upload_id,
            owner=owner,
            profile=name,
            filename=declared.filename,
            content_type=declared.content_type,
            size=UNDECLARED_SIZE if size is None else declared.size,
            sha256=declared.sha256_b64,
            bucket=bucket,
            key=key,
            ttl_seconds=self.settings.presign_ttl_seconds,
            correlation_id=correlation_id,
            multipart_upload_id=mpu_id,
            part_size=part_size,
            part_count=part_count,
            metadata=app_metadata,
        )
        # One statement for row, first entry and event (and, for a single request, the
        # owner's limits), shared with the creates of the same turn (`creates`).
        if multipart:
            await self.creates.insert(upload)
        else:
            self.limits.check(await self.creates.insert_admitted(upload))
        self.announce()
        self.metrics.count_create(name, "created")
        return upload

    # -- signing -------------------------------------------------------------------

    def sign_put(self, upload: store.Upload) -> PresignedRequest:
        """The single PUT storage accepts only as declared (type, length, SSE, SHA-256),
        carrying the upload's profile."""
        return self.presigner.presign_put(
            upload.bucket,
            upload.key,
            content_type=upload.content_type,
            content_length=upload.size,
            sse="AES256",
            checksum_sha256=upload.sha256,
            metadata={PROFILE_METADATA: upload.profile},
            expires_in=self.settings.presign_ttl_seconds,
            now=upload.created_at,
        )

    def sign_form(self, upload: store.Upload) -> PresignedPost:
        """A POST form scoped to the key, type, SSE, the profile's byte range and name."""
        policy = self.policy_of(upload)
        return self.presigner.presign_form_upload(
            upload.bucket,
            upload.key,
            content_type=upload.content_type,
            min_size=policy.min_size,
            max_size=single_request_max(policy),
            metadata={PROFILE_METADATA: upload.profile},
            expires_in=self.settings.presign_ttl_seconds,
            now=upload.created_at,
        )

    async def sign_parts(
        self,
        upload: store.Upload,
        numbers: Sequence[int],
        *,
        via: Via,
        checksums: dict[int, str] | None = None,
    ) -> list[PresignedRequest]:
        """Part URLs; with a declared layout each signs its exact length (and SHA-256)."""
        mpu = multipart_id(upload)
        require_open(upload, "parts can no longer be sent")
        errors = check_part_numbers(list(numbers), highest_part(upload, self.policy_of(upload)))
        if errors:
            raise ValidationFailed("invalid part request", errors=errors)
        now = datetime.now(UTC)
        checksums = checksums or {}
        signed = [
            self.presigner.presign_upload_part(
                upload.bucket,
                upload.key,
                upload_id=mpu,
                part_number=n,
                content_length=expected_length(upload, n),
                checksum_sha256=checksums.get(n),
                expires_in=self.settings.presign_ttl_seconds,
                now=now,
            )
            for n in numbers
        ]
        if upload.status is Status.PENDING:
            await self.apply(upload, transitions.started_sending(upload, via))
        return signed

    async def stored_parts(self, upload: store.Upload) -> list[HeldPart]:
        """The parts storage holds (a client resumes from these)."""
        require_open(upload, "storage no longer holds its parts")
        return await self.storage.parts(upload)

    # -- completing ----------------------------------------------------------------

    async def complete(
        self, upload: store.Upload, parts: Sequence[tuple[int, str]] | None
    ) -> store.Upload:
        """The client says the bytes have landed: check them, complete, record, publish.

        Idempotent: an upload that already landed (whatever the pipeline made of it
        since) is returned as it stands; only one that expired or was aborted is refused.
        """
        if upload.status in LANDED:
            return upload
        if upload.status.final:
            raise Conflict(
                f"the upload is {upload.status.value} and can't be completed",
                upload_status=upload.status.value,
            )
        if upload.multipart_upload_id is None:
            if parts:
                raise ValidationFailed(
                    "this is a single-PUT upload",
                    errors=[FieldError("parts", "must be absent for a single-PUT upload")],
                )
            stored = await self.storage.head(upload.bucket, upload.key)
            if stored is None:
                # The pipeline may have been faster than this call (and moved an infected
                # object to quarantine already): what it recorded is the answer then.
                now = await store.get_upload(self.pool, upload.id)
                if now is not None and now.status in LANDED:
                    return now
                raise Conflict("the object is not in storage yet; PUT it to the signed URL first")
        else:
            stored = await self._complete_multipart(upload, parts or [])
        current = await self.land(upload, stored, "gateway")
        if current.status is Status.REJECTED:
            raise Conflict(
                f"the stored object is {stored.size} bytes, not the declared {upload.size}",
                upload_status=current.status.value,
            )
        return current

    async def _complete_multipart(
        self, upload: store.Upload, parts: Sequence[tuple[int, str]]
    ) -> StoredObject:
        wanted = listed_parts(upload, parts, highest_part(upload, self.policy_of(upload)))
        total = stored_total(upload, wanted, await self.stored_parts(upload))
        if upload.size == UNDECLARED_SIZE and total > self.policy_of(upload).max_size:
            await self.storage.abort_multipart(upload)
            await self._refuse_size(upload, total)

        await self.storage.complete_multipart(upload, sorted(wanted.items()))
        stored_object = await self.storage.head(upload.bucket, upload.key)
        if stored_object is None:
            raise ServiceUnavailable("the completed object is not visible yet; try again")
        policy = self.policy_of(upload)
        if upload.size == UNDECLARED_SIZE and not (
            policy.min_size <= stored_object.size <= policy.max_size
        ):  # the real object, checked again
            await self.storage.delete(upload.bucket, [upload.key])
            await self._refuse_size(upload, stored_object.size)
        return stored_object

    async def _refuse_size(self, upload: store.Upload, size: int) -> NoReturn:
        allowed = size_range(self.policy_of(upload))
        move = transitions.out_of_range(upload, size, allowed)
        await self.apply(upload, move)
        raise TooLarge(move.updates["reason"])

    async def land(
        self,
        upload: store.Upload,
        stored: StoredObject,
        source: Literal["gateway", "reconciler"],
    ) -> store.Upload:
        """Record that the object is in storage and, if that moved the upload, publish.

        Publishing is best effort: the upload is durably `uploaded` first, and the
        reconciler republishes work that never started, so a broker outage delays the
        pipeline but loses nothing. An upload that had already landed (the relay's
        notification came first) is not published again.
        """
        event = transitions.landed_event(upload, stored, source)
        result = await self.apply(upload, transitions.landing(event, upload))
        if result is None:
            return upload
        if result.entry is not None and result.upload.status is Status.UPLOADED:
            await self.publish(event)
        return result.upload

    async def publish(self, event: Event) -> bool:
        """Publish a pipeline event; False (logged) when the broker can't take it now."""
        if self.publisher is None:
            return False
        try:
            await self.publisher.publish(event)
        except (PublishFailed, BrokerUnavailable, ConnectionError, TimeoutError) as exc:
            log.warning(
                "publishing %s failed (%s); the reconciler will republish it",
                event.routing_key,
                exc,
                extra={"upload_id": str(event.upload_id), "correlation_id": event.correlation_id},
            )
            return False
        return True

    # -- ending ----------------------------------------------------------------------

    async def abort(self, upload: store.Upload, via: Via) -> None:
        """Give up an upload whose bytes have not landed: storage cleaned, `aborted`."""
        require_open(upload, "it can no longer be aborted")
        await self._remove_objects(upload)
        await self.apply(upload, transitions.aborted(upload, via))

    async def delete(self, upload: store.Upload) -> None:
        """Remove a finished upload: its objects (not a quarantined copy) and its record."""
        if not upload.status.final:
            raise Conflict(
                f"the upload is {upload.status.value}; delete it once it reaches a final state",
                upload_status=upload.status.value,
            )
        await self._remove_objects(upload)
        await store.delete_upload(self.pool, upload.id)

    async def _remove_objects(self, upload: store.Upload) -> None:
        if upload.multipart_upload_id and upload.status in BEFORE_LANDING:
            await self.storage.abort_multipart(upload)
        # Infected objects were moved to quarantine; that copy is kept for review.
        await self.storage.delete(
            upload.bucket,
            [
                upload.key,
                verified_key(self.settings.verified_prefix, upload.key),
                sidecar_key(upload.key),
                *(t["key"] for t in upload.thumbnails),
            ],
        )

    # -- the one writer of status ----------------------------------------------------

    async def apply(self, upload: store.Upload, move: Move) -> store.TransitionResult | None:
        """Apply a move if the state machine still allows it; count it if it happened.

        None if the upload no longer exists; `entry` is None when nothing changed (a
        duplicate, late or backward move).
        """
        result = await store.transition(
            self.pool,
            upload.id,
            to=move.to,
            event_id=move.event_id,
            actor=move.actor,
            outbox=self.outbox,
            detail=move.detail,
            updates=move.updates,
        )
        if result is not None and result.entry is not None:
            self.metrics.transitions.labels(move.to.value).inc()
        return result
