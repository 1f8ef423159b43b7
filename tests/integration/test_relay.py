"""The relay against the real RabbitMQ and SeaweedFS.

The relay under test runs in-process on a free port, with an exchange and
queues of its own. The running SeaweedFS posts its webhooks to the configured
relay port, never to this one: for the relay under test every object the tests
PUT is an event the webhook lost, which is what catch-up is for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aio_pika
import aio_pika.abc
import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer
from yarl import URL

from services.relay.app import CATCHUP, FORWARDER, create_app
from services.relay.catchup import CURSOR_FILE, SECOND_NS, CatchUp, CatchUpError
from services.relay.forwarding import Forwarder
from services.relay.main import serve
from services.relay.metrics import RelayMetrics
from shared.amqp.topology import dlq_name, retry_queue_name
from shared.events import ObjectCreated, parse_event
from shared.keys import object_key
from shared.pipeline import all_queues
from shared.settings import Settings
from tests.proxy import LinkProxy
from tests.support import eventually

pytestmark = pytest.mark.integration

WAIT = 15.0
WINDOW_S = 120.0  # first-start catch-up window: enough for the test, little replay


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Tap:
    """A temporary queue bound to the relay's exchange for `object.created`."""

    def __init__(self, queue: aio_pika.abc.AbstractQueue) -> None:
        self.queue = queue
        self.seen: dict[str, ObjectCreated] = {}

    async def get_now(self) -> ObjectCreated | None:
        message = await self.queue.get(no_ack=True, fail=False)
        if message is None:
            return None
        event = parse_event(message.body)
        assert isinstance(event, ObjectCreated)
        self.seen[event.event_id] = event
        return event

    async def wait_for(self, predicate: Callable[[ObjectCreated], bool]) -> ObjectCreated:
        async def seen() -> bool:
            await self.get_now()
            return any(predicate(e) for e in self.seen.values())

        await eventually(seen, timeout=WAIT, what="the expected object.created")
        return next(e for e in self.seen.values() if predicate(e))


@pytest.fixture(scope="module")
def relay_settings(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    run = uuid.uuid4().hex[:10]
    return base_settings.model_copy(
        update={
            "amqp_exchange": f"clearance.test.relay.{run}",
            "queue_prefix": f"clearance.test.relay.{run}",
            "state_dir": tmp_path_factory.mktemp("relay-state"),
            "relay_catchup_window_seconds": WINDOW_S,
        }
    )


@pytest.fixture(scope="module")
async def admin(relay_settings: Settings) -> AsyncIterator[aio_pika.abc.AbstractRobustConnection]:
    connection = await aio_pika.connect_robust(relay_settings.amqp_url)
    try:
        yield connection
    finally:
        # Everything the relays under test declared carries this run's names.
        async with connection.channel() as channel:
            for spec in all_queues(relay_settings):
                names = [spec.name, dlq_name(spec.name)]
                names += [retry_queue_name(spec.name, d) for d in relay_settings.retry_delays_ms]
                for name in names:
                    await channel.queue_delete(name)
            await channel.exchange_delete(relay_settings.amqp_exchange)
        await connection.close()


async def start_relay(settings: Settings) -> TestServer:
    server = TestServer(create_app(settings, periodic_catch_up=False), host="127.0.0.1")
    await server.start_server()
    return server


@pytest.fixture(scope="module")
async def relay(
    relay_settings: Settings, admin: aio_pika.abc.AbstractRobustConnection
) -> AsyncIterator[TestServer]:
    server = await start_relay(relay_settings)
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
async def tap(
    relay: TestServer,
    relay_settings: Settings,
    admin: aio_pika.abc.AbstractRobustConnection,
) -> AsyncIterator[Tap]:
    channel = await admin.channel()
    queue = await channel.declare_queue(
        f"test.relay.tap.{uuid.uuid4().hex[:12]}", auto_delete=True, exclusive=True
    )
    exchange = await channel.get_exchange(relay_settings.amqp_exchange)
    await queue.bind(exchange, "object.created")
    try:
        yield Tap(queue)
    finally:
        await channel.close()


def auth(settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {settings.webhook_token.get_secret_value()}"}


def new_key(settings: Settings) -> str:
    return object_key(settings.upload_prefix, f"owner-{uuid.uuid4().hex}", uuid.uuid4())


def s3_body(settings: Settings, key: str, *, size: int = 1234, etag: str = "abc") -> bytes:
    record = {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "eventTime": "2026-11-27T10:00:00.000Z",
        "eventName": "ObjectCreated:Put",
        "s3": {
            "bucket": {"name": settings.bucket},
            "object": {"key": key, "size": size, "eTag": etag},
        },
    }
    return json.dumps({"Records": [record]}).encode()


def seaweedfs_body(settings: Settings, key: str, *, size: int) -> bytes:
    body = {
        "event_type": "create",
        "key": f"/buckets/{settings.bucket}/{key}",
        "message": {
            "new_entry": {
                "name": key.rsplit("/", 1)[1],
                "attributes": {"file_size": size, "mtime": 1795776849, "file_mode": 432},
                "extended": {"Seaweed-X-Amz-ETag": "NWViNjNiYmJlMDFlZWVkMDkzY2IyMmJiOGY1YWNkYzM="},
            }
        },
    }
    return json.dumps(body).encode()


# --- webhooks --------------------------------------------------------------------------------


async def test_s3_notification_is_in_the_queue_when_the_2xx_arrives(
    relay: TestServer, relay_settings: Settings, tap: Tap, http: ClientSession
) -> None:
    key = new_key(relay_settings)
    async with http.post(
        relay.make_url("/hooks/s3"),
        data=s3_body(relay_settings, key, size=4321),
        headers=auth(relay_settings),
    ) as resp:
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["published"] == 1
        # No waiting: the broker confirmed before the answer was sent.
        event = await tap.get_now()
    assert event is not None
    assert (event.key, event.size, event.etag, event.source) == (key, 4321, "abc", "s3")


async def test_seaweedfs_webhook_is_published_once_even_if_sent_twice(
    relay: TestServer, relay_settings: Settings, tap: Tap, http: ClientSession
) -> None:
    key = new_key(relay_settings)
    for expected in ({"published": 1, "duplicates": 0}, {"published": 0, "duplicates": 1}):
        async with http.post(
            relay.make_url("/hooks/seaweedfs"),
            data=seaweedfs_body(relay_settings, key, size=11),
            headers=auth(relay_settings),
        ) as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json()) | expected == await resp.json()
    event = await tap.wait_for(lambda e: e.key == key)
    assert (event.size, event.etag, event.source) == (
        11,
        "5eb63bbbe01eeed093cb22bb8f5acdc3",
        "seaweedfs",
    )
    assert await tap.get_now() is None


async def test_ignored_notification_is_acknowledged_and_publishes_nothing(
    relay: TestServer, relay_settings: Settings, tap: Tap, http: ClientSession
) -> None:
    key = f"{new_key(relay_settings)}.thumb-256.webp"
    async with http.post(
        relay.make_url("/hooks/seaweedfs"),
        data=seaweedfs_body(relay_settings, key, size=5),
        headers=auth(relay_settings),
    ) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["published"] == 0
    assert body["ignored"][0]["reason"] == "not-an-upload"
    assert await tap.get_now() is None


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": "Bearer "},
        {"Authorization": "clearance-webhook-dev-token"},
    ],
)
@pytest.mark.parametrize("path", ["/hooks/seaweedfs", "/hooks/s3"])
async def test_missing_or_wrong_token_is_401_and_publishes_nothing(
    relay: TestServer,
    relay_settings: Settings,
    tap: Tap,
    http: ClientSession,
    headers: dict[str, str],
    path: str,
) -> None:
    key = new_key(relay_settings)
    body = (
        s3_body(relay_settings, key)
        if path.endswith("s3")
        else seaweedfs_body(relay_settings, key, size=1)
    )
    async with http.post(relay.make_url(path), data=body, headers=headers) as resp:
        assert resp.status == 401
        assert resp.content_type == "application/problem+json"
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert await tap.get_now() is None


async def test_malformed_body_is_400_problem_json(
    relay: TestServer, relay_settings: Settings, http: ClientSession
) -> None:
    async with http.post(
        relay.make_url("/hooks/s3"),
        data=b'{"Records": [{"eventName": 1}]}',
        headers=auth(relay_settings),
    ) as resp:
        assert resp.status == 400
        assert resp.content_type == "application/problem+json"
        problem = await resp.json()
    assert problem["status"] == 400
    assert problem["detail"] == "Records[0].eventName must be a string"


async def test_health_and_metrics_are_open_and_count(
    relay: TestServer, relay_settings: Settings, http: ClientSession
) -> None:
    async with http.post(
        relay.make_url("/hooks/s3"),
        data=s3_body(relay_settings, new_key(relay_settings)),
        headers=auth(relay_settings),
    ) as resp:
        assert resp.status == 200
    async with http.get(relay.make_url("/healthz")) as resp:
        assert resp.status == 200
        health = await resp.json()
    assert health["broker"] == "connected"
    assert health["newest_event"] is not None
    async with http.get(relay.make_url("/metrics")) as resp:
        text = await resp.text()
    assert 'clearance_relay_events_published_total{source="s3"}' in text
    assert "clearance_relay_notifications_received_total" in text


# --- the broker is away --------------------------------------------------------------------


@pytest.fixture
async def proxied(
    relay_settings: Settings, admin: aio_pika.abc.AbstractRobustConnection
) -> AsyncIterator[tuple[LinkProxy, Settings]]:
    target = URL(relay_settings.amqp_url)
    proxy = LinkProxy(target.host or "127.0.0.1", target.port or 5672)
    await proxy.start()
    url = target.with_port(proxy.proxy_port)
    try:
        yield proxy, relay_settings.model_copy(update={"amqp_url": str(url)})
    finally:
        await proxy.close()


async def test_broker_gone_is_503_so_the_sender_retries_and_recovers(
    proxied: tuple[LinkProxy, Settings], tap: Tap, http: ClientSession
) -> None:
    proxy, settings = proxied
    server = await start_relay(settings)
    try:
        key = new_key(settings)
        await proxy.cut()
        async with http.post(
            server.make_url("/hooks/s3"), data=s3_body(settings, key), headers=auth(settings)
        ) as resp:
            assert resp.status == 503
            assert resp.content_type == "application/problem+json"
            assert resp.headers["Retry-After"]
        assert await tap.get_now() is None

        await proxy.restore()

        async def delivered() -> bool:
            async with http.post(
                server.make_url("/hooks/s3"), data=s3_body(settings, key), headers=auth(settings)
            ) as resp:
                return resp.status == 200

        await eventually(delivered, timeout=WAIT * 2, interval=0.2)
        assert (await tap.wait_for(lambda e: e.key == key)).key == key
    finally:
        await server.close()


async def test_sigterm_lets_the_in_flight_webhook_finish_before_stopping(
    proxied: tuple[LinkProxy, Settings], tap: Tap, http: ClientSession
) -> None:
    proxy, settings = proxied
    settings = settings.model_copy(update={"relay_port": free_port()})
    stopped = asyncio.create_task(serve(settings))
    base = URL(f"http://127.0.0.1:{settings.relay_port}")

    async def up() -> bool:
        try:
            async with http.get(base / "healthz") as resp:
                return resp.status == 200
        except OSError:
            return stopped.done()

    try:
        await eventually(up, timeout=WAIT * 2, interval=0.2)
        assert not stopped.done()
        key = new_key(settings)
        proxy.hold()  # the confirm cannot come back yet
        post = asyncio.create_task(
            http.post(base / "hooks/s3", data=s3_body(settings, key), headers=auth(settings))
        )
        await eventually(lambda: _publishing(http, base), timeout=WAIT * 2, interval=0.2)
        os.kill(os.getpid(), signal.SIGTERM)
        await eventually(lambda: _refused(http, base), timeout=WAIT * 2, interval=0.2)
        assert not post.done()
        proxy.release()
        resp = await asyncio.wait_for(post, WAIT)
        async with resp:
            assert resp.status == 200, await resp.text()
        await asyncio.wait_for(stopped, WAIT)
        assert (await tap.wait_for(lambda e: e.key == key)).key == key
        assert await _refused(http, base)
    finally:
        proxy.release()
        if not stopped.done():
            stopped.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stopped


async def _publishing(http: ClientSession, base: URL) -> bool:
    """The relay has read the notification (and now waits for the held confirm)."""
    async with http.get(base / "metrics") as resp:
        text = await resp.text()
    return 'clearance_relay_notifications_received_total{source="s3"} 1.0' in text


async def _refused(http: ClientSession, base: URL) -> bool:
    """The relay no longer accepts connections: it is stopping."""
    try:
        async with http.get(base / "healthz"):
            return False
    except OSError:
        return True


# --- catch-up from the filer metadata log ---------------------------------------------------


def put_object(settings: Settings, key: str, body: bytes) -> str:
    import boto3
    from botocore.config import Config

    s3 = boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key,
        aws_secret_access_key=settings.s3_secret_key.get_secret_value(),
        config=Config(s3={"addressing_style": "path"}),
    )
    try:
        answer = s3.put_object(
            Bucket=settings.bucket, Key=key, Body=body, ServerSideEncryption="AES256"
        )
    finally:
        s3.close()
    return str(answer["ETag"]).strip('"')


async def test_catch_up_publishes_an_object_no_webhook_reported(
    relay: TestServer, relay_settings: Settings, tap: Tap, stack_up: None
) -> None:
    key = new_key(relay_settings)
    data = os.urandom(3001)
    etag = await asyncio.to_thread(put_object, relay_settings, key, data)

    report = await relay.app[CATCHUP].run_once()

    event = await tap.wait_for(lambda e: e.key == key)
    assert (event.size, event.etag, event.source) == (len(data), etag, "seaweedfs")
    assert report.complete
    assert report.replayed >= 1
    # The cursor is saved for the next start.
    saved = json.loads((relay_settings.state_dir / "relay" / CURSOR_FILE).read_text())
    assert saved["ts_ns"] == report.cursor_ns > report.since_ns


async def test_catch_up_twice_publishes_an_object_once(
    relay: TestServer, relay_settings: Settings, tap: Tap, stack_up: None
) -> None:
    key = new_key(relay_settings)
    await asyncio.to_thread(put_object, relay_settings, key, b"twice")
    catch_up = relay.app[CATCHUP]
    await catch_up.run_once()
    await tap.wait_for(lambda e: e.key == key)
    second = await catch_up.run_once()
    assert second.since_ns >= time.time_ns() - 30 * SECOND_NS
    while (event := await tap.get_now()) is not None:
        assert event.key != key, "published twice"


async def test_restart_resumes_from_the_saved_cursor(
    relay: TestServer, relay_settings: Settings, tmp_path: Path, stack_up: None
) -> None:
    await relay.app[CATCHUP].run_once()
    saved = json.loads((relay_settings.state_dir / "relay" / CURSOR_FILE).read_text())["ts_ns"]
    # A new process: same state directory, nothing in memory.
    restarted = CatchUp(relay_settings, _forwarder_of(relay.app), RelayMetrics())
    assert (await restarted.run_once()).since_ns == saved
    # A first start: no cursor file, the configured window.
    fresh = CatchUp(
        relay_settings.model_copy(update={"state_dir": tmp_path}),
        _forwarder_of(relay.app),
        RelayMetrics(),
    )
    before = time.time_ns()
    first = await fresh.run_once()
    assert (
        before - WINDOW_S * SECOND_NS - SECOND_NS
        <= first.since_ns
        <= before - (WINDOW_S - 1) * SECOND_NS
    )


async def test_catch_up_runs_at_start_and_again_as_soon_as_the_broker_is_back(
    proxied: tuple[LinkProxy, Settings], tap: Tap, tmp_path: Path, stack_up: None
) -> None:
    proxy, settings = proxied
    # The interval is far beyond the test: only the start and the reconnect can run it.
    settings = settings.model_copy(
        update={"state_dir": tmp_path, "relay_catchup_interval_seconds": 3600}
    )
    before_start = new_key(settings)
    await asyncio.to_thread(put_object, settings, before_start, b"landed while the relay was down")
    server = TestServer(create_app(settings), host="127.0.0.1")
    await server.start_server()
    try:
        await tap.wait_for(lambda e: e.key == before_start)
        await proxy.cut()
        during_cut = new_key(settings)
        # Its webhook (if any) would have got a 503: only the log has it now.
        await asyncio.to_thread(
            put_object, settings, during_cut, b"landed while the broker was away"
        )
        await proxy.restore()
        await tap.wait_for(lambda e: e.key == during_cut)
    finally:
        await server.close()


def _forwarder_of(app: web.Application) -> Forwarder:
    return app[FORWARDER]


async def test_catch_up_without_a_filer_fails_and_keeps_its_cursor(
    relay: TestServer, relay_settings: Settings, tmp_path: Path
) -> None:
    # Nothing listens on port 1 (nor on its gRPC port, 10001).
    settings = relay_settings.model_copy(update={"state_dir": tmp_path, "weed_filer_port": 1})
    catch_up = CatchUp(settings, _forwarder_of(relay.app), RelayMetrics())
    with pytest.raises(CatchUpError, match="subscribing filer meta change") as caught:
        await catch_up.run_once()
    report = caught.value.report
    assert not report.complete
    assert report.cursor_ns == report.since_ns
    assert not (tmp_path / "relay" / CURSOR_FILE).exists()
