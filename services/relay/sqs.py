"""S3 event notifications from an SQS queue (AWS): the relay's pull path.

On AWS the bucket sends `s3:ObjectCreated:*` notifications to SQS, directly or through
an SNS topic (raw message delivery off, so the S3 event is the envelope's `Message`).
The relay long-polls the queue, reads each body with the same parser as its webhook
(`formats.parse_s3_event`), publishes the `ObjectCreated` events with confirms through
the same forwarder, and deletes a message only after the broker confirmed every event
in it. A message that cannot be read is left alone: it comes back after the queue's
visibility timeout and, after `maxReceiveCount` receives, the queue's redrive policy
moves it to its dead-letter queue. S3's `s3:TestEvent` and SNS's subscription messages
are read, ignored and deleted.

The client is a plain aioboto3 SQS client: in tests it talks to a local server that
speaks the SQS protocol (moto), in production to AWS; only `sqs_endpoint_url` differs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from services.relay.formats import Ignored, MalformedNotification, Outcome, Scope, parse_s3_event
from services.relay.metrics import RelayMetrics
from shared.amqp.publisher import PublishFailed
from shared.events import ObjectCreated
from shared.settings import Settings

log = logging.getLogger(__name__)

SOURCE = "sqs"
MAX_MESSAGES = 10  # SQS's own limit per receive
# After a failed receive (SQS unreachable, throttled), wait this long before the next.
RETRY_SECONDS = (1.0, 2.0, 5.0, 10.0)
SNS_CONTROL = frozenset({"SubscriptionConfirmation", "UnsubscribeConfirmation"})


class Forwarding(Protocol):
    """What the intake needs from `forwarding.Forwarder`."""

    async def forward(
        self,
        events: Sequence[ObjectCreated],
        *,
        source: str,
        timeout: float,  # noqa: ASYNC109
    ) -> int: ...


def read_message(body: str, scope: Scope) -> list[Outcome]:
    """One SQS message body (an S3 event, or an SNS envelope of one) → its outcomes.

    Raises `MalformedNotification` for a body that is neither.
    """
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise MalformedNotification(f"body is not valid JSON: {exc}") from exc
    if isinstance(doc, dict) and "TopicArn" in doc and "Type" in doc:
        kind = doc["Type"]
        if kind in SNS_CONTROL:
            return [Ignored("sns-control", f"SNS {kind} for {doc['TopicArn']}")]
        message = doc.get("Message")
        if kind != "Notification" or not isinstance(message, str):
            raise MalformedNotification(f"an SNS {kind!r} envelope without a Message string")
        return parse_s3_event(message, scope)
    return parse_s3_event(body, scope)


@dataclass
class IntakeReport:
    """What one receive did: messages deleted, left for redelivery, events published."""

    received: int = 0
    deleted: int = 0
    published: int = 0
    malformed: list[str] = field(default_factory=list)  # message ids
    unconfirmed: list[str] = field(default_factory=list)  # message ids


class SqsIntake:
    """Long-polls the queue and relays what it reads; one receive at a time."""

    def __init__(
        self,
        settings: Settings,
        client: Any,  # aiobotocore SQS client
        forwarder: Forwarding,
        metrics: RelayMetrics,
        scope: Scope,
    ) -> None:
        if not settings.sqs_queue_url:
            raise ValueError("sqs_queue_url is not set")
        self._queue_url = settings.sqs_queue_url
        self._wait = settings.sqs_wait_seconds
        self._timeout = settings.sqs_publish_timeout_seconds
        self._client = client
        self._forwarder = forwarder
        self._metrics = metrics
        self._scope = scope
        self.last_receive: float | None = None  # unix time of the last successful receive

    async def run_forever(self) -> None:
        """Receive until cancelled; SQS trouble is logged and retried with back-off."""
        from botocore.exceptions import BotoCoreError, ClientError

        failures = 0
        while True:
            try:
                await self.run_once()
            except (BotoCoreError, ClientError, OSError, TimeoutError) as exc:
                delay = RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)]
                failures += 1
                log.warning(
                    "SQS receive failed (%s: %s); again in %.0f s", type(exc).__name__, exc, delay
                )
                await asyncio.sleep(delay)
                continue
            failures = 0

    async def run_once(self, wait_seconds: int | None = None) -> IntakeReport:
        """Receive up to 10 messages, relay them, delete the ones fully confirmed."""
        answer = await self._client.receive_message(
            QueueUrl=self._queue_url,
            MaxNumberOfMessages=MAX_MESSAGES,
            WaitTimeSeconds=self._wait if wait_seconds is None else wait_seconds,
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
        )
        self.last_receive = time.time()
        report = IntakeReport()
        done: list[dict[str, Any]] = []
        for message in answer.get("Messages", []):
            report.received += 1
            if await self._relay(message, report):
                done.append(message)
        if done:
            await self._delete(done, report)
        return report

    async def _relay(self, message: dict[str, Any], report: IntakeReport) -> bool:
        """True when the message may be deleted (read, and every event confirmed)."""
        message_id = str(message.get("MessageId"))
        try:
            outcomes = read_message(message.get("Body", ""), self._scope)
        except MalformedNotification as exc:
            self._metrics.malformed.labels(SOURCE).inc()
            receives = message.get("Attributes", {}).get("ApproximateReceiveCount", "?")
            log.warning(
                "SQS message %s is malformed (received %s times; the queue's redrive policy"
                " dead-letters it): %s",
                message_id,
                receives,
                exc.detail,
            )
            report.malformed.append(message_id)
            return False
        self._metrics.received.labels(SOURCE).inc(len(outcomes))
        events = []
        for outcome in outcomes:
            if isinstance(outcome, Ignored):
                self._metrics.ignored.labels(SOURCE, outcome.code).inc()
            else:
                events.append(outcome)
        try:
            report.published += await self._forwarder.forward(
                events, source=SOURCE, timeout=self._timeout
            )
        except PublishFailed as exc:
            log.warning("SQS message %s kept: the broker did not confirm (%s)", message_id, exc)
            report.unconfirmed.append(message_id)
            return False
        for event in events:
            log.info("relayed %s %s (%s)", SOURCE, event.key, event.event_id)
        return True

    async def _delete(self, messages: list[dict[str, Any]], report: IntakeReport) -> None:
        answer = await self._client.delete_message_batch(
            QueueUrl=self._queue_url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)
            ],
        )
        report.deleted += len(answer.get("Successful", []))
        for failed in answer.get("Failed", []):
            # It comes back after the visibility timeout; its events are duplicates then.
            log.warning("SQS delete failed for entry %s: %s", failed.get("Id"), failed)


@asynccontextmanager
async def sqs_client(settings: Settings) -> AsyncIterator[Any]:
    """An aiobotocore SQS client; credentials from settings or the default AWS chain."""
    import aioboto3
    from aiobotocore.config import AioConfig

    config = AioConfig(
        connect_timeout=5,
        read_timeout=settings.sqs_wait_seconds + 10,  # a long poll answers within its wait
        retries={"max_attempts": 3, "mode": "standard"},
    )
    keys: dict[str, str] = {}
    if settings.sqs_access_key and settings.sqs_secret_key:
        keys = {
            "aws_access_key_id": settings.sqs_access_key,
            "aws_secret_access_key": settings.sqs_secret_key.get_secret_value(),
        }
    async with aioboto3.Session().client(
        "sqs",
        endpoint_url=settings.sqs_endpoint_url,
        region_name=settings.sqs_region or settings.s3_region,
        config=config,
        **keys,
    ) as client:
        yield client
