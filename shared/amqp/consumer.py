"""The consumer runtime: parse, handle, ack; retries through delay queues; DLQ with reasons."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aio_pika.abc
from aio_pika.exceptions import AMQPError, ChannelInvalidStateError, MessageProcessError
from pydantic import ValidationError

from shared.amqp.metrics import ConsumerMetrics, default_consumer_metrics
from shared.amqp.publisher import PublishFailed, publish_confirmed
from shared.amqp.topology import (
    QueueSpec,
    declare_topology,
    dlq_name,
    retry_delay_ms,
    retry_queue_name,
)
from shared.events import AnyEvent, parse_event
from shared.settings import Settings

log = logging.getLogger(__name__)

# Headers the broker adds when it dead-letters or redelivers; copies we publish
# start clean so that neither the broker's counters nor x-death history carry over.
_BROKER_HEADERS = frozenset(
    {
        "x-death",
        "x-delivery-count",
        "x-first-death-exchange",
        "x-first-death-queue",
        "x-first-death-reason",
        "x-last-death-exchange",
        "x-last-death-queue",
        "x-last-death-reason",
    }
)
_MAX_REASON = 1000
# Bounds the broker round trips of a shutdown (cancel, channel close).
_SHUTDOWN_STEP_SECONDS = 5.0


class Retry(Exception):
    """Raised by a handler: try the message again after a back-off (counts as an attempt)."""


class Reject(Exception):
    """Raised by a handler: the message can never succeed; dead-letter it now with this reason."""


@dataclass(frozen=True)
class Delivery:
    """What the handler gets besides the event.

    `attempt` counts handler runs that ended in a retry (1 on first delivery);
    `redeliveries` counts how often the broker handed this very copy back
    without an outcome (a crash, a lost connection, a drain that timed out).
    """

    queue: str
    attempt: int
    max_attempts: int
    redeliveries: int
    routing_key: str
    message_id: str | None
    correlation_id: str | None
    headers: Mapping[str, Any]

    @property
    def is_last_attempt(self) -> bool:
        """True when a failure now sends the message to the DLQ instead of retrying."""
        return self.attempt >= self.max_attempts


Handler = Callable[[AnyEvent, Delivery], Awaitable[None]]
OnDeadLetter = Callable[[AnyEvent | None, str], Awaitable[None]]


def _describe(exc: BaseException) -> str:
    if isinstance(exc, Retry | Reject):
        text = str(exc) or type(exc).__name__
    else:
        text = f"{type(exc).__name__}: {exc}"
    return text[:_MAX_REASON]


def _summarise(exc: ValidationError) -> str:
    # Field paths and messages only: the input itself may be huge or hostile.
    parts = [
        f"{'.'.join(str(p) for p in err['loc']) or '(body)'}: {err['msg']}"
        for err in exc.errors()[:5]
    ]
    return f"malformed message ({exc.error_count()} errors): " + "; ".join(parts)


def _int_header(headers: Mapping[str, Any], name: str, default: int) -> int:
    value = headers.get(name)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str | bytes) and value.isdigit():
        return int(value)
    return default


def _copy(
    message: aio_pika.abc.AbstractIncomingMessage, headers: dict[str, Any]
) -> aio_pika.Message:
    """The same body and identity, new headers, always persistent."""
    return aio_pika.Message(
        body=message.body,
        headers=headers,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        priority=message.priority,
        correlation_id=message.correlation_id,
        message_id=message.message_id,
        timestamp=message.timestamp,
        type=message.type,
        app_id=message.app_id,
    )


class Consumer:
    """Runs a handler over one queue with at-least-once semantics.

    Each message is parsed with `shared.events.parse_event` and handed to
    `handler(event, delivery)`; it is acked only after the handler returned, so
    the handler must make its work durable before returning and be idempotent
    (drop duplicates by `event.event_id`).

    * Malformed body → published to `<queue>.dlq` with the reason, then acked.
    * Handler raises `Reject` → straight to the DLQ with the reason.
    * Handler raises `Retry` or any other exception → a copy goes to the delay
      queue for this attempt (`settings.retry_delays_ms`, the last delay
      repeats) with `x-attempt` / `x-last-error`, then the original is acked.
      After `settings.max_attempts` attempts it goes to the DLQ instead.
    * A copy the broker redelivered `queue.delivery_limit` times without an
      outcome (the handler kills the worker) goes to the DLQ without running.

    Every copy is confirmed by the broker before the original is acked; a crash
    in between yields a duplicate, never a loss. When a message reaches the DLQ,
    `on_dead_letter(event or None, reason)` is awaited before the ack; if it
    raises, the message is requeued and the whole step runs again later.

    Metrics go to `metrics` (default: `default_consumer_metrics()`).
    """

    def __init__(
        self,
        connection: aio_pika.abc.AbstractConnection,
        settings: Settings,
        queue: QueueSpec,
        handler: Handler,
        *,
        on_dead_letter: OnDeadLetter | None = None,
        metrics: ConsumerMetrics | None = None,
        prefetch: int | None = None,
        publish_timeout: float = 10.0,
    ) -> None:
        if not settings.retry_delays_ms or min(settings.retry_delays_ms) < 1:
            raise ValueError("retry_delays_ms must hold at least one positive delay")
        self._connection = connection
        self._settings = settings
        self._spec = queue
        self._handler = handler
        self._on_dead_letter = on_dead_letter
        self._metrics = metrics or default_consumer_metrics()
        self._prefetch = prefetch or settings.amqp_prefetch
        self._publish_timeout = publish_timeout
        self._channel: aio_pika.abc.AbstractChannel | None = None
        self._queue: aio_pika.abc.AbstractQueue | None = None
        self._consumer_tag: str | None = None
        self._in_flight: set[asyncio.Task[Any]] = set()
        self._draining = False

    @property
    def queue_name(self) -> str:
        """The consumer queue's name."""
        return self._spec.name

    @property
    def consuming(self) -> bool:
        """True from `start` until `drain` has cancelled the consumer at the broker."""
        return self._consumer_tag is not None

    async def start(self) -> None:
        """Open a confirming channel, declare this queue's topology and start consuming."""
        if self._channel is not None or self._draining:
            raise RuntimeError(f"consumer for {self.queue_name!r} was already started")
        channel = self._connection.channel(publisher_confirms=True, on_return_raises=True)
        await channel
        self._channel = channel
        try:
            await channel.set_qos(prefetch_count=self._prefetch)
            queues = await declare_topology(channel, self._settings, [self._spec])
            self._queue = queues[self._spec.name]
            self._consumer_tag = await self._queue.consume(self._on_message)
        except BaseException:
            self._channel = None
            await channel.close()
            raise
        log.info("consuming %s (prefetch %d)", self.queue_name, self._prefetch)

    async def drain(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109 - a grace period
        """Stop consuming, let in-flight handlers finish (up to `timeout`), close the channel.

        Handlers still running after `timeout` are cancelled without an ack; the
        broker requeues their messages when the channel closes, so another
        worker gets them. Safe to call more than once.
        """
        channel = self._channel
        if channel is None or self._draining:
            return
        self._draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if self._queue is not None and self._consumer_tag is not None:
            try:
                async with asyncio.timeout(_SHUTDOWN_STEP_SECONDS):
                    await self._queue.cancel(self._consumer_tag)
                self._consumer_tag = None
            except (AMQPError, ChannelInvalidStateError, ConnectionError, TimeoutError) as exc:
                # Closing the channel below stops deliveries as well.
                log.warning("could not cancel the consumer on %s: %r", self.queue_name, exc)
        while self._in_flight and (remaining := deadline - loop.time()) > 0:
            await asyncio.wait(set(self._in_flight), timeout=remaining)
        unfinished = set(self._in_flight)
        if unfinished:
            log.warning(
                "%d handler(s) on %s still running after %.1fs; cancelling, "
                "the broker will redeliver their messages",
                len(unfinished),
                self.queue_name,
                timeout,
            )
            for task in unfinished:
                task.cancel()
            await asyncio.wait(unfinished, timeout=_SHUTDOWN_STEP_SECONDS)
        try:
            async with asyncio.timeout(_SHUTDOWN_STEP_SECONDS):
                await channel.close()
        except (AMQPError, ChannelInvalidStateError, ConnectionError, TimeoutError) as exc:
            log.warning("closing the channel of %s failed: %r", self.queue_name, exc)
        self._channel = None
        self._consumer_tag = None
        log.info("stopped consuming %s", self.queue_name)

    async def _on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._in_flight.add(task)
        try:
            if self._draining:
                # Delivered between our cancel and the broker's cancel-ok.
                await self._give_back(message)
                return
            await self._process(message)
        except Exception:
            # A bug in this runtime must not leave the message unacked for the
            # lifetime of the channel; the broker's delivery limit bounds loops.
            log.exception("unexpected error while processing a message from %s", self.queue_name)
            await self._give_back(message)
        finally:
            if task is not None:
                self._in_flight.discard(task)

    async def _process(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        headers: Mapping[str, Any] = message.headers or {}
        attempt = max(1, _int_header(headers, "x-attempt", 1))
        redeliveries = _int_header(headers, "x-delivery-count", 0)
        routing_key = str(headers.get("x-original-routing-key") or message.routing_key or "")

        try:
            event = parse_event(message.body)
        except ValidationError as exc:
            await self._dead_letter(
                message,
                None,
                kind="malformed",
                reason=_summarise(exc),
                attempt=attempt,
                routing_key=routing_key,
            )
            return
        context = {"upload_id": str(event.upload_id), "correlation_id": event.correlation_id}

        if redeliveries >= self._spec.delivery_limit:
            reason = (
                f"delivered {redeliveries + 1} times without an outcome "
                "(the worker crashed or stopped while handling it)"
            )
            await self._dead_letter(
                message,
                event,
                kind="redelivery-limit",
                reason=reason,
                attempt=attempt,
                routing_key=routing_key,
            )
            return

        delivery = Delivery(
            queue=self.queue_name,
            attempt=attempt,
            max_attempts=self._settings.max_attempts,
            redeliveries=redeliveries,
            routing_key=routing_key,
            message_id=message.message_id,
            correlation_id=message.correlation_id or event.correlation_id,
            headers=headers,
        )
        started = time.perf_counter()
        try:
            await self._handler(event, delivery)
        except Reject as exc:
            self._metrics.failed.labels(self.queue_name).inc()
            log.warning("%s rejected %s: %s", self.queue_name, event.event_id, exc, extra=context)
            await self._dead_letter(
                message,
                event,
                kind="rejected",
                reason=_describe(exc),
                attempt=attempt,
                routing_key=routing_key,
            )
        except Exception as exc:
            # Any failure is an attempt: retried with back-off, then dead-lettered.
            self._metrics.failed.labels(self.queue_name).inc()
            log.warning(
                "%s failed %s on attempt %d/%d: %s",
                self.queue_name,
                event.event_id,
                attempt,
                self._settings.max_attempts,
                _describe(exc),
                exc_info=not isinstance(exc, Retry),
                extra=context,
            )
            if attempt >= self._settings.max_attempts:
                reason = f"gave up after {attempt} attempts: {_describe(exc)}"
                await self._dead_letter(
                    message,
                    event,
                    kind="exhausted",
                    reason=reason[:_MAX_REASON],
                    attempt=attempt,
                    routing_key=routing_key,
                )
            else:
                await self._retry(message, attempt, exc, routing_key)
        else:
            if await self._settle(message):
                self._metrics.handled.labels(self.queue_name).inc()
        finally:
            self._metrics.duration.labels(self.queue_name).observe(time.perf_counter() - started)

    def _forwarded_headers(self, message: aio_pika.abc.AbstractIncomingMessage) -> dict[str, Any]:
        return {k: v for k, v in (message.headers or {}).items() if k not in _BROKER_HEADERS}

    async def _retry(
        self,
        message: aio_pika.abc.AbstractIncomingMessage,
        attempt: int,
        error: BaseException,
        routing_key: str,
    ) -> None:
        assert self._channel is not None
        delay = retry_delay_ms(self._settings, attempt)
        headers = self._forwarded_headers(message)
        headers.update(
            {
                "x-attempt": attempt + 1,
                "x-last-error": _describe(error),
                "x-original-routing-key": routing_key,
            }
        )
        try:
            await publish_confirmed(
                self._channel,
                "",
                retry_queue_name(self.queue_name, delay),
                _copy(message, headers),
                timeout=self._publish_timeout,
            )
        except PublishFailed as exc:
            log.error("could not schedule a retry on %s: %s", self.queue_name, exc)
            await self._give_back(message)
            return
        if await self._settle(message):
            self._metrics.retried.labels(self.queue_name).inc()

    async def _dead_letter(
        self,
        message: aio_pika.abc.AbstractIncomingMessage,
        event: AnyEvent | None,
        *,
        kind: str,
        reason: str,
        attempt: int,
        routing_key: str,
    ) -> None:
        assert self._channel is not None
        headers = self._forwarded_headers(message)
        headers.update(
            {
                "x-death-reason": reason,
                "x-death-kind": kind,
                "x-death-queue": self.queue_name,
                "x-attempts": attempt,
                "x-original-routing-key": routing_key,
                "x-failed-at": datetime.now(UTC).isoformat(),
            }
        )
        try:
            await publish_confirmed(
                self._channel,
                "",
                dlq_name(self.queue_name),
                _copy(message, headers),
                timeout=self._publish_timeout,
            )
        except PublishFailed as exc:
            log.error("could not dead-letter a message on %s: %s", self.queue_name, exc)
            await self._give_back(message)
            return
        if self._on_dead_letter is not None:
            try:
                await self._on_dead_letter(event, reason)
            except Exception:
                # Requeued: the dead-lettering (and this callback) runs again.
                log.exception("on_dead_letter failed on %s; requeueing", self.queue_name)
                await self._give_back(message)
                return
        log.error("%s dead-lettered a message (%s): %s", self.queue_name, kind, reason)
        if await self._settle(message):
            self._metrics.dead_lettered.labels(self.queue_name, kind).inc()

    async def _settle(self, message: aio_pika.abc.AbstractIncomingMessage) -> bool:
        try:
            await message.ack()
        except (AMQPError, ChannelInvalidStateError, MessageProcessError, ConnectionError) as exc:
            # The channel is gone: the broker redelivers and the handler's
            # idempotence absorbs the duplicate.
            log.warning("ack on %s failed, message will be redelivered: %r", self.queue_name, exc)
            return False
        return True

    async def _give_back(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        try:
            await message.nack(requeue=True)
        except (AMQPError, ChannelInvalidStateError, MessageProcessError, ConnectionError) as exc:
            log.warning("nack on %s failed, the broker requeues on close: %r", self.queue_name, exc)


async def run_until_signalled(
    consumers: Sequence[Consumer],
    *,
    drain_timeout: float = 30.0,
    signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
) -> None:
    """Run a worker's consumers until SIGTERM/SIGINT, then drain them all.

    Starts every consumer, waits for a signal, drains (in-flight handlers
    finish or are requeued) and restores the previous signal handlers. The
    caller owns and closes the connection afterwards.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    previous = {sig: signal.getsignal(sig) for sig in signals}
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        for consumer in consumers:
            await consumer.start()
        await stop.wait()
        log.info("signal received; draining %d consumer(s)", len(consumers))
    finally:
        try:
            await asyncio.gather(*(c.drain(drain_timeout) for c in consumers))
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
                handler = previous[sig]
                if handler is not None:
                    signal.signal(sig, handler)
