"""The outbox under a broker outage: uploads keep changing status while the relay's
link to RabbitMQ is cut; once it is back, every change is published exactly once, in
each upload's order, and the outbox is empty.

The gateway here has a database of its own (no other replica drains its outbox) and
reaches the broker for its outbox relay only through a `LinkProxy`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable

import aio_pika
import asyncpg
import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer
from yarl import URL

from services.gateway.announcer import create_announcer_app
from services.gateway.app import create_app
from services.gateway.appkeys import METRICS, POOL, SETTINGS
from services.gateway.notifications import event_id
from services.gateway.store import NOTIFY_CHANNEL
from shared.db import migrate
from shared.settings import Settings
from tests.conftest import TEST_DB
from tests.proxy import LinkProxy
from tests.support import eventually

pytestmark = pytest.mark.integration

OUTBOX_DB = f"{TEST_DB}_outbox"
DECLARED = {"filename": "o.jpg", "content_type": "image/jpeg", "size": 100}


@pytest.fixture(scope="module")
async def broker_link(settings: Settings) -> AsyncIterator[LinkProxy]:
    url = URL(settings.amqp_url)
    proxy = LinkProxy(url.host or "127.0.0.1", url.port or 5672)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


@contextlib.asynccontextmanager
async def gateway_of_its_own(
    settings: Settings, database: str, *, announcers: bool = True, **overrides: object
) -> AsyncIterator[TestServer]:
    """A gateway with a fresh database no other replica drains, with its outbox relay
    (or, `announcers=False`, with none: an announcer process has it)."""
    base = settings.database_url.rsplit("/", 1)[0]
    admin = await asyncpg.connect(f"{base}/postgres")
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{database}"')
    finally:
        await admin.close()
    await migrate(f"{base}/{database}")
    app = create_app(
        settings.model_copy(
            update={
                "database_url": f"{base}/{database}",
                "webhooks": (),
                "gateway_announcers": announcers,
                **overrides,
            }
        ),
        with_broker=False,  # no recorder: it would take the suite's pipeline events
        with_reconciler=False,
        with_outbox_relay=announcers,
    )
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture(scope="module")
async def outbox_gateway(
    settings: Settings, base_settings: Settings, broker_link: LinkProxy, stack_up: None
) -> AsyncIterator[TestServer]:
    amqp = URL(settings.amqp_url).with_port(broker_link.proxy_port)
    async with gateway_of_its_own(
        settings,
        OUTBOX_DB,
        notifications_amqp_url=str(amqp),
        outbox_poll_seconds=0.5,
        outbox_publish_timeout_seconds=2.0,
    ) as server:
        yield server


class Stream:
    """A queue of our own bound to every `upload.*` event: what an application hears."""

    def __init__(self) -> None:
        self.messages: list[aio_pika.abc.AbstractIncomingMessage] = []

    async def on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        self.messages.append(message)
        await message.ack()

    def of(self, uploads: set[str]) -> list[aio_pika.abc.AbstractIncomingMessage]:
        return [m for m in self.messages if (m.headers or {}).get("upload_id") in uploads]


@pytest.fixture
async def stream(settings: Settings) -> AsyncIterator[Stream]:
    connection = await aio_pika.connect(settings.amqp_url)  # directly, not via the proxy
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            settings.notifications_exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(exchange, "upload.*")
        received = Stream()
        await queue.consume(received.on_message)
        yield received


async def create(http: ClientSession, base: str, auth: dict[str, str]) -> str:
    async with http.post(f"{base}/v1/uploads", json=DECLARED, headers=auth) as resp:
        assert resp.status == 201, await resp.text()
        upload_id: str = (await resp.json())["id"]
    return upload_id


async def abort(http: ClientSession, base: str, auth: dict[str, str], upload_id: str) -> None:
    async with http.delete(f"{base}/v1/uploads/{upload_id}", headers=auth) as resp:
        assert resp.status == 204, await resp.text()


async def test_a_broker_outage_delays_the_stream_but_loses_or_repeats_nothing(
    outbox_gateway: TestServer,
    broker_link: LinkProxy,
    stream: Stream,
    http: ClientSession,
    token: Callable[..., str],
) -> None:
    base = str(outbox_gateway.make_url("")).rstrip("/")
    app: web.Application = outbox_gateway.app
    pool = app[POOL]
    auth = {"Authorization": f"Bearer {token()}"}
    ids: list[str] = []

    async def created() -> str:
        ids.append(await create(http, base, auth))
        return ids[-1]

    async def backlog() -> int:
        count: int = await pool.fetchval("SELECT count(*) FROM outbox")
        return count

    # The link works: the first uploads are announced at once.
    before = [await created() for _ in range(3)]

    async def announced() -> bool:
        return len(stream.of(set(before))) == 3

    await eventually(announced, timeout=10)

    await broker_link.cut()
    for upload_id in before:
        await abort(http, base, auth, upload_id)
    during = [await created() for _ in range(20)]
    for upload_id in during[::2]:
        await abort(http, base, auth, upload_id)
    written = 3 + 20 + 10
    # Every change committed; every event waits in the outbox.
    assert await backlog() == written
    assert len(stream.of(set(ids))) == 3
    published = app[METRICS].registry.get_sample_value("clearance_outbox_published_total")

    await broker_link.restore()
    started = time.monotonic()

    async def drained() -> bool:
        return await backlog() == 0 and len(stream.of(set(ids))) >= 3 + written

    await eventually(drained, timeout=30, what=lambda: f"{len(stream.of(set(ids)))} events")
    drain_seconds = time.monotonic() - started

    # Exactly once per change: the ids are the timeline's, each seen once.
    rows = await pool.fetch(
        "SELECT upload_id, seq, status FROM upload_events WHERE upload_id = ANY($1::uuid[])"
        " ORDER BY seq",
        [uuid.UUID(i) for i in ids],
    )
    expected = {event_id(r["upload_id"], r["seq"]) for r in rows}
    got = [m.message_id for m in stream.of(set(ids))]
    assert len(got) == len(set(got)) == len(rows), "a change was published twice or not at all"
    assert set(got) == expected
    # In each upload's order.
    order: dict[str, list[str]] = defaultdict(list)
    for message in stream.of(set(ids)):
        order[message.headers["upload_id"]].append(str(message.type))  # type: ignore[index]
    for upload_id in ids:
        aborted = upload_id in before or upload_id in during[::2]
        assert order[upload_id] == ["upload.pending"] + (["upload.aborted"] * aborted)
    assert app[METRICS].registry.get_sample_value("clearance_outbox_published_total") == (
        (published or 0) + written
    )
    print(f"outbox drained {written} events in {drain_seconds:.2f} s after the link returned")


async def test_a_create_sends_no_notify_and_its_own_relay_announces_it_at_once(
    settings: Settings,
    stack_up: None,
    stream: Stream,
    http: ClientSession,
    token: Callable[..., str],
) -> None:
    """A create's event is relayed by the gateway that wrote it, woken in-process: with
    polling out of the picture (a minute apart) it still reaches the stream at once. And
    the create NOTIFYs nobody (a NOTIFY serialises commits; no stream can be waiting on
    an upload that did not exist): the first notification of the upload is its abort's."""
    async with gateway_of_its_own(
        settings, f"{OUTBOX_DB}_wake", outbox_poll_seconds=60.0
    ) as server:
        pool = server.app[POOL]
        notified: asyncio.Queue[str] = asyncio.Queue()
        listening = await asyncpg.connect(
            settings.database_url.rsplit("/", 1)[0] + f"/{OUTBOX_DB}_wake"
        )
        await listening.add_listener(NOTIFY_CHANNEL, lambda *args: notified.put_nowait(args[3]))
        try:
            base = str(server.make_url("")).rstrip("/")
            auth = {"Authorization": f"Bearer {token()}"}
            upload_id = await create(http, base, auth)

            async def announced() -> bool:
                return len(stream.of({upload_id})) == 1

            await eventually(announced, timeout=5, what="the create's event on the stream")
            await abort(http, base, auth, upload_id)
            first = await asyncio.wait_for(notified.get(), timeout=10)
            aborted_seq = await pool.fetchval(
                "SELECT max(seq) FROM upload_events WHERE upload_id = $1", uuid.UUID(upload_id)
            )
            assert first == f"{upload_id}:{aborted_seq}", "the create sent a NOTIFY"
        finally:
            await listening.close()


async def test_an_announcer_of_its_own_relays_the_gateways_creates_and_moves(
    settings: Settings,
    stack_up: None,
    stream: Stream,
    http: ClientSession,
    token: Callable[..., str],
) -> None:
    """`CLEARANCE_GATEWAY_ANNOUNCERS=false`: the gateway relays nothing itself; the
    `clearance announcer` app does, woken by the gateway's create wake-up (polling a
    minute apart is out of the picture) and by the abort's NOTIFY."""
    database = f"{OUTBOX_DB}_announcer"
    async with gateway_of_its_own(
        settings, database, announcers=False, outbox_poll_seconds=60.0
    ) as gateway:
        assert (
            gateway.app[METRICS].registry.get_sample_value("clearance_outbox_published_total")
            is None
        ), "the gateway runs an outbox relay of its own"
        own = settings.model_copy(
            update={
                "database_url": gateway.app[SETTINGS].database_url,
                "webhooks": (),
                "outbox_poll_seconds": 60.0,
            }
        )
        announcer = TestServer(create_announcer_app(own), host="127.0.0.1")
        await announcer.start_server()
        try:
            base = str(gateway.make_url("")).rstrip("/")
            auth = {"Authorization": f"Bearer {token()}"}
            upload_id = await create(http, base, auth)

            async def announced(n: int) -> Callable[[], Awaitable[bool]]:
                async def check() -> bool:
                    return len(stream.of({upload_id})) == n

                return check

            await eventually(await announced(1), timeout=5, what="the create's event")
            await abort(http, base, auth, upload_id)
            await eventually(await announced(2), timeout=5, what="the abort's event")
            assert [m.type for m in stream.of({upload_id})] == ["upload.pending", "upload.aborted"]
            published = announcer.app[METRICS].registry.get_sample_value(
                "clearance_outbox_published_total"
            )
            assert published == 2
        finally:
            await announcer.close()
