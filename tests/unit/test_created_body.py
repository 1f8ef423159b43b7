"""A create's answer is written directly: the same bytes as the `UploadCreated` model.

`/openapi.json` documents `UploadCreated`; `v1.created_body` writes its JSON with
orjson for speed, so the two must agree for every upload a create may answer with:
a single PUT (any URL and headers) or a multipart plan, any time, key and status.
"""

from __future__ import annotations

import dataclasses
import random
import uuid
from datetime import UTC, datetime, timedelta

import orjson

from services.gateway.models import MultipartPlan, SignedRequest, UploadCreated
from services.gateway.store import Upload
from services.gateway.v1 import created_body
from shared.presign import PresignedRequest
from shared.status import Status
from tests.unit.test_event_drafts import new_upload, text


def model_body(upload: Upload, signed: PresignedRequest | None) -> bytes:
    created = UploadCreated(
        id=upload.id, status=upload.status, key=upload.key, expires_at=upload.expires_at
    )
    if signed is None:
        assert upload.part_size is not None
        assert upload.part_count is not None
        created.multipart = MultipartPlan(part_size=upload.part_size, part_count=upload.part_count)
    else:
        created.upload = SignedRequest(method="PUT", url=signed.url, headers=signed.headers)
    return created.__pydantic_serializer__.to_json(created)


def test_the_answer_is_byte_for_byte_the_models_json() -> None:
    rng = random.Random(20261202)
    for _ in range(500):
        upload = new_upload(rng)
        when = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(
            seconds=rng.randint(0, 10**9), microseconds=rng.choice([0, rng.randint(1, 999_999)])
        )
        upload = dataclasses.replace(
            upload,
            key=text(rng, 80),
            status=rng.choice(list(Status)),
            expires_at=when,
        )
        signed: PresignedRequest | None
        if rng.random() < 0.5:
            upload = dataclasses.replace(
                upload, part_size=rng.randint(1, 2**32), part_count=rng.randint(1, 10_000)
            )
            signed = None
        else:
            signed = PresignedRequest(
                method="PUT",
                url=text(rng, 300),
                headers={text(rng, 30): text(rng, 60) for _ in range(rng.randint(0, 6))},
                expires_at=when,
            )
        assert created_body(upload, signed) == model_body(upload, signed), upload


def test_the_answer_parses_as_the_documented_model() -> None:
    upload = dataclasses.replace(new_upload(random.Random(7)), id=uuid.uuid4())
    signed = PresignedRequest(
        method="PUT", url="http://storage/k?s=1", headers={}, expires_at=upload.expires_at
    )
    parsed = UploadCreated.model_validate(orjson.loads(created_body(upload, signed)))
    assert parsed.id == upload.id
    assert parsed.upload is not None
    assert parsed.upload.url == signed.url
    assert parsed.multipart is None
