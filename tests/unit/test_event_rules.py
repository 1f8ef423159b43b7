"""Public events and webhooks as pure units: the event of a change, publishing order,
the retry schedule, Standard Webhooks signatures and endpoint settings."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError
from standardwebhooks import Webhook, WebhookVerificationError

from devstack.apps import settings_environment
from services.gateway.notifications import event_id, upload_event
from services.gateway.outbox import waves
from services.gateway.store import TimelineEntry, Upload
from services.gateway.webhooks import retry_delay, signed_headers
from shared.settings import Settings, WebhookEndpoint
from shared.status import Status

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def ready_upload() -> tuple[Upload, TimelineEntry]:
    upload = Upload.pending(
        id=uuid.uuid4(),
        owner="alice",
        profile="image",
        filename="cat.jpg",
        content_type="image/jpeg",
        size=1000,
        bucket="b",
        key="uploads/x/y",
        ttl_seconds=900,
        correlation_id="req-1",
        metadata={"order_id": "42"},
    )
    thumbs = [{"size": 256, "key": "k.256", "width": 256, "height": 192, "bytes": 9}]
    moved = Upload(**{**_fields(upload), "status": Status.READY, "thumbnails": thumbs})
    entry = TimelineEntry(7, upload.id, Status.READY, "processor", {}, datetime.now(UTC))
    return moved, entry


def _fields(upload: Upload) -> dict[str, Any]:
    return {name: getattr(upload, name) for name in Upload.__slots__}


def test_the_event_of_a_change_is_stable_and_says_where_the_upload_stands() -> None:
    upload, entry = ready_upload()
    event = upload_event(upload, entry)
    assert event.event_id == event_id(upload.id, 7) == upload_event(upload, entry).event_id
    assert event.event_id != event_id(upload.id, 8)
    assert (event.type, event.status, event.occurred_at) == ("upload.ready", "ready", entry.at)
    assert event.metadata == {"order_id": "42"}
    assert [t.key for t in event.thumbnails] == ["k.256"]
    assert event.timeline_entry.seq == 7


def test_a_claim_is_published_oldest_first_per_upload() -> None:
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    rows = [{"id": i, "upload_id": u} for i, u in enumerate([a, b, a, c, a, b], start=1)]
    assert [[r["id"] for r in wave] for wave in waves(rows)] == [[1, 2, 4], [3, 6], [5]]  # type: ignore[arg-type]


def test_the_retry_schedule_backs_off_with_bounded_jitter_then_ends() -> None:
    settings = Settings(webhook_retry_schedule_seconds=(10, 30, 90), webhook_retry_jitter=0.2)
    rng = random.Random(1)
    for attempt, delay in enumerate((10, 30, 90), start=1):
        for _ in range(50):
            got = retry_delay(settings, attempt, rng)
            assert got is not None
            assert delay * 0.8 <= got <= delay * 1.2
    assert retry_delay(settings, 4, rng) is None
    default = Settings()
    total = sum(default.webhook_retry_schedule_seconds)
    assert timedelta(seconds=total) > timedelta(hours=8)  # "over hours"


def test_signed_headers_verify_with_the_standard_webhooks_library() -> None:
    body = '{"type":"upload.ready"}'
    headers = signed_headers(Webhook(SECRET), "evt-1", body, datetime.now(UTC))
    assert headers["webhook-id"] == "evt-1"
    assert Webhook(SECRET).verify(body, headers) == {"type": "upload.ready"}
    with pytest.raises(WebhookVerificationError, match="signature"):
        Webhook(SECRET).verify(body.replace("ready", "infected"), headers)


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"secret": "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}, "whsec_"),
        ({"secret": "whsec_!!notbase64"}, "base64"),
        ({"secret": "whsec_c2hvcnQ="}, "24..64"),
        ({"events": ["upload.done"]}, "unknown event types"),
        ({"url": "ftp://app.example/hooks"}, "URL scheme"),
    ],
)
def test_endpoint_settings_are_validated(change: dict[str, Any], says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        WebhookEndpoint(**({"url": "https://app.example/hooks", "secret": SECRET} | change))


def test_endpoints_filter_by_type_and_are_named_by_their_url() -> None:
    endpoint = WebhookEndpoint(
        url="https://App.example:8443/hooks/?token=x",  # type: ignore[arg-type]
        secret=SECRET,  # type: ignore[arg-type]
        events=("upload.ready", "upload.infected"),
    )
    assert endpoint.name == "app.example:8443/hooks"
    assert endpoint.wants("upload.ready")
    assert not endpoint.wants("upload.pending")
    assert WebhookEndpoint(url="https://a.example", secret=SECRET).wants("upload.pending")  # type: ignore[arg-type]
    twice = {"url": "https://a.example/h", "secret": SECRET}
    with pytest.raises(ValidationError, match="unique"):
        Settings(webhooks=[twice, twice])
    real = {
        "jwt_secret": "j" * 40,
        "s3_access_key": "prod-key",
        "s3_secret_key": "prod-secret",
        "webhook_token": "hook-token",
    }
    assert Settings(environment="production", _env_file=None, webhooks=[twice], **real)
    with pytest.raises(ValidationError, match="https in production"):
        Settings(
            environment="production",
            _env_file=None,
            webhooks=[twice | {"url": "http://a.example/h"}],
            **real,
        )


def test_webhook_endpoints_survive_the_trip_to_a_child_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    endpoint = {"url": "https://a.example/h", "secret": SECRET, "events": ["upload.ready"]}
    settings = Settings(webhooks=[endpoint])
    for key, value in settings_environment(settings).items():
        monkeypatch.setenv(key, value)
    [child] = Settings().webhooks
    assert child.secret.get_secret_value() == SECRET
    assert child == settings.webhooks[0]
