"""Publishing with publisher confirms: a publish returns only once the broker has the message."""

from __future__ import annotations

import asyncio
from typing import Any

import aio_pika
import aio_pika.abc
import aiormq
from aio_pika.exceptions import AMQPError, ChannelInvalidStateError, DeliveryError, PublishError

from shared.amqp.topology import declare_exchange
from shared.events import Event
from shared.settings import Settings

# While a robust channel reopens after a channel-level error there is a short
# window in which it reports closed but has not started restoring yet.
_REOPEN_POLL_SECONDS = 0.02


class PublishFailed(Exception):
    """The broker did not confirm the message.

    After a timeout or a lost connection the message may still have been stored:
    publishing it again can create a duplicate, which consumers drop by event id.
    """


class Unroutable(PublishFailed):
    """No queue is bound for the routing key, so the broker would have dropped the message."""


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
    if not channel.publisher_confirms:
        raise ValueError("publishing needs a channel opened with publisher_confirms=True")
    where = f"exchange {exchange_name or '(default)'!r}, routing key {routing_key!r}"
    try:
        async with asyncio.timeout(timeout):
            await _wait_until_open(channel)
            exchange = (
                channel.default_exchange
                if exchange_name == ""
                else await channel.get_exchange(exchange_name, ensure=False)
            )
            result = await exchange.publish(message, routing_key, mandatory=mandatory)
    except TimeoutError as exc:
        raise PublishFailed(f"no confirm within {timeout}s ({where})") from exc
    except PublishError as exc:
        raise Unroutable(f"no queue bound ({where})") from exc
    except DeliveryError as exc:
        raise PublishFailed(f"broker refused the message ({where})") from exc
    except (AMQPError, ChannelInvalidStateError, ConnectionError) as exc:
        raise PublishFailed(f"{type(exc).__name__}: {exc} ({where})") from exc
    # A channel opened with on_return_raises=False hands back the returned message.
    if not isinstance(result, aiormq.spec.Basic.Ack):
        raise Unroutable(f"no queue bound ({where})")


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
