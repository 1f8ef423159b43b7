"""An application's consumer of Clearance's public event stream (aio-pika).

It owns a durable queue bound to the events it wants (`upload.ready` and
`upload.infected`) on the `clearance.notifications` topic exchange, so events that
arrive while it is stopped wait for it. Each event is handled once: duplicates (the
stream is at-least-once) are dropped by `event_id`, and a message is acked only after
it was handled. Run it with

    python examples/consumer.py --amqp-url amqp://guest:guest@127.0.0.1:5672/ \\
        --exchange clearance.notifications --queue myapp.uploads

It prints one JSON line per event handled (and `ready` once it is consuming).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from typing import Any

import aio_pika

WANTED = ("upload.ready", "upload.infected")


def handle(event: dict[str, Any]) -> None:
    """The application's work; here, a line on stdout."""
    print(
        json.dumps(
            {
                "type": event["type"],
                "event_id": event["event_id"],
                "upload_id": event["upload_id"],
                "metadata": event["metadata"],
                "reason": event["reason"],
            }
        ),
        flush=True,
    )


async def consume(amqp_url: str, exchange_name: str, queue_name: str, limit: int | None) -> None:
    connection = await aio_pika.connect_robust(amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=16)
        exchange = await channel.declare_exchange(
            exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(
            queue_name, durable=True, arguments={"x-queue-type": "quorum"}
        )
        for routing_key in WANTED:
            await queue.bind(exchange, routing_key)

        seen: set[str] = set()  # a real application keeps these in its database
        handled = 0
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, done.set)

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal handled
            async with message.process(requeue=True):  # ack after handling; requeue on error
                event = json.loads(message.body)
                if event["event_id"] in seen:
                    return
                handle(event)
                seen.add(event["event_id"])
                handled += 1
                if limit is not None and handled >= limit:
                    done.set()

        tag = await queue.consume(on_message)
        print("ready", flush=True)
        await done.wait()
        await queue.cancel(tag)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--exchange", default="clearance.notifications")
    parser.add_argument("--queue", default="myapp.uploads")
    parser.add_argument("--limit", type=int, default=None, help="stop after this many events")
    args = parser.parse_args(argv)
    asyncio.run(consume(args.amqp_url, args.exchange, args.queue, args.limit))
    return 0


if __name__ == "__main__":
    sys.exit(main())
