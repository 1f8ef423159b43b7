"""Webhook delivery against a real receiver: retries with back-off until a 2xx, the
attempt log, dead letters after the last attempt and their replay, per-upload order
after an outage, and two gateway replicas sharing the work without sending anything
twice. The receiver is the suite's (`tests/receiver.py`); its rules pick the uploads of
one owner."""

from __future__ import annotations

import asyncio
import copy
import itertools
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import orjson
import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry
from standardwebhooks import Webhook

from services.gateway import webhooks
from services.gateway.app import create_app
from services.gateway.appkeys import POOL
from services.gateway.notifications import upload_event
from services.gateway.store import TimelineEntry, Upload
from services.gateway.webhooks import WebhookDispatcher, WebhookMetrics
from shared.settings import Settings, WebhookEndpoint
from tests.conftest import WEBHOOK_SECRET
from tests.receiver import WebhookReceiver
from tests.support import eventually

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
IMAGE = {"filename": "w.jpg", "content_type": "image/jpeg", "size": 100}
VIDEO = {"filename": "w.mp4", "content_type": "video/mp4", "size": 200 * 1024 * 1024}


async def clearance(settings: Settings, *args: str) -> tuple[int, str]:
    """`clearance webhooks …` as an operator runs it, against the suite's database."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "commands",
        "webhooks",
        *args,
        cwd=ROOT,
        env=os.environ | {"CLEARANCE_DATABASE_URL": settings.database_url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode()


async def delivery_log(settings: Settings, upload_id: str) -> list[dict[str, Any]]:
    """`clearance webhooks list --json --upload ID`, oldest first."""
    code, out = await clearance(settings, "list", "--json", "--upload", upload_id)
    assert code == 0, out
    return [orjson.loads(line) for line in out.splitlines()][::-1]


async def state_of(pool: asyncpg.Pool[Any], upload_id: str) -> str | None:
    """The state of the upload's (first) delivery, read as the CLI reads it (in-process:
    the command takes a second or two to start)."""
    rows = await webhooks.deliveries(pool, upload_id=uuid.UUID(upload_id))
    return rows[-1]["state"] if rows else None


class Owner:
    """One user of the gateway (their uploads are the receiver's rules' scope)."""

    def __init__(self, http: ClientSession, gateway: str, token: Callable[..., str]) -> None:
        self.name = f"hooks-{uuid.uuid4().hex[:8]}"
        self.http, self.gateway = http, gateway
        self.headers = {"Authorization": f"Bearer {token(self.name)}"}

    def through(self, gateway: str) -> Owner:
        """The same user, talking to another gateway replica."""
        twin = copy.copy(self)
        twin.gateway = gateway
        return twin

    async def call(self, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        async with self.http.request(
            method, f"{self.gateway}{path}", json=body, headers=self.headers
        ) as resp:
            assert resp.status == expect, await resp.text()
            return await resp.json() if resp.status != 204 else None


@pytest.fixture
def owner(http: ClientSession, gateway: str, token: Callable[..., str]) -> Owner:
    return Owner(http, gateway, token)


async def test_a_failing_receiver_gets_the_event_on_the_fourth_attempt(
    owner: Owner,
    webhook_receiver: WebhookReceiver,
    settings: Settings,
    gateway_app: web.Application,
) -> None:
    webhook_receiver.fail(owner.name, times=3, status=500)
    upload_id = (await owner.call("POST", "/v1/uploads", IMAGE, expect=201))["id"]

    async def delivered() -> bool:
        return bool(webhook_receiver.of_upload(upload_id, answered=True))

    await eventually(delivered, timeout=15)
    tries = webhook_receiver.of_upload(upload_id)
    assert [t.answer for t in tries] == [500, 500, 500, 204]
    # One event, the same id and body each time; a fresh signature per attempt.
    assert {t.headers["webhook-id"] for t in tries} == {tries[0].event["event_id"]}
    assert {t.body for t in tries} == {tries[0].body}
    for t in tries:
        assert Webhook(WEBHOOK_SECRET).verify(t.body, t.headers)["type"] == "upload.pending"
    # Backing off: each wait longer than the one before (0.2, 0.5, 1.0 s ± 20 %).
    gaps = [b.at - a.at for a, b in itertools.pairwise(tries)]
    assert gaps == sorted(gaps), gaps
    assert gaps[0] >= 0.15, gaps

    [logged] = await webhooks.deliveries(gateway_app[POOL], upload_id=uuid.UUID(upload_id))
    assert (logged["state"], logged["attempts"], logged["last_status"]) == ("delivered", 4, 204)
    code, shown = await clearance(settings, "show", str(logged["id"]))
    assert code == 0, shown
    attempts = [line.split() for line in shown.splitlines() if line.strip().startswith("attempt")]
    assert [a[4] for a in attempts] == ["500", "500", "500", "204"]
    assert all(float(a[5]) >= 0 for a in attempts)  # latency in ms


async def test_a_receiver_down_past_the_retries_gets_a_dead_letter_it_can_replay(
    owner: Owner,
    webhook_receiver: WebhookReceiver,
    settings: Settings,
    http: ClientSession,
    gateway: str,
    gateway_app: web.Application,
) -> None:
    webhook_receiver.drop(owner.name)
    upload_id = (await owner.call("POST", "/v1/uploads", IMAGE, expect=201))["id"]

    async def dead() -> bool:
        return await state_of(gateway_app[POOL], upload_id) == "dead"

    await eventually(dead, timeout=20)
    [logged] = await delivery_log(settings, upload_id)
    assert logged["attempts"] == len(settings.webhook_retry_schedule_seconds) + 1
    assert logged["last_status"] is None
    assert logged["last_error"]
    assert [t.answer for t in webhook_receiver.of_upload(upload_id)] == [None] * 4

    webhook_receiver.restore(owner.name)
    code, out = await clearance(settings, "replay", str(logged["id"]))
    assert code == 0, out

    async def delivered() -> bool:
        return bool(webhook_receiver.of_upload(upload_id, answered=True))

    await eventually(delivered, timeout=15)
    [replayed] = webhook_receiver.of_upload(upload_id, answered=True)
    assert Webhook(WEBHOOK_SECRET).verify(replayed.body, replayed.headers)["upload_id"] == upload_id
    [logged] = await webhooks.deliveries(gateway_app[POOL], upload_id=uuid.UUID(upload_id))
    assert (logged["state"], logged["replayed_at"] is not None) == ("delivered", True)
    async with gateway_app[POOL].acquire() as conn:
        assert await webhooks.replay(conn, 999_999_999) is None


async def test_after_an_outage_every_event_arrives_in_the_uploads_order(
    owner: Owner, webhook_receiver: WebhookReceiver
) -> None:
    webhook_receiver.drop(owner.name)
    # pending → uploading → aborted while the receiver is down.
    created = await owner.call("POST", "/v1/uploads", VIDEO | {"profile": "media"}, expect=201)
    upload_id = created["id"]
    await owner.call("POST", f"/v1/uploads/{upload_id}/parts", {"part_numbers": [1]})
    await owner.call("DELETE", f"/v1/uploads/{upload_id}", expect=204)

    async def retried() -> bool:
        return len(webhook_receiver.of_upload(upload_id)) >= 2

    await eventually(retried, timeout=10)
    webhook_receiver.restore(owner.name)

    async def all_three() -> bool:
        return len(webhook_receiver.of_upload(upload_id, answered=True)) == 3

    await eventually(all_three, timeout=15)
    arrivals = [(r.event["type"], r.answer) for r in webhook_receiver.of_upload(upload_id)]
    failed = [a for a in arrivals if a[1] is None]
    # Only the oldest event was tried while the receiver was down; the later ones
    # waited for it, then came in the order of the changes.
    assert {t for t, _ in failed} == {"upload.pending"}
    assert arrivals[len(failed) :] == [
        ("upload.pending", 204),
        ("upload.uploading", 204),
        ("upload.aborted", 204),
    ]


@pytest.fixture
async def second_replica(settings: Settings, database: str) -> AsyncIterator[TestServer]:
    """Another gateway on the same database: its own outbox relay and dispatcher."""
    app = create_app(settings, with_broker=False, with_reconciler=False, with_outbox_relay=True)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()


async def test_two_replicas_deliver_each_event_once_in_order(
    owner: Owner,
    webhook_receiver: WebhookReceiver,
    second_replica: TestServer,
    settings: Settings,
) -> None:
    other = owner.through(str(second_replica.make_url("")).rstrip("/"))
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            settings.notifications_exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(exchange, "upload.*")
        streamed: list[aio_pika.abc.AbstractIncomingMessage] = []

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            streamed.append(message)
            await message.ack()

        await queue.consume(on_message)
        ids = []
        for n in range(12):
            via = owner if n % 2 else other
            upload_id = (await via.call("POST", "/v1/uploads", IMAGE, expect=201))["id"]
            ids.append(upload_id)
            if n % 3:
                await (other if n % 2 else owner).call(
                    "DELETE", f"/v1/uploads/{upload_id}", expect=204
                )
        expected = {
            i: ["upload.pending"] + ["upload.aborted"] * (n % 3 != 0) for n, i in enumerate(ids)
        }
        total = sum(len(v) for v in expected.values())

        def ours(messages: list[aio_pika.abc.AbstractIncomingMessage]) -> list[Any]:
            return [m for m in messages if (m.headers or {}).get("upload_id") in expected]

        async def all_in() -> bool:
            hooks = sum(len(webhook_receiver.of_upload(i, answered=True)) for i in ids)
            return hooks >= total and len(ours(streamed)) >= total

        await eventually(all_in, timeout=20)
    for upload_id, types in expected.items():
        received = webhook_receiver.of_upload(upload_id)
        assert [r.event["type"] for r in received] == types  # once each, in order
        got = [str(m.type) for m in ours(streamed) if m.headers["upload_id"] == upload_id]  # type: ignore[index]
        assert got == types


async def test_a_receiver_that_never_answers_is_cut_off_at_the_timeout(
    settings: Settings, gateway_app: web.Application
) -> None:
    """One dispatcher of our own (its metrics are this test's): two attempts, each cut
    off at the timeout, then the delivery is dead."""
    hung = asyncio.Event()

    async def never(request: web.Request) -> web.Response:
        await hung.wait()
        return web.Response(status=204)

    receiver = web.Application()
    receiver.router.add_post("/hooks", never)
    server = TestServer(receiver, host="127.0.0.1")
    await server.start_server()
    slow = WebhookEndpoint(name="slow", url=str(server.make_url("/hooks")), secret=WEBHOOK_SECRET)  # type: ignore[arg-type]
    mine = settings.model_copy(
        update={
            "webhooks": (slow,),
            "webhook_timeout_seconds": 0.5,
            "webhook_retry_schedule_seconds": (0.1,),
        }
    )
    upload = Upload.pending(
        id=uuid.uuid4(),
        owner="slow",
        profile="image",
        filename="s.jpg",
        content_type="image/jpeg",
        size=1,
        bucket=settings.bucket,
        key="uploads/slow",
        ttl_seconds=60,
        correlation_id="slow",
    )
    event = upload_event(
        upload, TimelineEntry(1, upload.id, upload.status, "t", {}, upload.created_at)
    )
    pool = gateway_app[POOL]
    registry = CollectorRegistry()
    metrics = WebhookMetrics(registry)
    try:
        async with pool.acquire() as conn:
            await webhooks.schedule(conn, mine.webhooks, event, event.model_dump_json())
        async with ClientSession() as session:
            dispatcher = WebhookDispatcher(mine, pool, session, metrics)
            [claimed] = await dispatcher.claim(10)
            started = time.monotonic()
            await dispatcher.attempt(claimed)
            took = time.monotonic() - started
            assert 0.4 < took < 3, took
            [row] = await webhooks.deliveries(pool, upload_id=upload.id)
            assert (row["state"], row["attempts"]) == ("pending", 1)
            assert row["last_error"] == "no answer within 0.5 s"
            assert row["next_attempt_at"] > datetime.now(UTC)
            assert await dispatcher.claim(10) == []  # not due yet

            again: list[Any] = []

            async def claimed_again() -> bool:  # after the 0.1 s back-off
                again.extend(await dispatcher.claim(10))
                return bool(again)

            await eventually(claimed_again, timeout=5)
            await dispatcher.attempt(again[0])
        [row] = await webhooks.deliveries(pool, upload_id=upload.id)
        assert (row["state"], row["attempts"]) == ("dead", 2)
        sample = registry.get_sample_value
        labels = {"endpoint": "slow"}
        assert sample("clearance_webhook_attempts_total", labels | {"result": "timeout"}) == 2
        assert sample("clearance_webhook_dead_total", labels) == 1
        assert sample("clearance_webhook_attempt_seconds_count", labels) == 2
    finally:
        hung.set()
        await server.close()
        await pool.execute("DELETE FROM webhook_deliveries WHERE upload_id = $1", upload.id)
