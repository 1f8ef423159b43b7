"""SQS message bodies as pure units: S3 events direct or in SNS envelopes, SNS's own
messages, S3's test event, and what is malformed."""

from __future__ import annotations

import json
import uuid

import pytest

from services.relay.formats import Ignored, MalformedNotification, Scope
from services.relay.sqs import read_message
from shared.events import ObjectCreated

SCOPE = Scope(bucket="clearance-uploads", upload_prefix="uploads")
UPLOAD = uuid.uuid4()
EVENT = json.dumps(
    {
        "Records": [
            {
                "eventName": "ObjectCreated:Put",
                "s3": {
                    "bucket": {"name": "clearance-uploads"},
                    "object": {"key": f"uploads/0123456789abcdef/{UPLOAD}", "size": 5, "eTag": "e"},
                },
            }
        ]
    }
)
TOPIC = "arn:aws:sns:us-east-1:123456789012:clearance-s3-events"


def envelope(message: object, kind: str = "Notification") -> str:
    return json.dumps({"Type": kind, "MessageId": "m", "TopicArn": TOPIC, "Message": message})


def test_a_direct_s3_event_and_its_sns_envelope_read_the_same() -> None:
    [direct] = read_message(EVENT, SCOPE)
    [wrapped] = read_message(envelope(EVENT), SCOPE)
    assert isinstance(direct, ObjectCreated)
    assert isinstance(wrapped, ObjectCreated)
    assert direct.event_id == wrapped.event_id
    assert (direct.upload_id, direct.size, direct.source) == (UPLOAD, 5, "s3")


def test_test_events_and_sns_subscription_messages_are_ignored() -> None:
    test_event = json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent"})
    assert read_message(test_event, SCOPE) == [Ignored("test-event", "S3 sent a test event")]
    assert read_message(envelope(test_event), SCOPE)[0].code == "test-event"  # type: ignore[union-attr]
    [control] = read_message(envelope("confirm me", "SubscriptionConfirmation"), SCOPE)
    assert isinstance(control, Ignored)
    assert control.code == "sns-control"


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        "[1, 2]",
        json.dumps({"Records": "nope"}),
        envelope({"Records": []}),  # Message must be a string
        envelope("not json either"),
        json.dumps({"Type": "Notification", "TopicArn": TOPIC}),
    ],
)
def test_malformed_bodies_are_refused(body: str) -> None:
    with pytest.raises(MalformedNotification):
        read_message(body, SCOPE)
