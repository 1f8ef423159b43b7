"""The pipeline's queues: who consumes which events.

Every service declares all of them at start (idempotently), so no event is ever
published before its queue exists. Names take `settings.queue_prefix`, so a test
run (or a second deployment on one broker) never consumes another's messages.
"""

from __future__ import annotations

from collections.abc import Sequence

import aio_pika

from shared.amqp.topology import QueueSpec, dlq_name, retry_queue_name
from shared.settings import Settings


def recorder_queue(settings: Settings) -> QueueSpec:
    """The gateway's status recorder: every event that moves an upload's status."""
    return QueueSpec(
        f"{settings.queue_prefix}.recorder",
        ("object.created", "scan.*", "processing.*", "upload.failed"),
    )


def scanner_queue(settings: Settings) -> QueueSpec:
    """The scanner: objects that landed."""
    return QueueSpec(f"{settings.queue_prefix}.scanner", ("object.created",))


def processor_queue(settings: Settings) -> QueueSpec:
    """The processor: objects the scanner found clean."""
    return QueueSpec(f"{settings.queue_prefix}.processor", ("scan.clean",))


def all_queues(settings: Settings) -> tuple[QueueSpec, ...]:
    return (recorder_queue(settings), scanner_queue(settings), processor_queue(settings))


async def delete_topology(
    settings: Settings, *, amqp_url: str | None = None, exchanges: Sequence[str] = ()
) -> None:
    """Delete the pipeline's queues of `settings` (with their DLQs and retry queues) and
    the `exchanges` named: what a test run or a benchmark declared, once it is done.

    `amqp_url` reaches the broker when `settings.amqp_url` may not (a cut proxy).
    """
    connection = await aio_pika.connect(amqp_url or settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        for spec in all_queues(settings):
            names = [spec.name, dlq_name(spec.name)]
            names += [retry_queue_name(spec.name, ms) for ms in set(settings.retry_delays_ms)]
            for name in names:
                await channel.queue_delete(name)
        for exchange in exchanges:
            await channel.exchange_delete(exchange)
