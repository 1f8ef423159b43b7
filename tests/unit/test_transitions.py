"""What moves an upload: `move_for`, the landing rule, the gateway's own moves, and the
Uppy routes' profile choice — pure functions, no I/O."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from services.gateway import transitions
from services.gateway.policy import (
    UNDECLARED_SIZE,
    PolicyRefused,
    choose_profile,
    max_part_number,
    profile_named,
)
from services.gateway.storage import StoredObject, unquoted
from services.gateway.store import Upload
from shared.events import (
    ObjectCreated,
    ProcessingDone,
    ProcessingRejected,
    ScanClean,
    ScanInfected,
    ScanStarted,
    Thumbnail,
    UploadFailed,
)
from shared.settings import Settings
from shared.status import Status


def upload(size: int = 1000, **changes: object) -> Upload:
    made = Upload.pending(
        id=uuid.uuid4(),
        owner="alice",
        profile="image",
        filename="a.jpg",
        content_type="image/jpeg",
        size=size,
        bucket="upl",
        key="uploads/0123456789abcdef/x",
        ttl_seconds=900,
        correlation_id="c-1",
    )
    return Upload(**{**{f: getattr(made, f) for f in made.__slots__}, **changes})  # type: ignore[arg-type]


def landed(u: Upload, size: int, source: str = "seaweedfs") -> ObjectCreated:
    return ObjectCreated.build(
        upload_id=u.id,
        bucket=u.bucket,
        key=u.key,
        size=size,
        etag="e1",
        source=source,  # type: ignore[arg-type]
    )


def common(u: Upload) -> dict[str, object]:
    return {"upload_id": u.id, "correlation_id": "c-1", "bucket": u.bucket, "key": u.key}


class TestLanding:
    def test_the_declared_size_lands_as_uploaded(self) -> None:
        u = upload(1000)
        move = transitions.move_for(landed(u, 1000), u)
        assert move.to is Status.UPLOADED
        assert move.actor == "recorder"
        assert move.detail == {"size": 1000, "etag": "e1", "via": "seaweedfs"}
        assert move.updates == {}

    def test_another_size_is_rejected_with_both_numbers(self) -> None:
        u = upload(1000)
        move = transitions.move_for(landed(u, 1001), u)
        assert move.to is Status.REJECTED
        assert move.detail == {"code": "size_mismatch", "declared": 1000, "actual": 1001}
        assert "1000" in move.updates["reason"]
        assert "1001" in move.updates["reason"]

    def test_an_undeclared_size_is_recorded_when_it_lands(self) -> None:
        u = upload(UNDECLARED_SIZE)
        move = transitions.move_for(landed(u, 4242), u)
        assert move.to is Status.UPLOADED
        assert move.updates == {"size": 4242}

    @pytest.mark.parametrize("source", ["gateway", "reconciler"])
    def test_who_reported_the_landing_is_the_actor(self, source: str) -> None:
        u = upload(1000)
        assert transitions.landing(landed(u, 1000, source), u).actor == source

    def test_every_path_reports_the_same_event_for_the_same_object(self) -> None:
        u = upload(1000)
        stored = StoredObject(size=1000, etag="e1")
        via_gateway = transitions.landed_event(u, stored, "gateway")
        via_reconciler = transitions.landed_event(u, stored, "reconciler")
        assert via_gateway.event_id == via_reconciler.event_id == landed(u, 1000).event_id
        assert transitions.landing(via_gateway, u).event_id == via_gateway.event_id


class TestPipelineEvents:
    def test_each_event_moves_to_its_status(self) -> None:
        u = upload()
        cases = [
            (ScanStarted(event_id="s", **common(u)), Status.SCANNING, "scanner"),  # type: ignore[arg-type]
            (
                ScanClean(event_id="c", size=1, duration_ms=3, **common(u)),
                Status.PROCESSING,
                "scanner",
            ),  # type: ignore[arg-type]
            (
                ScanInfected(event_id="i", signature="Eicar", quarantine_key="q", **common(u)),  # type: ignore[arg-type]
                Status.INFECTED,
                "scanner",
            ),
            (
                ProcessingRejected(
                    event_id="r", upload_id=u.id, correlation_id="c", reason="bad", code="spoofed"
                ),
                Status.REJECTED,
                "processor",
            ),
            (
                UploadFailed(
                    event_id="f",
                    upload_id=u.id,
                    correlation_id="c",
                    reason="boom",
                    stage="scanning",
                ),
                Status.FAILED,
                "scanning",
            ),
        ]
        for event, status, actor in cases:
            move = transitions.move_for(event, u)
            assert (move.to, move.actor, move.event_id) == (status, actor, event.event_id)

    def test_reasons_travel_with_final_moves(self) -> None:
        u = upload()
        infected = ScanInfected(event_id="i", signature="Eicar", quarantine_key="q", **common(u))  # type: ignore[arg-type]
        assert transitions.move_for(infected, u).updates == {"reason": "infected: Eicar"}
        failed = UploadFailed(
            event_id="f", upload_id=u.id, correlation_id="c", reason="boom", stage="x"
        )
        assert transitions.move_for(failed, u).updates == {"reason": "boom"}

    def test_ready_carries_metadata_thumbnails_and_an_undeclared_size(self) -> None:
        thumb = Thumbnail(size=256, key="k.thumb-256.webp", width=256, height=192, bytes=900)
        done = ProcessingDone(
            event_id="d",
            upload_id=uuid.uuid4(),
            correlation_id="c",
            metadata={"size": 777, "format": "JPEG"},
            thumbnails=[thumb],
            duration_ms=12,
        )
        declared = transitions.move_for(done, upload(777))
        assert declared.to is Status.READY
        assert declared.updates["detected"] == {"size": 777, "format": "JPEG"}
        assert declared.updates["thumbnails"][0]["key"] == "k.thumb-256.webp"
        assert "size" not in declared.updates
        assert transitions.move_for(done, upload(UNDECLARED_SIZE)).updates["size"] == 777


class TestGatewayMoves:
    def test_ids_are_per_upload_so_a_repeat_changes_nothing(self) -> None:
        u = upload()
        assert transitions.started_sending(u, "v1").event_id == f"uploading:{u.id}"
        assert transitions.aborted(u, "companion").event_id == f"aborted:{u.id}"
        assert transitions.expired(u).event_id == f"expired:{u.id}"
        assert transitions.out_of_range(u, 9, "1..2 bytes").event_id == f"size-out-of-range:{u.id}"

    def test_expiry_names_the_deadline_and_the_reason(self) -> None:
        deadline = datetime.now(UTC) + timedelta(minutes=5)
        move = transitions.expired(upload(expires_at=deadline))
        assert move.to is Status.EXPIRED
        assert move.detail == {"deadline": deadline.isoformat()}
        assert "never arrived" in move.updates["reason"]

    def test_out_of_range_names_the_size_and_the_profile(self) -> None:
        move = transitions.out_of_range(upload(), 7000, "1..6000 bytes")
        assert move.to is Status.REJECTED
        assert (
            move.updates["reason"]
            == "the file is 7000 bytes; the image profile allows 1..6000 bytes"
        )


class TestProfiles:
    def test_uppy_uploads_get_a_profile_by_type_default_and_multipart(self) -> None:
        settings = Settings(_env_file=None)
        assert choose_profile(settings, "image/jpeg", None, multipart=False)[0] == "image"
        assert choose_profile(settings, "IMAGE/JPEG ", None, multipart=False)[0] == "image"
        assert choose_profile(settings, "image/jpeg", None, multipart=True)[0] == "media"
        assert choose_profile(settings, "video/mp4", None, multipart=False)[0] == "media"
        assert choose_profile(settings, "image/png", "media", multipart=False)[0] == "media"

    @pytest.mark.parametrize(
        ("ctype", "requested", "multipart"),
        [("text/plain", None, False), ("image/jpeg", "image", True), ("image/jpeg", "nope", False)],
    )
    def test_what_no_profile_takes_is_refused(
        self, ctype: str, requested: str | None, multipart: bool
    ) -> None:
        with pytest.raises(PolicyRefused) as refused:
            choose_profile(Settings(_env_file=None), ctype, requested, multipart=multipart)
        assert refused.value.status == 422

    def test_v1_names_a_profile_or_gets_the_default(self) -> None:
        settings = Settings(_env_file=None)
        assert profile_named(settings, None)[0] == "image"
        with pytest.raises(PolicyRefused) as refused:
            profile_named(settings, "nope")
        assert refused.value.errors[0].field == "profile"

    def test_part_numbers_and_etags(self) -> None:
        assert (
            max_part_number(Settings(_env_file=None).profiles["media"]) == 400
        )  # 2000 MiB / 5 MiB
        assert unquoted(' "abc" ') == "abc"
