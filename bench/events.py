"""Public events: webhook and stream latency from commit to receiver, and outbox drain rate.

Run with the local stack up (`clearance stack up --infra-only`):

    .venv/bin/python bench/events.py [--events 200] [--backlog 5000]

It starts a gateway of its own (own database, own exchange; no pipeline) with one
webhook endpoint: a local aiohttp receiver. Latency: N uploads are created one after
another (each commits an `upload.pending` event) and for each the time from its
commit (`occurred_at`) to its arrival at the receiver, and on a queue bound to the
stream, is measured. Drain: a backlog of M events (5 per upload) is written while no
relay runs, then one relay drains it (publishing to one bound queue) and the time
until the outbox is empty gives events/s — printed against the baseline of plain
confirmed publishing with aio-pika (no database) in the same run, its ceiling. Goals
on this 2-core machine: webhook p50 < 50 ms, p99 < 250 ms; drain ≥ 0.8 × baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from datetime import datetime

import aio_pika
import orjson
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from services.gateway.app import create_app
from services.gateway.auth import mint_token
from services.gateway.outbox import OutboxMetrics, OutboxRelay
from shared.amqp.topology import connect
from shared.db import create_pool, recreate_database
from shared.settings import Settings, WebhookEndpoint

DB = "clearance_bench_events"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def fresh_database(settings: Settings) -> str:
    dsn = f"{settings.database_url.rsplit('/', 1)[0]}/{DB}"
    await recreate_database(dsn)
    return dsn


class Receiver:
    def __init__(self, expected: int) -> None:
        self.arrivals: dict[str, float] = {}  # event id → arrival (unix seconds)
        self.expected = expected
        self.all_in = asyncio.Event()
        app = web.Application()
        app.router.add_post("/hooks", self.handle)
        self.server = TestServer(app, host="127.0.0.1")

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.arrivals.setdefault(request.headers["webhook-id"], time.time())
        if len(self.arrivals) >= self.expected:
            self.all_in.set()
        return web.Response(status=204)


async def latency(settings: Settings, events: int) -> None:
    receiver = Receiver(events)
    await receiver.server.start_server()
    hooked = settings.model_copy(
        update={
            "webhooks": (
                WebhookEndpoint(url=str(receiver.server.make_url("/hooks")), secret=SECRET),
            )
        }
    )
    streamed: dict[str, float] = {}
    occurred: dict[str, float] = {}
    stream_in = asyncio.Event()
    connection = await aio_pika.connect(settings.amqp_url)
    channel = await connection.channel()
    exchange = await channel.declare_exchange(
        settings.notifications_exchange, aio_pika.ExchangeType.TOPIC, durable=True
    )
    queue = await channel.declare_queue(exclusive=True)
    await queue.bind(exchange, "upload.*")

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        streamed.setdefault(str(message.message_id), time.time())
        event = orjson.loads(message.body)
        occurred[event["event_id"]] = datetime.fromisoformat(event["occurred_at"]).timestamp()
        await message.ack()
        if len(streamed) >= events:
            stream_in.set()

    await queue.consume(on_message)
    server = TestServer(
        create_app(hooked, with_broker=False, with_reconciler=False, with_outbox_relay=True),
        host="127.0.0.1",
    )
    await server.start_server()
    base = str(server.make_url("")).rstrip("/")
    auth = {"Authorization": f"Bearer {mint_token(settings, 'bench')}"}
    body = {"filename": "b.jpg", "content_type": "image/jpeg", "size": 100}
    async with ClientSession() as http:
        for _ in range(events):
            async with http.post(f"{base}/v1/uploads", json=body, headers=auth) as resp:
                assert resp.status == 201
            await asyncio.sleep(0.02)  # a steady 50/s or less, not a backlog
        async with asyncio.timeout(30):
            await receiver.all_in.wait()
            await stream_in.wait()
    await server.close()
    await receiver.server.close()
    await connection.close()
    hook = [(receiver.arrivals[i] - occurred[i]) * 1000 for i in receiver.arrivals if i in occurred]
    amqp = [(streamed[i] - occurred[i]) * 1000 for i in streamed if i in occurred]
    for name, values in (("webhook", hook), ("stream ", amqp)):
        print(
            f"{name} commit → receiver over {len(values)} events:"
            f" p50 {percentile(values, 50):.1f} ms,"
            f" p90 {percentile(values, 90):.1f} ms, p99 {percentile(values, 99):.1f} ms,"
            f" max {max(values):.1f} ms"
        )


async def drain(settings: Settings, backlog: int) -> float:
    pool = await create_pool(settings.database_url)
    body = orjson.dumps({"pad": "x" * 1200}).decode()  # about an event's size
    uploads = [uuid.uuid4() for _ in range(backlog // 5)]
    rows = [(uuid.uuid4().hex, u, f"upload.s{n}", "bench", body) for n in range(5) for u in uploads]
    await pool.executemany(
        "INSERT INTO outbox (event_id, upload_id, routing_key, correlation_id, body)"
        " VALUES ($1, $2, $3, $4, $5)",
        rows,
    )
    connection = await connect(settings, name="clearance-bench-outbox")
    channel = await connection.channel()
    exchange = await channel.declare_exchange(
        settings.notifications_exchange, aio_pika.ExchangeType.TOPIC, durable=True
    )
    queue = await channel.declare_queue(exclusive=True)  # one application's queue
    await queue.bind(exchange, "upload.*")
    relay = OutboxRelay(settings, pool, connection, OutboxMetrics(CollectorRegistry()))
    await relay.open()
    started = time.perf_counter()
    published = await relay.drain()
    seconds = time.perf_counter() - started
    await relay.close()
    count = 0
    while await queue.get(no_ack=True, fail=False, timeout=5) is not None:
        count += 1
    await connection.close()
    await pool.close()
    print(
        f"outbox drain: {published} events in {seconds:.2f} s = {published / seconds:,.0f}"
        f" events/s (the queue got {count}; batch {settings.outbox_batch_size}, 5 per upload)"
    )
    return published / seconds


async def baseline(settings: Settings, count: int) -> float:
    """Events/s of confirmed publishing alone: batches of 500 gathered, as the relay does
    (routed nowhere: the drain's queue is gone by now)."""
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.declare_exchange(
            settings.notifications_exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        body = orjson.dumps({"pad": "x" * 1200})
        started = time.perf_counter()
        for first in range(0, count, 500):
            await asyncio.gather(
                *(
                    exchange.publish(
                        aio_pika.Message(body, message_id=str(n)), "upload.base", mandatory=False
                    )
                    for n in range(first, min(count, first + 500))
                )
            )
        return count / (time.perf_counter() - started)


async def main(events: int, backlog: int) -> None:
    settings = Settings(
        environment="test",
        amqp_exchange="clearance_bench.events",
        notifications_exchange="clearance_bench.notifications",
        queue_prefix="clearance_bench",
        webhook_poll_seconds=1.0,
        create_burst=100_000,  # one owner creates every upload here
        max_pending_uploads=100_000,
    )
    settings = settings.model_copy(update={"database_url": await fresh_database(settings)})
    await latency(settings, events)
    rate = await drain(settings, backlog)
    ceiling = await baseline(settings, backlog)
    print(
        f"baseline: aio-pika confirmed publishing alone {ceiling:,.0f} events/s;"
        f" the relay drains at {rate / ceiling:.2f}× that"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--backlog", type=int, default=5000)
    args = parser.parse_args()
    asyncio.run(main(args.events, args.backlog))
