"""AWS S3 event notifications from SQS, against a local SQS server (moto, server mode).

The relay's SQS client is the same aioboto3 code that talks to AWS; only the endpoint
differs. Real uploads land in the suite's storage (no `complete` call: the SQS
notification is what moves them), their S3 events are sent as AWS sends them, direct
(S3 → SQS) and through SNS (raw delivery off), and the uploads reach `ready`. A test
event is ignored and deleted; malformed messages are left to the queue's redrive
policy and end in its dead-letter queue, while the relay carries on.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote_plus

import boto3
import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from moto.server import ThreadedMotoServer
from pydantic import SecretStr

from services.relay.app import METRICS, create_app
from services.relay.formats import Scope
from services.relay.metrics import RelayMetrics
from services.relay.sqs import SqsIntake, sqs_client
from shared.amqp.publisher import PublishFailed
from shared.events import ObjectCreated
from shared.settings import Settings
from tests.support import Uploads, eventually, free_port, make_jpeg

pytestmark = pytest.mark.integration

REGION = "us-east-1"
KEYS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@pytest.fixture(scope="module")
def sqs_server() -> Iterator[str]:
    """A local server speaking the SQS (and SNS) protocol, on a free port."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


class Aws:
    """The AWS side, set up as docs/integration.md tells an operator to."""

    def __init__(self, endpoint: str) -> None:
        self.sqs = boto3.client("sqs", endpoint_url=endpoint, region_name=REGION, **KEYS)
        self.sns = boto3.client("sns", endpoint_url=endpoint, region_name=REGION, **KEYS)
        self.dlq = self.sqs.create_queue(QueueName="clearance-s3-events-dlq")["QueueUrl"]
        redrive = {"deadLetterTargetArn": self.arn(self.dlq), "maxReceiveCount": "2"}
        self.queue = self.sqs.create_queue(
            QueueName="clearance-s3-events",
            Attributes={"VisibilityTimeout": "1", "RedrivePolicy": json.dumps(redrive)},
        )["QueueUrl"]
        self.topic = self.sns.create_topic(Name="clearance-s3-events")["TopicArn"]
        self.sns.subscribe(TopicArn=self.topic, Protocol="sqs", Endpoint=self.arn(self.queue))

    def arn(self, queue_url: str) -> str:
        attributes = self.sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
        return str(attributes["Attributes"]["QueueArn"])

    def count(self, queue_url: str) -> int:
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        attributes = self.sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=names)
        return sum(int(attributes["Attributes"][n]) for n in names)


@pytest.fixture(scope="module")
def aws(sqs_server: str) -> Aws:
    return Aws(sqs_server)


def s3_event(bucket: str, key: str, size: int, etag: str) -> str:
    """The notification S3 sends for a PUT (event structure version 2.1)."""
    record = {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": REGION,
        "eventTime": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "eventName": "ObjectCreated:Put",
        "userIdentity": {"principalId": "AWS:EXAMPLE"},
        "requestParameters": {"sourceIPAddress": "127.0.0.1"},
        "responseElements": {"x-amz-request-id": "EXAMPLE", "x-amz-id-2": "EXAMPLE"},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "clearance-uploads",
            "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
            "object": {"key": quote_plus(key), "size": size, "eTag": etag, "sequencer": "0A1B"},
        },
    }
    return json.dumps({"Records": [record]})


@pytest.fixture(scope="module")
def sqs_settings(settings: Settings, aws: Aws, sqs_server: str) -> Settings:
    return settings.model_copy(
        update={
            "sqs_queue_url": aws.queue,
            "sqs_endpoint_url": sqs_server,
            "sqs_access_key": "testing",
            "sqs_secret_key": SecretStr(KEYS["aws_secret_access_key"]),
            "sqs_wait_seconds": 1,
            "relay_catchup_enabled": False,
        }
    )


@pytest.fixture(scope="module")
async def sqs_relay(sqs_settings: Settings, stack_up: None) -> AsyncIterator[TestServer]:
    """The relay reading the queue (its webhook routes are not used here)."""
    server = TestServer(create_app(sqs_settings, periodic_catch_up=False), host="127.0.0.1")
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
def uploads(http: ClientSession, gateway: str, owner_headers: dict[str, str]) -> Uploads:
    return Uploads(http, gateway, owner_headers)


async def landed(uploads: Uploads, data: bytes) -> tuple[dict[str, Any], str]:
    """An upload whose bytes are in storage, with nobody told: (created, etag)."""
    created = await uploads.create(data, "image/jpeg")
    upload = created["upload"]
    async with uploads.http.put(upload["url"], data=data, headers=upload["headers"]) as resp:
        assert resp.status == 200, await resp.text()
        return created, resp.headers["ETag"].strip('"')


async def test_direct_and_sns_wrapped_s3_events_take_real_uploads_to_ready(
    uploads: Uploads, workers: None, aws: Aws, sqs_relay: TestServer, settings: Settings
) -> None:
    data = make_jpeg()
    direct, direct_etag = await landed(uploads, data)
    aws.sqs.send_message(
        QueueUrl=aws.queue,
        MessageBody=s3_event(settings.bucket, direct["key"], len(data), direct_etag),
    )
    wrapped, wrapped_etag = await landed(uploads, data)
    aws.sns.publish(
        TopicArn=aws.topic,
        Message=s3_event(settings.bucket, wrapped["key"], len(data), wrapped_etag),
    )
    for created in (direct, wrapped):
        record = await uploads.wait_final(created["id"])
        assert record["status"] == "ready", record
        [uploaded] = [e for e in record["timeline"] if e["status"] == "uploaded"]
        assert uploaded["detail"]["via"] == "s3", uploaded

    async def emptied() -> bool:
        return aws.count(aws.queue) == 0

    await eventually(emptied, timeout=10, what="every message deleted")
    metrics: RelayMetrics = sqs_relay.app[METRICS]
    assert metrics.registry.get_sample_value(
        "clearance_relay_events_published_total", {"source": "sqs"}
    ) == pytest.approx(2)


async def test_test_events_and_malformed_messages_do_not_stop_the_relay(
    uploads: Uploads, aws: Aws, sqs_relay: TestServer, settings: Settings
) -> None:
    metrics: RelayMetrics = sqs_relay.app[METRICS]

    def sample(name: str, **labels: str) -> float:
        return metrics.registry.get_sample_value(name, {"source": "sqs", **labels}) or 0.0

    malformed_before = sample("clearance_relay_notifications_malformed_total")
    dead_before = aws.count(aws.dlq)
    test_event = {"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": settings.bucket}
    aws.sqs.send_message(QueueUrl=aws.queue, MessageBody=json.dumps(test_event))
    aws.sqs.send_message(QueueUrl=aws.queue, MessageBody="this is not an S3 event")
    aws.sns.publish(TopicArn=aws.topic, Message=json.dumps({"Records": "not a list"}))
    # The relay still relays what comes after them.
    data = make_jpeg()
    created, etag = await landed(uploads, data)
    aws.sqs.send_message(
        QueueUrl=aws.queue, MessageBody=s3_event(settings.bucket, created["key"], len(data), etag)
    )

    async def recorded() -> bool:
        return (await uploads.get(created["id"]))["status"] != "pending"

    await eventually(recorded, timeout=15, what="the upload recorded as landed")
    assert sample("clearance_relay_notifications_ignored_total", reason="test-event") >= 1

    # The two poison messages reach the dead-letter queue (maxReceiveCount 2); the test
    # event and the good one were deleted.
    async def dead_lettered() -> bool:
        return aws.count(aws.dlq) - dead_before == 2 and aws.count(aws.queue) == 0

    await eventually(dead_lettered, timeout=20, what="both poison messages dead-lettered")
    assert sample("clearance_relay_notifications_malformed_total") - malformed_before >= 2


class Refusing:
    """A broker that confirms nothing."""

    async def forward(
        self,
        events: Sequence[ObjectCreated],
        *,
        source: str,
        timeout: float,  # noqa: ASYNC109
    ) -> int:
        raise PublishFailed("no confirm")


async def test_a_message_is_deleted_only_after_the_broker_confirmed(
    sqs_settings: Settings, sqs_server: str, settings: Settings
) -> None:
    queue = Aws(sqs_server).sqs.create_queue(
        QueueName="clearance-confirm-first", Attributes={"VisibilityTimeout": "1"}
    )["QueueUrl"]
    mine = sqs_settings.model_copy(update={"sqs_queue_url": queue})
    body = s3_event(settings.bucket, "uploads/0123456789abcdef/" + "0" * 36, 10, "e")
    sqs = boto3.client("sqs", endpoint_url=sqs_server, region_name=REGION, **KEYS)
    sqs.send_message(QueueUrl=queue, MessageBody=body)
    async with sqs_client(mine) as client:
        intake = SqsIntake(mine, client, Refusing(), RelayMetrics(), Scope.from_settings(mine))
        report = await intake.run_once(wait_seconds=1)
    assert (report.received, report.deleted, len(report.unconfirmed)) == (1, 0, 1)
    attributes = sqs.get_queue_attributes(
        QueueUrl=queue, AttributeNames=["ApproximateNumberOfMessagesNotVisible"]
    )
    assert attributes["Attributes"]["ApproximateNumberOfMessagesNotVisible"] == "1"
