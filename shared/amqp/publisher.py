"""Publishing with publisher confirms: a publish returns only once the broker has the message.

`publish_all_confirmed` is the one path: it writes a batch of messages to the channel
as one socket write (their frames back to back, in order) and waits for each one's
confirm. aio-pika's `Exchange.publish` writes and drains each message on its own
under the channel's lock, three to four event-loop turns a message: publishing the
outbox's events that way was a fifth of a gateway's CPU. The delivery-tag
bookkeeping is aiormq's own (`Channel.basic_publish`, aiormq 7.2, pinned), done
once per batch instead of once per message; `tests/integration/test_amqp.py` holds
it to aio-pika's results (confirms, nacks, returns, a closed channel) and
`bench/events.py` measures it against aio-pika's publishing.

The frames are built here too, byte for byte as pamqp marshals them
(`tests/unit/test_amqp_frames.py`): a `basic.publish` frame is the same for every
message to one exchange and routing key, so it is made once; an event's content
header (`JsonProperties`, the fixed set of properties every event carries) is
packed directly rather than property by property: an event's frames cost ~7 µs of
CPU here, against ~19 µs through pamqp's objects.
"""

from __future__ import annotations

import asyncio
import functools
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aio_pika.abc
import aiormq
import aiormq.abc
import pamqp.frame
from aio_pika.exceptions import AMQPError, ChannelInvalidStateError, DeliveryError, PublishError
from aiormq.abc import ChannelFrame
from pamqp.commands import Basic
from pamqp.encode import field_table
from pamqp.header import ContentHeader

from shared.amqp.topology import declare_exchange
from shared.events import Event
from shared.settings import Settings

# While a robust channel reopens after a channel-level error there is a short
# window in which it reports closed but has not started restoring yet.
_REOPEN_POLL_SECONDS = 0.02
PERSISTENT = int(aio_pika.DeliveryMode.PERSISTENT)


class PublishFailed(Exception):
    """The broker did not confirm the message.

    After a timeout or a lost connection the message may still have been stored:
    publishing it again can create a duplicate, which consumers drop by event id.
    """


class Unroutable(PublishFailed):
    """No queue is bound for the routing key, so the broker would have dropped the message."""


@dataclass(frozen=True, slots=True, kw_only=True)
class JsonProperties:
    """The properties of a persistent JSON event, as `aio_pika.Message` builds them.

    `header_frame` packs the content header frame pamqp would marshal from them
    (the golden tests compare the two), without building pamqp's objects.
    """

    message_id: str
    correlation_id: str | None
    message_type: str
    timestamp: datetime
    app_id: str
    headers: dict[str, Any]

    def header_frame(self, channel_number: int, body_size: int) -> bytes:
        """The content header frame for a body of `body_size` bytes on the channel."""
        # In pamqp's order (the flags' order); an empty string is left out, as there.
        flags = _FIXED_FLAGS
        parts = [_CONTENT_TYPE_FIELD, field_table(self.headers), _PERSISTENT_PRIORITY_0]
        optional = (
            (_CORRELATION_ID, self.correlation_id),
            (_MESSAGE_ID, self.message_id),
            (_TIMESTAMP, self.timestamp),
            (_TYPE, self.message_type),
            (_APP_ID, self.app_id),
        )
        for flag, value in optional:
            if isinstance(value, datetime):
                flags |= flag
                parts.append(_UINT64.pack(_seconds(value)))
            elif value:
                flags |= flag
                parts.append(_short_string(value))
        properties = b"".join(parts)
        return b"".join(
            (
                _HEADER_START.pack(
                    _FRAME_HEADER,
                    channel_number,
                    _HEADER_FIXED + len(properties),
                    Basic.frame_id,
                    0,  # weight
                    body_size,
                    flags,
                ),
                properties,
                _FRAME_END,
            )
        )


CONTENT_TYPE = "application/json"
_FRAME_HEADER, _FRAME_BODY = 2, 3
_FRAME_END = b"\xce"
_FRAME_START = struct.Struct(">BHI")  # type, channel, payload size
_HEADER_START = struct.Struct(">BHIHHQH")  # + class, weight, body size, property flags
_HEADER_FIXED = struct.calcsize(">HHQH")
_UINT64 = struct.Struct(">Q")
_FLAGS = Basic.Properties.flags
_CORRELATION_ID = _FLAGS["correlation_id"]
_MESSAGE_ID = _FLAGS["message_id"]
_TIMESTAMP = _FLAGS["timestamp"]
_TYPE = _FLAGS["message_type"]
_APP_ID = _FLAGS["app_id"]
_FIXED_FLAGS = (
    _FLAGS["content_type"] | _FLAGS["headers"] | _FLAGS["delivery_mode"] | _FLAGS["priority"]
)
_CONTENT_TYPE_FIELD = bytes((len(CONTENT_TYPE),)) + CONTENT_TYPE.encode()
_PERSISTENT_PRIORITY_0 = bytes((PERSISTENT, 0))


def _short_string(value: str) -> bytes:
    raw = value.encode()
    if len(raw) > 255:
        raise ValueError(f"an AMQP short string holds at most 255 bytes, not {len(raw)}")
    return bytes((len(raw),)) + raw


def _seconds(value: datetime) -> int:
    """Whole seconds since the epoch; a naive time is UTC (as pamqp takes it)."""
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp())


@functools.lru_cache(maxsize=1024)
def publish_frame(channel_number: int, exchange: str, routing_key: str, mandatory: bool) -> bytes:
    """The `basic.publish` method frame, the same for every message it announces."""
    method = Basic.Publish(exchange=exchange, routing_key=routing_key, mandatory=mandatory)
    return pamqp.frame.marshal(method, channel_number)


def body_frames(channel_number: int, body: bytes, max_size: int) -> list[bytes]:
    """`body` in content body frames of at most `max_size` bytes (none for no body)."""
    return [
        b"".join((_FRAME_START.pack(_FRAME_BODY, channel_number, len(piece)), piece, _FRAME_END))
        for piece in (body[i : i + max_size] for i in range(0, len(body), max_size))
    ]


def message_frames(
    channel_number: int,
    exchange: str,
    routing_key: str,
    mandatory: bool,
    body: bytes,
    properties: Basic.Properties | JsonProperties,
    max_size: int,
) -> bytes:
    """Every frame of one published message, as pamqp marshals them."""
    if isinstance(properties, JsonProperties):
        header = properties.header_frame(channel_number, len(body))
    else:
        header = pamqp.frame.marshal(
            ContentHeader(properties=properties, body_size=len(body)), channel_number
        )
    return b"".join(
        (
            publish_frame(channel_number, exchange, routing_key, mandatory),
            header,
            *body_frames(channel_number, body, max_size),
        )
    )


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to publish: its routing key, body and AMQP properties."""

    routing_key: str
    body: bytes
    properties: Basic.Properties | JsonProperties


def event_message(event: Event, headers: dict[str, Any] | None = None) -> aio_pika.Message:
    """The AMQP message for `event`: persistent JSON, ids and type in the properties."""
    return aio_pika.Message(
        body=event.to_json(),
        headers=dict(headers or {}),
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=event.event_id,
        correlation_id=event.correlation_id,
        type=event.routing_key,
        timestamp=event.occurred_at,
        app_id=event.producer,
    )


async def _wait_until_open(channel: aio_pika.abc.AbstractChannel) -> None:
    while channel.is_closed:
        if not isinstance(channel, aio_pika.abc.AbstractRobustChannel):
            raise ChannelInvalidStateError("channel is closed")
        await channel.ready()
        if channel.is_closed:
            await asyncio.sleep(_REOPEN_POLL_SECONDS)


async def _write(
    raw: aiormq.abc.AbstractChannel,
    exchange_name: str,
    messages: Sequence[Outgoing],
    mandatory: bool,
) -> list[asyncio.Future[Any]]:
    """Write every message in one frame sequence; each one's confirmation future.

    As `aiormq.Channel.basic_publish` does for one message: under the channel's lock,
    the next delivery tags and their futures (and, for a mandatory message, the
    message id a `basic.return` is matched by); the tags are given back if the write
    never happened.
    """
    channel: Any = raw  # aiormq.Channel: its bookkeeping is not in the abstract class
    futures: list[asyncio.Future[Any]] = []
    frames: list[bytes] = []
    number: int = channel.number
    max_size: int = channel.max_content_size
    async with channel.lock:
        first = channel.delivery_tag + 1
        try:
            for tag, message in enumerate(messages, start=first):
                future = channel.create_future()
                channel.confirmations[tag] = future
                futures.append(future)
                message_id = message.properties.message_id
                if mandatory and message_id:
                    channel.message_id_delivery_tag[message_id] = tag
                    future.add_done_callback(_forget(channel, message_id, tag))
                frames.append(
                    message_frames(
                        number,
                        exchange_name,
                        message.routing_key,
                        mandatory,
                        message.body,
                        message.properties,
                        max_size,
                    )
                )
            channel.delivery_tag = first + len(messages) - 1
            drained = channel.create_future()
            await channel.connection.write_queue.put(
                ChannelFrame(payload=b"".join(frames), should_close=False, drain_future=drained)
            )
        except BaseException:
            # Not written: the broker never saw these tags.
            channel.delivery_tag = first - 1
            for tag, future in enumerate(futures, start=first):
                channel.confirmations.pop(tag, None)
                future.cancel()
            raise
        await drained
    return futures


def _forget(channel: Any, message_id: str, tag: int) -> Any:
    def forget(_: asyncio.Future[Any]) -> None:
        if channel.message_id_delivery_tag.get(message_id) == tag:
            del channel.message_id_delivery_tag[message_id]

    return forget


def _outcome(future: asyncio.Future[Any], where: str, timeout: float) -> PublishFailed | None:
    if not future.done():
        future.cancel()
        return PublishFailed(f"no confirm within {timeout}s ({where})")
    if future.cancelled():
        return PublishFailed(f"channel closed before the confirm ({where})")
    exc = future.exception()
    if isinstance(exc, PublishError):
        return Unroutable(f"no queue bound ({where})")
    if isinstance(exc, DeliveryError):
        return PublishFailed(f"broker refused the message ({where})")
    if exc is not None:
        return PublishFailed(f"{type(exc).__name__}: {exc} ({where})")
    if not isinstance(future.result(), Basic.Ack):
        # A channel opened with on_return_raises=False hands back the returned message.
        return Unroutable(f"no queue bound ({where})")
    return None


async def publish_all_confirmed(
    channel: aio_pika.abc.AbstractChannel,
    exchange_name: str,
    messages: Sequence[Outgoing],
    *,
    timeout: float,  # noqa: ASYNC109 - bounds the reconnect wait and the confirms together
    mandatory: bool = True,
) -> list[PublishFailed | None]:
    """Publish `messages` in order, in one write, and wait for the broker's confirms.

    One result per message, in order: None once confirmed, else the `PublishFailed`
    (`Unroutable` when a mandatory message found no queue). A robust channel that is
    reconnecting is waited for, within `timeout`, which bounds the confirms too.
    `exchange_name` "" is the default exchange (routing key = queue name).
    """
    if not channel.publisher_confirms:
        raise ValueError("publishing needs a channel opened with publisher_confirms=True")
    if not messages:
        return []
    keys = sorted({m.routing_key for m in messages})
    where = f"exchange {exchange_name or '(default)'!r}, routing key {', '.join(map(repr, keys))}"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        async with asyncio.timeout_at(deadline):
            await _wait_until_open(channel)
            raw = await channel.get_underlay_channel()
            futures = await _write(raw, exchange_name, messages, mandatory)
    except TimeoutError:
        failed = PublishFailed(f"no confirm within {timeout}s ({where})")
        return [failed] * len(messages)
    except (AMQPError, ChannelInvalidStateError, ConnectionError) as exc:
        failed = PublishFailed(f"{type(exc).__name__}: {exc} ({where})")
        return [failed] * len(messages)
    pending = [f for f in futures if not f.done()]
    if pending:
        await asyncio.wait(pending, timeout=max(0.0, deadline - loop.time()))
    return [_outcome(future, where, timeout) for future in futures]


async def publish_confirmed(
    channel: aio_pika.abc.AbstractChannel,
    exchange_name: str,
    routing_key: str,
    message: aio_pika.abc.AbstractMessage,
    *,
    timeout: float,  # noqa: ASYNC109 - bounds the reconnect wait and the confirm together
    mandatory: bool = True,
) -> None:
    """Publish `message` as mandatory and wait for the broker's confirm.

    `exchange_name` "" is the default exchange (routing key = queue name). Raises
    `Unroutable` when no queue takes the message, `PublishFailed` on a nack, a
    missing exchange, a closed channel or no confirm within `timeout` seconds.
    A robust channel that is reconnecting is waited for, within `timeout`.
    `mandatory=False` is for exchanges where no queue may be bound (the public
    notifications: an application may use webhooks only); the broker then drops
    an unroutable message and still confirms it.
    """
    outgoing = Outgoing(routing_key, message.body, message.properties)
    [failure] = await publish_all_confirmed(
        channel, exchange_name, [outgoing], timeout=timeout, mandatory=mandatory
    )
    if failure is not None:
        raise failure


class Publisher:
    """Publishes events to the topic exchange; `publish` returns once the broker confirmed.

    The channel must have publisher confirms on (aio-pika's default). Messages are
    mandatory: an event no queue is bound for raises `Unroutable` rather than
    vanishing, because every event Clearance publishes has a consumer. Use
    `Publisher.open` to get a publisher with its own channel.
    """

    def __init__(
        self,
        channel: aio_pika.abc.AbstractChannel,
        exchange_name: str,
        *,
        owns_channel: bool = False,
    ) -> None:
        if not channel.publisher_confirms:
            raise ValueError("Publisher needs a channel opened with publisher_confirms=True")
        self.channel = channel
        self.exchange_name = exchange_name
        self._owns_channel = owns_channel

    @classmethod
    async def open(
        cls, connection: aio_pika.abc.AbstractConnection, settings: Settings
    ) -> Publisher:
        """Open a confirming channel, declare the exchange (idempotent) and wrap it.

        `close()` closes that channel.
        """
        channel = connection.channel(publisher_confirms=True, on_return_raises=True)
        await channel
        try:
            await declare_exchange(channel, settings)
        except BaseException:
            await channel.close()
            raise
        return cls(channel, settings.amqp_exchange, owns_channel=True)

    async def publish(
        self,
        event: Event,
        *,
        headers: dict[str, Any] | None = None,
        timeout: float = 10.0,  # noqa: ASYNC109 - part of the publishing contract
    ) -> None:
        """Publish `event` under its routing key; raises `PublishFailed` unless confirmed."""
        await publish_confirmed(
            self.channel,
            self.exchange_name,
            event.routing_key,
            event_message(event, headers),
            timeout=timeout,
        )

    async def close(self) -> None:
        """Close the channel if this publisher opened it."""
        if self._owns_channel and not self.channel.is_closed:
            await self.channel.close()
