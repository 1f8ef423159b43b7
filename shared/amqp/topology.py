"""Connection and topology: the events exchange, consumer queues, delay queues and DLQs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aio_pika
import aio_pika.abc
from aio_pika.exceptions import CONNECTION_EXCEPTIONS
from yarl import URL

from shared.settings import Settings

# How many times the broker may hand the same copy of a message back (worker
# crashed, connection dropped, drain timed out) before it is dead-lettered.
# Handler failures do not count: they become new copies in a delay queue.
DEFAULT_DELIVERY_LIMIT = 10

QUORUM: dict[str, Any] = {"x-queue-type": "quorum"}


class BrokerUnavailable(ConnectionError):
    """RabbitMQ could not be reached or refused the connection."""


@dataclass(frozen=True)
class QueueSpec:
    """One consumer's durable quorum queue and the routing keys bound to it.

    `delivery_limit` caps how often the broker redelivers one copy that never got
    an outcome (a handler that kills the process); see `DEFAULT_DELIVERY_LIMIT`.
    """

    name: str
    bindings: tuple[str, ...]
    delivery_limit: int = DEFAULT_DELIVERY_LIMIT

    def __post_init__(self) -> None:
        if not self.name or self.name.startswith("amq."):
            raise ValueError(f"invalid queue name {self.name!r}")
        if self.delivery_limit < 1:
            raise ValueError("delivery_limit must be at least 1")


def dlq_name(queue: str) -> str:
    """Name of the dead-letter queue that belongs to `queue`."""
    return f"{queue}.dlq"


def retry_queue_name(queue: str, delay_ms: int) -> str:
    """Name of the delay queue that returns messages to `queue` after `delay_ms`."""
    return f"{queue}.retry.{delay_ms}"


def retry_delay_ms(settings: Settings, failed_attempt: int) -> int:
    """Back-off after attempt number `failed_attempt` (1-based); the last delay repeats."""
    delays = settings.retry_delays_ms
    if not delays:
        raise ValueError("retry_delays_ms must name at least one delay")
    return delays[min(failed_attempt, len(delays)) - 1]


def _redacted(url: str) -> str:
    parsed = URL(url)
    return str(parsed.with_password("***")) if parsed.password else str(parsed)


async def connect(
    settings: Settings,
    *,
    name: str | None = None,
    timeout: float = 10.0,  # noqa: ASYNC109 - first connection only
    # Consumers are back within about this long of the broker's return (an attempt
    # against a broker that is still away is one refused TCP connect).
    reconnect_interval: float = 0.5,
    url: str | None = None,
) -> aio_pika.abc.AbstractRobustConnection:
    """Open a robust connection to `url` (default `settings.amqp_url`).

    The first attempt must succeed within `timeout`, otherwise `BrokerUnavailable`
    is raised (the password is never part of the message). Once connected, the
    connection reconnects every `reconnect_interval` seconds after a loss and its
    robust channels re-declare their queues, bindings and consumers. `name` shows
    up in the broker's connection list.
    """
    url = url or settings.amqp_url
    connection = aio_pika.RobustConnection(
        URL(url),
        reconnect_interval=reconnect_interval,
        client_properties={"connection_name": name or "clearance"},
    )
    try:
        await connection.connect(timeout=timeout)
    except (TimeoutError, *CONNECTION_EXCEPTIONS) as exc:
        await connection.close()
        raise BrokerUnavailable(
            f"RabbitMQ at {_redacted(url)} is unavailable: {type(exc).__name__}: {exc}"
        ) from exc
    return connection


async def declare_exchange(
    channel: aio_pika.abc.AbstractChannel, settings: Settings
) -> aio_pika.abc.AbstractExchange:
    """Declare the durable topic exchange every event is published to (idempotent)."""
    return await channel.declare_exchange(
        settings.amqp_exchange, aio_pika.ExchangeType.TOPIC, durable=True
    )


async def declare_topology(
    channel: aio_pika.abc.AbstractChannel,
    settings: Settings,
    queues: Sequence[QueueSpec],
) -> dict[str, aio_pika.abc.AbstractQueue]:
    """Declare the exchange and, per spec, its queue, DLQ, delay queues and bindings.

    Idempotent: declaring the same topology again is a no-op. Changing a queue's
    arguments (e.g. `delivery_limit`) on an existing queue is refused by the
    broker (PRECONDITION_FAILED); that needs a policy or a new queue.
    Returns the consumer queues by name. On a robust channel everything
    declared here is declared again after a reconnect.
    """
    exchange = await declare_exchange(channel, settings)
    declared: dict[str, aio_pika.abc.AbstractQueue] = {}
    for spec in queues:
        await channel.declare_queue(dlq_name(spec.name), durable=True, arguments=dict(QUORUM))
        queue = await channel.declare_queue(
            spec.name,
            durable=True,
            arguments={
                **QUORUM,
                "x-delivery-limit": spec.delivery_limit,
                # Only the broker's own delivery limit dead-letters from here;
                # at-least-once keeps the message until the DLQ has it.
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": dlq_name(spec.name),
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
            },
        )
        for delay in sorted(set(settings.retry_delays_ms)):
            await channel.declare_queue(
                retry_queue_name(spec.name, delay),
                durable=True,
                arguments={
                    **QUORUM,
                    "x-message-ttl": delay,
                    # Expired copies go back to this queue only, never to the
                    # topic exchange: other consumers must not see them again.
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": spec.name,
                    "x-dead-letter-strategy": "at-least-once",
                    "x-overflow": "reject-publish",
                },
            )
        for routing_key in spec.bindings:
            await queue.bind(exchange, routing_key)
        declared[spec.name] = queue
    return declared
