"""A create's event draft is written directly: the same bytes as the event model's JSON.

The create statement fills the draft's event id and first timeline seq in by text
(`store.insert_uploads`), so the draft must be exactly what `UploadEvent` serialises,
for any filename, metadata, owner, time and size a create may carry.
"""

from __future__ import annotations

import dataclasses
import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from services.gateway.notifications import upload_event
from services.gateway.outbox import NotificationOutbox
from services.gateway.store import DRAFT_SEQ, TimelineEntry, Upload
from shared.settings import Settings

# Control characters, quotes, backslashes, non-BMP and line/paragraph separators.
AWKWARD = ['"', "\\", "\n", "\t", "\x00", "\x1f", "\x7f", "é", "€", "😀", "\u2028", "</script>"]


def text(rng: random.Random, longest: int) -> str:
    pieces = [rng.choice(AWKWARD) if rng.random() < 0.2 else chr(rng.randint(32, 126))]
    while len(pieces) < rng.randint(1, longest):
        pieces.append(rng.choice(AWKWARD) if rng.random() < 0.2 else chr(rng.randint(32, 126)))
    return "".join(pieces)


def new_upload(rng: random.Random) -> Upload:
    upload = Upload.pending(
        id=uuid.UUID(int=rng.getrandbits(128), version=4),
        owner=text(rng, 40),
        profile=rng.choice(["image", "media", "unknown"]),
        filename=text(rng, 120),
        content_type=rng.choice(["image/jpeg", "video/mp4", "application/pdf"]),
        size=rng.choice([-1, 0, 1, rng.randint(2, 2**40)]),
        bucket="clearance-uploads",
        key=f"uploads/{rng.getrandbits(64):x}",
        ttl_seconds=900,
        correlation_id=text(rng, 64),
        metadata={text(rng, 20): text(rng, 60) for _ in range(rng.randint(0, 4))},
    )
    # Times with and without microseconds, far apart.
    when = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(
        seconds=rng.randint(0, 10**9), microseconds=rng.choice([0, rng.randint(1, 999_999)])
    )
    return dataclasses.replace(upload, created_at=when, updated_at=when)


def pydantic_body(upload: Upload, actor: str) -> str:
    entry = TimelineEntry(
        seq=DRAFT_SEQ,
        upload_id=upload.id,
        status=upload.status,
        actor=actor,
        detail={},
        at=upload.created_at,
    )
    return upload_event(upload, entry).model_dump_json()


def test_a_draft_is_byte_for_byte_the_event_models_json() -> None:
    outbox = NotificationOutbox(Settings())
    rng = random.Random(20261201)
    for _ in range(500):
        upload = new_upload(rng)
        actor = rng.choice(["api", "companion", text(rng, 30)])
        draft = outbox.draft(upload, actor)
        assert draft.body == pydantic_body(upload, actor), upload
        assert draft.routing_key == "upload.pending"
        assert f'"timeline_entry":{{"seq":{DRAFT_SEQ},' in draft.body


def test_only_a_new_upload_has_a_draft() -> None:
    upload = dataclasses.replace(
        new_upload(random.Random(1)),
        thumbnails=[{"size": 256, "width": 1, "height": 1, "key": "k"}],
    )
    with pytest.raises(ValueError, match="new upload"):
        NotificationOutbox(Settings()).draft(upload, "api")
