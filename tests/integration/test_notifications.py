"""Public events end to end: an upload with metadata reaches `ready`, and the application
hears of it by a signed webhook and on the event stream (the example consumer), each
event described by `/asyncapi.json`; and docs/integration.md's complete example, run as
written.

For the example, the suite's webhook receiver passes every request on, headers and body
unchanged, to the example's own endpoint: the signature it verifies is the gateway's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import jsonschema
import orjson
import pytest
from aiohttp import ClientSession, web
from standardwebhooks import Webhook, WebhookVerificationError

from services.gateway import asyncapi
from services.gateway.appkeys import POOL
from services.gateway.notifications import event_id
from shared.settings import Settings
from tests.conftest import TEST_DB, WEBHOOK_SECRET
from tests.receiver import WebhookReceiver
from tests.support import Uploads, eventually, free_port, make_jpeg

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
STAGES = ["pending", "uploaded", "scanning", "processing", "ready"]


class ExampleConsumer:
    """`examples/consumer.py`, run as written, as a process of its own."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def line(self) -> str:
        assert self.process.stdout is not None
        async with asyncio.timeout(30):
            raw = await self.process.stdout.readline()
        assert raw, "the example consumer exited"
        return raw.decode().strip()

    async def event_of(self, upload_id: str) -> dict[str, Any]:
        while True:
            event: dict[str, Any] = orjson.loads(await self.line())
            if event["upload_id"] == upload_id:
                return event


async def delete_queue(settings: Settings, name: str) -> None:
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(name)


@pytest.fixture
async def example_consumer(settings: Settings) -> AsyncIterator[ExampleConsumer]:
    queue = f"{TEST_DB}.example-consumer"
    await delete_queue(settings, queue)  # nothing left from an earlier run
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "examples" / "consumer.py"),
        "--amqp-url",
        settings.amqp_url,
        "--exchange",
        settings.notifications_exchange,
        "--queue",
        queue,
        stdout=asyncio.subprocess.PIPE,
    )
    consumer = ExampleConsumer(process)
    try:
        assert await consumer.line() == "ready"
        yield consumer
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            assert await process.wait() == 0
        await delete_queue(settings, queue)


@pytest.fixture
def uploads(http: ClientSession, gateway: str, owner_headers: dict[str, str]) -> Uploads:
    return Uploads(http, gateway, owner_headers)


def validate(document: dict[str, Any], event: dict[str, Any]) -> None:
    """`event` against the AsyncAPI message of its type (payload schema and constants)."""
    name = "upload" + event["type"].removeprefix("upload.").capitalize()
    payload = document["components"]["messages"][name]["payload"]
    jsonschema.Draft202012Validator({**payload, "components": document["components"]}).validate(
        event
    )


async def test_a_ready_upload_is_announced_once_by_webhook_and_on_the_stream(
    uploads: Uploads,
    workers: None,
    webhook_receiver: WebhookReceiver,
    example_consumer: ExampleConsumer,
    http: ClientSession,
    gateway: str,
    gateway_app: web.Application,
) -> None:
    metadata = {"order_id": "A-1042", "tenant": "acme"}
    upload_id = await uploads.send(make_jpeg(), metadata=metadata)
    record = await uploads.wait_final(upload_id)
    assert record["status"] == "ready"

    def answered() -> list[str]:
        return [r.event["type"] for r in webhook_receiver.of_upload(upload_id, answered=True)]

    async def all_answered() -> bool:
        return "upload.ready" in answered()

    await eventually(all_answered, what=lambda: f"the webhooks so far: {answered()}")
    # Every change once, in order, each signed per Standard Webhooks.
    assert answered() == [f"upload.{s}" for s in STAGES]
    verifier = Webhook(WEBHOOK_SECRET)
    received = webhook_receiver.of_upload(upload_id, answered=True)
    events = [verifier.verify(r.body, r.headers) for r in received]
    seqs = {e["seq"]: e["status"] for e in record["timeline"]}
    for r, event in zip(received, events, strict=True):
        assert r.headers["webhook-id"] == event["event_id"]
        assert event["event_id"] == event_id(event["upload_id"], event["timeline_entry"]["seq"])
        assert seqs[event["timeline_entry"]["seq"]] == event["status"]
        assert event["metadata"] == metadata
    ready = events[-1]
    assert ready["detected"]["type"] == "image/jpeg"
    stored = await gateway_app[POOL].fetchval(
        "SELECT thumbnails FROM uploads WHERE id = $1", uuid.UUID(upload_id)
    )
    assert len(stored) == 2
    assert [t["key"] for t in ready["thumbnails"]] == [t["key"] for t in stored]
    with pytest.raises(WebhookVerificationError, match="signature"):
        Webhook("whsec_" + "A" * 43).verify(received[-1].body, received[-1].headers)

    # The stream: the example consumer gets upload.ready (it asked for ready and infected).
    streamed = await example_consumer.event_of(upload_id)
    assert streamed == {
        "type": "upload.ready",
        "event_id": ready["event_id"],
        "upload_id": upload_id,
        "metadata": metadata,
        "reason": None,
    }

    # Every event validates against the AsyncAPI document the gateway serves.
    async with http.get(f"{gateway}/asyncapi.json") as resp:
        assert resp.status == 200
        document = await resp.json()
    for event in events:
        validate(document, event)
    with pytest.raises(jsonschema.ValidationError):
        validate(document, {**ready, "status": "pending"})


async def test_the_asyncapi_document_is_the_models_and_covers_every_status(
    http: ClientSession, gateway: str, settings: Settings
) -> None:
    async with http.get(f"{gateway}/asyncapi.json") as resp:  # public: no token
        assert resp.status == 200
        served = await resp.json()
    assert served["asyncapi"] == "3.0.0"
    assert served == orjson.loads(orjson.dumps(asyncapi.document(settings.notifications_exchange)))
    binding = served["channels"]["upload.ready"]["bindings"]["amqp"]["exchange"]
    assert (binding["name"], binding["type"]) == (settings.notifications_exchange, "topic")
    committed = orjson.loads((ROOT / "docs" / "asyncapi.json").read_bytes())
    assert committed == orjson.loads(orjson.dumps(asyncapi.document())), (
        "docs/asyncapi.json is stale: python -m services.gateway.asyncapi > docs/asyncapi.json"
    )
    statuses = served["components"]["schemas"]["Status"]["enum"]
    assert {c for c in served["channels"] if c != "webhook"} == {f"upload.{s}" for s in statuses}


# -- docs/integration.md ---------------------------------------------------------------


def complete_example() -> str:
    """The one Python block of the doc's "A complete example" section."""
    text = (ROOT / "docs" / "integration.md").read_text()
    section = text.split("## 6. A complete example", 1)[1].split("\n## ", 1)[0]
    [code] = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    return code


@pytest.fixture
def forwarded(webhook_receiver: WebhookReceiver) -> Iterator[int]:
    port = free_port()
    webhook_receiver.forward_to(f"http://127.0.0.1:{port}/clearance/webhooks")
    try:
        yield port
    finally:
        webhook_receiver.forward_to(None)


async def test_the_complete_example_runs_as_written(
    gateway: str, settings: Settings, workers: None, forwarded: int, tmp_path: Path
) -> None:
    script = tmp_path / "backend.py"
    script.write_text(complete_example())
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(make_jpeg())
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        env=os.environ
        | {
            "CLEARANCE_URL": gateway,
            "CLEARANCE_JWT_SECRET": settings.jwt_secret.get_secret_value(),
            "CLEARANCE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "LISTEN_PORT": str(forwarded),
            "UPLOAD_FILE": str(photo),
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(90):
        out, _ = await process.communicate()
    output = out.decode()
    assert process.returncode == 0, output
    assert "is ready image/jpeg" in output, output
    assert f"downloaded {photo.stat().st_size} bytes" in output, output
