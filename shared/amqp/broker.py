"""One way to open the broker: connection, topology, confirming publisher.

Every Clearance process that talks to RabbitMQ (gateway, relay, workers) starts
the same way: connect robustly, declare every queue its events may go to (so no
publish is ever unroutable), open a confirming publisher; and it closes them in
reverse order.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aio_pika.abc

from shared.amqp.publisher import Publisher
from shared.amqp.topology import QueueSpec, connect, declare_topology
from shared.settings import Settings


@dataclass(frozen=True, slots=True)
class Broker:
    """An open broker link: the robust connection and a confirming publisher on it."""

    connection: aio_pika.abc.AbstractRobustConnection
    publisher: Publisher

    @property
    def connected(self) -> bool:
        return not self.connection.is_closed and self.connection.connected.is_set()


@asynccontextmanager
async def open_broker(
    settings: Settings, name: str, queues: Sequence[QueueSpec]
) -> AsyncIterator[Broker]:
    """Connect as `clearance-<name>`, declare `queues`, open a publisher; close on exit."""
    connection = await connect(settings, name=f"clearance-{name}")
    try:
        channel = await connection.channel()
        await declare_topology(channel, settings, queues)
        await channel.close()
        publisher = await Publisher.open(connection, settings)
        try:
            yield Broker(connection, publisher)
        finally:
            await publisher.close()
    finally:
        await connection.close()
