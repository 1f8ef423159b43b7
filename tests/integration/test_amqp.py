"""The AMQP runtime against a real RabbitMQ: confirms, retries, DLQ, drain, reconnects.

Every test gets its own exchange and queues (unique names) and deletes them
afterwards. Waiting is always on futures/queues or polling with a deadline.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import aio_pika
import aio_pika.abc
import pytest
from prometheus_client import CollectorRegistry
from yarl import URL

from shared.amqp import (
    BrokerUnavailable,
    Consumer,
    ConsumerMetrics,
    Delivery,
    Publisher,
    PublishFailed,
    QueueSpec,
    Reject,
    Retry,
    Unroutable,
    connect,
    declare_exchange,
    declare_topology,
    dlq_name,
    retry_queue_name,
    run_until_signalled,
)
from shared.amqp.publisher import JsonProperties, Outgoing, publish_all_confirmed
from shared.events import AnyEvent, ObjectCreated, ScanClean, UploadFailed
from shared.settings import Settings
from tests.proxy import LinkProxy
from tests.support import eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

T = TypeVar("T")
WAIT = 10.0


def make_event(key: str = "uploads/a/b") -> ObjectCreated:
    return ObjectCreated.build(
        upload_id=uuid.uuid4(), bucket="test", key=key, size=3, etag=None, source="gateway"
    )


async def next_item(queue: asyncio.Queue[T], timeout: float = WAIT) -> T:  # noqa: ASYNC109
    return await asyncio.wait_for(queue.get(), timeout)


class Broker:
    """One test's slice of RabbitMQ: settings with unique names, owned resources, cleanup."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.prefix = settings.amqp_exchange
        self.registry = CollectorRegistry()
        self.metrics = ConsumerMetrics(self.registry)
        self._connections: list[aio_pika.abc.AbstractRobustConnection] = []
        self._consumers: list[Consumer] = []
        self._publishers: list[Publisher] = []
        self._queues: list[str] = []
        self.admin: aio_pika.abc.AbstractRobustConnection

    async def open(self) -> None:
        self.admin = await self.connect(name="test-admin")

    async def connect(self, **kwargs: Any) -> aio_pika.abc.AbstractRobustConnection:
        connection = await connect(self.settings, reconnect_interval=0.1, **kwargs)
        self._connections.append(connection)
        return connection

    def track_queue(self, name: str) -> str:
        """Delete this queue after the test."""
        self._queues.append(name)
        return name

    def spec(self, name: str = "worker", *bindings: str, delivery_limit: int = 10) -> QueueSpec:
        spec = QueueSpec(
            f"{self.prefix}.{name}", bindings or ("object.created",), delivery_limit=delivery_limit
        )
        self._queues += [spec.name, dlq_name(spec.name)]
        self._queues += [retry_queue_name(spec.name, d) for d in self.settings.retry_delays_ms]
        return spec

    def consumer(
        self,
        spec: QueueSpec,
        handler: Callable[[AnyEvent, Delivery], Awaitable[None]],
        connection: aio_pika.abc.AbstractConnection | None = None,
        **kwargs: Any,
    ) -> Consumer:
        consumer = Consumer(
            connection or self.admin, self.settings, spec, handler, metrics=self.metrics, **kwargs
        )
        self._consumers.append(consumer)
        return consumer

    async def publisher(self) -> Publisher:
        publisher = await Publisher.open(self.admin, self.settings)
        self._publishers.append(publisher)
        return publisher

    async def declare(self, *specs: QueueSpec) -> None:
        async with self.admin.channel() as channel:
            await declare_topology(channel, self.settings, specs)

    async def queue_state(self, name: str) -> tuple[int, int]:
        """(ready messages, consumers) of a queue."""
        async with self.admin.channel() as channel:
            queue = await channel.declare_queue(name, passive=True)
            result = queue.declaration_result
            return result.message_count or 0, result.consumer_count or 0

    async def bounded_queue(self, name: str, length: int) -> None:
        """A queue bound to `object.created` that refuses messages past `length`."""
        async with self.admin.channel() as channel:
            exchange = await declare_exchange(channel, self.settings)
            queue = await channel.declare_queue(
                self.track_queue(f"{self.prefix}.{name}"),
                durable=True,
                arguments={"x-max-length": length, "x-overflow": "reject-publish"},
            )
            await queue.bind(exchange, "object.created")

    async def settles(self, name: str, state: tuple[int, int]) -> None:
        """Wait for a queue's (ready messages, consumers): the broker drops a closed
        channel's consumers after the channel's close-ok, not before."""

        async def reached() -> bool:
            return await self.queue_state(name) == state

        await eventually(reached, timeout=WAIT, what=f"{name} at (ready, consumers) {state}")

    async def get(self, name: str, timeout: float = WAIT) -> aio_pika.abc.AbstractIncomingMessage:  # noqa: ASYNC109
        """The next message of a queue (acked on receipt), polling until `timeout`."""
        deadline = time.monotonic() + timeout
        async with self.admin.channel() as channel:
            queue = await channel.declare_queue(name, passive=True)
            while (message := await queue.get(no_ack=True, fail=False)) is None:
                if time.monotonic() > deadline:
                    raise AssertionError(f"no message in {name} before the deadline")
                await asyncio.sleep(0.02)
            return message

    async def publish_raw(self, body: bytes, routing_key: str = "object.created") -> None:
        async with self.admin.channel(on_return_raises=True) as channel:
            exchange = await channel.get_exchange(self.settings.amqp_exchange)
            await exchange.publish(aio_pika.Message(body), routing_key, mandatory=True)

    def count(self, metric: str, **labels: str) -> float:
        return self.registry.get_sample_value(metric, labels) or 0.0

    async def close(self) -> None:
        for consumer in self._consumers:
            await consumer.drain(timeout=1)
        for publisher in self._publishers:
            await publisher.close()
        for name in self._queues:
            async with self.admin.channel() as channel:
                await channel.queue_delete(name)
        async with self.admin.channel() as channel:
            await channel.exchange_delete(self.settings.amqp_exchange)
        for connection in reversed(self._connections):
            await connection.close()


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "amqp_exchange": f"test.amqp.{uuid.uuid4().hex[:12]}",
        "retry_delays_ms": (50, 100),
        "max_attempts": 3,
        "amqp_prefetch": 4,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
async def broker() -> AsyncIterator[Broker]:
    broker = Broker(make_settings())
    await broker.open()
    try:
        yield broker
    finally:
        await broker.close()


class Recorder:
    """A handler that records deliveries and can be told to fail."""

    def __init__(self, fail: Callable[[AnyEvent, Delivery], BaseException | None] | None = None):
        self.calls: list[tuple[AnyEvent, Delivery]] = []
        self.handled: asyncio.Queue[tuple[AnyEvent, Delivery]] = asyncio.Queue()
        self.dead: asyncio.Queue[tuple[AnyEvent | None, str]] = asyncio.Queue()
        self._fail = fail

    async def __call__(self, event: AnyEvent, delivery: Delivery) -> None:
        self.calls.append((event, delivery))
        error = self._fail(event, delivery) if self._fail else None
        if error is not None:
            raise error
        await self.handled.put((event, delivery))

    async def on_dead_letter(self, event: AnyEvent | None, reason: str) -> None:
        await self.dead.put((event, reason))


# --- publishing ------------------------------------------------------------------------------


async def test_published_event_arrives_persistent_with_ids(broker: Broker) -> None:
    spec = broker.spec("inbox")
    await broker.declare(spec)
    publisher = await broker.publisher()
    event = make_event()

    await publisher.publish(event, headers={"x-test": "yes"})

    message = await broker.get(spec.name)
    assert ObjectCreated.model_validate_json(message.body) == event
    assert message.content_type == "application/json"
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.message_id == event.event_id
    assert message.correlation_id == event.correlation_id
    assert message.type == "object.created"
    assert message.headers["x-test"] == "yes"


async def test_publish_without_a_bound_queue_raises_unroutable(broker: Broker) -> None:
    await broker.declare(broker.spec("inbox", "object.created"))
    publisher = await broker.publisher()
    nobody_listens = UploadFailed(
        event_id="e1", upload_id=uuid.uuid4(), correlation_id="c1", reason="x", stage="scan"
    )

    with pytest.raises(Unroutable):
        await publisher.publish(nobody_listens)


async def test_publish_refused_by_the_broker_raises(broker: Broker) -> None:
    await broker.bounded_queue("full", 0)
    publisher = await broker.publisher()

    # The only queue bound is full and refuses: the broker nacks the publish.
    with pytest.raises(PublishFailed) as raised:
        await publisher.publish(make_event())
    assert not isinstance(raised.value, Unroutable)


async def test_publish_to_a_missing_exchange_raises_and_the_channel_recovers(
    broker: Broker,
) -> None:
    spec = broker.spec("inbox")
    await broker.declare(spec)
    good = await broker.publisher()
    missing = Publisher(good.channel, f"{broker.prefix}.missing")

    with pytest.raises(PublishFailed) as raised:
        await missing.publish(make_event())
    assert not isinstance(raised.value, Unroutable)

    # The broker closed the channel; the robust channel reopens and publishing goes on.
    event = make_event()
    await good.publish(event, timeout=5)
    message = await broker.get(spec.name)
    assert message.message_id == event.event_id


def _outgoing(routing_key: str, n: int) -> Outgoing:
    return Outgoing(
        routing_key,
        f'{{"n": {n}}}'.encode(),
        JsonProperties(
            message_id=f"m-{n}",
            correlation_id=None,
            message_type=routing_key,
            timestamp=datetime.now(UTC),
            app_id="test",
            headers={"n": n},
        ),
    )


async def test_a_batch_arrives_in_order_and_each_message_gets_its_own_outcome(
    broker: Broker,
) -> None:
    spec = broker.spec("inbox", "object.created")
    await broker.declare(spec)
    publisher = await broker.publisher()
    batch = [_outgoing("object.created", n) for n in range(200)]
    # One message in the middle no queue is bound for: only that one is unroutable.
    batch[57] = _outgoing("nobody.listens", 57)

    results = await publish_all_confirmed(
        publisher.channel, broker.settings.amqp_exchange, batch, timeout=10
    )

    assert [n for n, r in enumerate(results) if r is not None] == [57]
    assert isinstance(results[57], Unroutable)
    received = [(await broker.get(spec.name)).message_id for _ in range(199)]
    assert received == [f"m-{n}" for n in range(200) if n != 57]
    # The next publish on the channel still gets its confirm (the tags line up).
    await publisher.publish(event := make_event())
    assert (await broker.get(spec.name)).message_id == event.event_id


async def test_a_batch_partly_refused_by_the_broker_fails_only_the_refused(
    broker: Broker,
) -> None:
    await broker.bounded_queue("short", 3)
    publisher = await broker.publisher()

    results = await publish_all_confirmed(
        publisher.channel,
        broker.settings.amqp_exchange,
        [_outgoing("object.created", n) for n in range(8)],
        timeout=10,
        mandatory=False,
    )

    assert results[:3] == [None, None, None]
    assert all(isinstance(r, PublishFailed) and not isinstance(r, Unroutable) for r in results[3:])


async def test_a_batch_to_a_closed_channel_fails_every_message_without_hanging(
    broker: Broker,
) -> None:
    connection = await aio_pika.connect(broker.settings.amqp_url)  # not robust
    try:
        channel = await connection.channel(publisher_confirms=True)
        await channel.close()
        results = await publish_all_confirmed(
            channel, "", [_outgoing("anything", n) for n in range(3)], timeout=2
        )
    finally:
        await connection.close()
    assert len(results) == 3
    assert all(isinstance(r, PublishFailed) for r in results)


async def test_connect_reports_an_unreachable_broker_without_the_password() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = make_settings(amqp_url=f"amqp://guest:s3cret-pw@127.0.0.1:{port}/")

    with pytest.raises(BrokerUnavailable) as raised:
        await connect(settings, timeout=3)
    assert f"127.0.0.1:{port}" in str(raised.value)
    assert "s3cret-pw" not in str(raised.value)


# --- topology --------------------------------------------------------------------------------


async def test_declare_topology_twice_is_harmless_and_creates_every_queue(broker: Broker) -> None:
    spec = broker.spec("worker", "object.created", "scan.*")
    await broker.declare(spec)
    await broker.declare(spec)

    delay_queues = [retry_queue_name(spec.name, d) for d in broker.settings.retry_delays_ms]
    for name in (spec.name, dlq_name(spec.name), *delay_queues):
        assert await broker.queue_state(name) == (0, 0)
    publisher = await broker.publisher()
    await publisher.publish(make_event())
    await publisher.publish(
        ScanClean(
            event_id="s1",
            upload_id=uuid.uuid4(),
            correlation_id="c",
            bucket="b",
            key="k",
            size=1,
            duration_ms=1.0,
        )
    )
    assert (await broker.get(spec.name)).type == "object.created"
    assert (await broker.get(spec.name)).type == "scan.clean"


# --- consuming -------------------------------------------------------------------------------


async def test_consumed_once_and_acked(broker: Broker) -> None:
    spec = broker.spec()
    recorder = Recorder()
    consumer = broker.consumer(spec, recorder)
    await consumer.start()
    publisher = await broker.publisher()
    event = make_event()

    await publisher.publish(event)

    handled, delivery = await next_item(recorder.handled)
    assert handled == event
    assert (delivery.attempt, delivery.redeliveries, delivery.routing_key) == (
        1,
        0,
        "object.created",
    )
    assert delivery.correlation_id == event.correlation_id
    assert delivery.message_id == event.event_id
    # Once drained, an unacked message would be back in the queue.
    await consumer.drain(timeout=5)
    await broker.settles(spec.name, (0, 0))
    assert len(recorder.calls) == 1
    assert broker.count("clearance_amqp_handled_total", queue=spec.name) == 1


async def test_retry_backs_off_and_succeeds_on_the_third_attempt(broker: Broker) -> None:
    spec = broker.spec()
    seen_at: list[float] = []

    def flaky(event: AnyEvent, delivery: Delivery) -> BaseException | None:
        seen_at.append(time.monotonic())
        return Retry("storage not ready") if delivery.attempt < 3 else None

    recorder = Recorder(flaky)
    await broker.consumer(spec, recorder, on_dead_letter=recorder.on_dead_letter).start()
    publisher = await broker.publisher()
    event = make_event()

    await publisher.publish(event)

    handled, delivery = await next_item(recorder.handled)
    assert handled == event
    assert [d.attempt for _, d in recorder.calls] == [1, 2, 3]
    assert delivery.headers["x-last-error"] == "storage not ready"
    assert delivery.routing_key == "object.created"
    # Delays 50 ms then 100 ms (from settings.retry_delays_ms).
    assert seen_at[1] - seen_at[0] >= 0.045
    assert seen_at[2] - seen_at[1] >= 0.095
    assert recorder.dead.empty()
    assert broker.count("clearance_amqp_retried_total", queue=spec.name) == 2
    assert broker.count("clearance_amqp_handled_total", queue=spec.name) == 1


async def test_always_failing_message_ends_in_the_dlq_and_the_queue_keeps_flowing(
    broker: Broker,
) -> None:
    spec = broker.spec()

    def poison(event: AnyEvent, delivery: Delivery) -> BaseException | None:
        assert isinstance(event, ObjectCreated)
        return RuntimeError("decoder exploded") if event.key == "bad" else None

    recorder = Recorder(poison)
    await broker.consumer(spec, recorder, on_dead_letter=recorder.on_dead_letter).start()
    publisher = await broker.publisher()
    bad, good, later = make_event("bad"), make_event("good"), make_event("later")

    await publisher.publish(bad)
    await publisher.publish(good)

    assert (await next_item(recorder.handled))[0] == good
    dead_event, reason = await next_item(recorder.dead)
    assert dead_event == bad
    assert "after 3 attempts" in reason
    assert "decoder exploded" in reason
    assert [d.attempt for e, d in recorder.calls if e == bad] == [1, 2, 3]

    await publisher.publish(later)
    assert (await next_item(recorder.handled))[0] == later

    message = await broker.get(dlq_name(spec.name))
    assert message.body == bad.to_json()
    assert message.message_id == bad.event_id
    assert message.headers["x-death-kind"] == "exhausted"
    assert message.headers["x-death-reason"] == reason
    assert message.headers["x-attempts"] == 3
    assert message.headers["x-original-routing-key"] == "object.created"
    assert message.headers["x-death-queue"] == spec.name
    assert datetime.fromisoformat(str(message.headers["x-failed-at"])).tzinfo is not None
    assert await broker.queue_state(dlq_name(spec.name)) == (0, 0)
    assert (
        broker.count("clearance_amqp_dead_lettered_total", queue=spec.name, kind="exhausted") == 1
    )


async def test_reject_goes_straight_to_the_dlq(broker: Broker) -> None:
    spec = broker.spec()
    recorder = Recorder(lambda e, d: Reject("not an image"))
    await broker.consumer(spec, recorder, on_dead_letter=recorder.on_dead_letter).start()
    publisher = await broker.publisher()
    event = make_event()

    await publisher.publish(event)

    assert await next_item(recorder.dead) == (event, "not an image")
    assert len(recorder.calls) == 1
    message = await broker.get(dlq_name(spec.name))
    assert message.headers["x-death-kind"] == "rejected"
    assert message.headers["x-attempts"] == 1


async def test_malformed_messages_go_straight_to_the_dlq(broker: Broker) -> None:
    spec = broker.spec()
    recorder = Recorder()
    await broker.consumer(spec, recorder, on_dead_letter=recorder.on_dead_letter).start()
    publisher = await broker.publisher()

    await broker.publish_raw(b"{not json")
    await broker.publish_raw(b'{"type": "object.created", "bucket": 7}')
    event = make_event()
    await publisher.publish(event)

    assert (await next_item(recorder.handled))[0] == event
    for body in (b"{not json", b'{"type": "object.created", "bucket": 7}'):
        dead_event, reason = await next_item(recorder.dead)
        assert dead_event is None
        assert reason.startswith("malformed message")
        message = await broker.get(dlq_name(spec.name))
        assert message.body == body
        assert message.headers["x-death-kind"] == "malformed"
        assert message.headers["x-death-reason"] == reason
    assert [e for e, _ in recorder.calls] == [event]


async def test_failing_dead_letter_callback_requeues_instead_of_losing(broker: Broker) -> None:
    spec = broker.spec()
    recorder = Recorder(lambda e, d: Reject("bad"))
    refusals: list[str] = []

    async def flaky_callback(event: AnyEvent | None, reason: str) -> None:
        if not refusals:
            refusals.append(reason)
            raise ConnectionError("database down")
        await recorder.on_dead_letter(event, reason)

    await broker.consumer(spec, recorder, on_dead_letter=flaky_callback).start()
    event = make_event()
    await (await broker.publisher()).publish(event)

    assert await next_item(recorder.dead) == (event, "bad")
    assert refusals == ["bad"]
    assert [d.redeliveries for _, d in recorder.calls] == [0, 1]


# --- shutdown and crashes --------------------------------------------------------------------


async def test_drain_waits_for_the_in_flight_handler_and_loses_nothing(broker: Broker) -> None:
    spec = broker.spec()
    started: asyncio.Queue[str] = asyncio.Queue()
    release = asyncio.Event()
    log: list[str] = []

    async def slow(event: AnyEvent, delivery: Delivery) -> None:
        assert isinstance(event, ObjectCreated)
        await started.put(event.key)
        await release.wait()
        log.append(f"handled {event.key}")

    consumer = broker.consumer(spec, slow, prefetch=1)
    await consumer.start()
    publisher = await broker.publisher()
    await publisher.publish(make_event("first"))
    await publisher.publish(make_event("second"))
    assert await next_item(started) == "first"

    drain = asyncio.create_task(consumer.drain(timeout=10))
    drain.add_done_callback(lambda _: log.append("drained"))

    async def cancelled() -> bool:
        return not consumer.consuming

    await eventually(cancelled)
    assert not drain.done()
    release.set()
    await drain
    assert log == ["handled first", "drained"]

    # "second" was never started; it waits in the queue for the next worker.
    await broker.settles(spec.name, (1, 0))
    recorder = Recorder()
    await broker.consumer(spec, recorder).start()
    event, delivery = await next_item(recorder.handled)
    assert isinstance(event, ObjectCreated)
    assert event.key == "second"
    assert delivery.redeliveries == 0


async def test_drain_timeout_cancels_the_handler_and_the_message_is_redelivered(
    broker: Broker,
) -> None:
    spec = broker.spec()
    started: asyncio.Queue[None] = asyncio.Queue()
    outcomes: list[str] = []

    async def stuck(event: AnyEvent, delivery: Delivery) -> None:
        await started.put(None)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            outcomes.append("cancelled")
            raise

    consumer = broker.consumer(spec, stuck)
    await consumer.start()
    event = make_event()
    await (await broker.publisher()).publish(event)
    await next_item(started)

    await consumer.drain(timeout=0.1)

    assert outcomes == ["cancelled"]
    recorder = Recorder()
    await broker.consumer(spec, recorder).start()
    handled, delivery = await next_item(recorder.handled)
    assert handled == event
    assert delivery.redeliveries == 1
    assert delivery.attempt == 1


async def test_a_message_that_keeps_killing_workers_ends_in_the_dlq(broker: Broker) -> None:
    spec = broker.spec(delivery_limit=2)
    event = make_event()
    await broker.declare(spec)
    await (await broker.publisher()).publish(event)
    redeliveries: list[int] = []

    for _ in range(2):
        started: asyncio.Queue[None] = asyncio.Queue()

        async def crash(event: AnyEvent, delivery: Delivery, started: Any = started) -> None:
            redeliveries.append(delivery.redeliveries)
            await started.put(None)
            await asyncio.Event().wait()

        # A worker that dies mid-handler: the broker gets the message back unacked.
        worker = broker.consumer(spec, crash)
        await worker.start()
        await next_item(started)
        await worker.drain(timeout=0)

    recorder = Recorder()
    await broker.consumer(spec, recorder, on_dead_letter=recorder.on_dead_letter).start()
    dead_event, reason = await next_item(recorder.dead)

    assert redeliveries == [0, 1]
    assert dead_event == event
    assert "without an outcome" in reason
    assert recorder.calls == []
    message = await broker.get(dlq_name(spec.name))
    assert message.headers["x-death-kind"] == "redelivery-limit"
    assert message.body == event.to_json()


# --- resilience ------------------------------------------------------------------------------


async def test_consumer_resumes_after_the_connection_is_cut(broker: Broker) -> None:
    url = URL(broker.settings.amqp_url)
    proxy = LinkProxy(url.host or "127.0.0.1", url.port or 5672)
    await proxy.start()
    proxied = broker.settings.model_copy(update={"amqp_url": str(url.with_port(proxy.proxy_port))})
    try:
        connection = await connect(proxied, reconnect_interval=0.1)
        try:
            spec = broker.spec()
            recorder = Recorder()
            consumer = Consumer(connection, proxied, spec, recorder, metrics=broker.metrics)
            await consumer.start()
            publisher = await broker.publisher()
            before, after = make_event("before"), make_event("after")

            await publisher.publish(before)
            assert (await next_item(recorder.handled))[0] == before
            await proxy.drop()
            await publisher.publish(after)

            # The consumer reconnects and consumes again by itself. `before` may come
            # twice if its ack was cut off: at-least-once, never lost.
            while (await next_item(recorder.handled))[0] != after:
                pass
            assert {e.event_id for e, _ in recorder.calls} == {before.event_id, after.event_id}
            await consumer.drain(timeout=5)
        finally:
            await connection.close()
    finally:
        await proxy.close()


async def test_run_until_signalled_drains_on_sigterm(broker: Broker) -> None:
    spec = broker.spec()
    recorder = Recorder()
    consumer = broker.consumer(spec, recorder)
    before = signal.getsignal(signal.SIGTERM)
    worker = asyncio.create_task(run_until_signalled([consumer], drain_timeout=5))

    async def consuming() -> bool:
        return consumer.consuming

    await eventually(consuming)
    event = make_event()
    await (await broker.publisher()).publish(event)
    # Signal handlers are installed before the consumers start.
    assert (await next_item(recorder.handled))[0] == event

    os.kill(os.getpid(), signal.SIGTERM)

    await asyncio.wait_for(worker, WAIT)
    await broker.settles(spec.name, (0, 0))
    assert signal.getsignal(signal.SIGTERM) == before
