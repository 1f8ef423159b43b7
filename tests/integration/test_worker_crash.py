"""Reliability with real processes: a scanner killed mid-message loses nothing, and a
file the scanner cannot fully scan is never reported clean."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aio_pika
import pytest
from aiohttp import ClientSession

from devstack.apps import settings_environment
from services.processor.worker import build_processor, process_pool
from services.scanner.clamd import ClamdClient
from services.scanner.worker import Scanner
from shared.amqp.consumer import Consumer, Delivery
from shared.events import ObjectCreated
from shared.pipeline import processor_queue, scanner_queue
from shared.settings import Settings
from shared.worker import worker_resources
from tests.support import Uploads, eventually, make_jpeg

pytestmark = pytest.mark.integration


@pytest.fixture
def uploads(http: ClientSession, gateway: str, owner_headers: dict[str, str]) -> Uploads:
    return Uploads(http, gateway, owner_headers)


@pytest.fixture
async def processor(settings: Settings, gateway: str) -> AsyncIterator[None]:
    with process_pool(1) as pool:
        async with worker_resources(settings, "test-processor") as (connection, resources):
            handler, dead = await build_processor(resources, pool)
            consumer = Consumer(
                connection, settings, processor_queue(settings), handler, on_dead_letter=dead
            )
            await consumer.start()
            try:
                yield
            finally:
                await consumer.drain(5)


@pytest.fixture
async def stalled_clamd() -> AsyncIterator[int]:
    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass
        writer.close()

    # A clamd that accepts connections and never answers: scans hang until killed.
    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


@pytest.fixture
def scanner_process(settings: Settings, tmp_path: Path) -> Iterator[type[subprocess.Popen[bytes]]]:
    """Starts `clearance scanner` processes; kills whatever is left at the end."""
    started: list[subprocess.Popen[bytes]] = []

    def start(**overrides: object) -> subprocess.Popen[bytes]:
        env = os.environ | settings_environment(settings.model_copy(update=overrides))
        with (tmp_path / f"scanner-{len(started)}.log").open("wb") as log:
            proc = subprocess.Popen(
                [str(Path(sys.executable).parent / "clearance"), "scanner"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        started.append(proc)
        return proc

    yield start  # type: ignore[misc]
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


async def consumers_on(settings: Settings, queue: str) -> int:
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        assert declared.declaration_result.consumer_count is not None
        return declared.declaration_result.consumer_count


async def wait_for_status(uploads: Uploads, upload_id: str, status: str) -> None:
    async def reached() -> bool:
        return bool((await uploads.get(upload_id))["status"] == status)

    await eventually(reached, timeout=20, what=f"status {status!r}")


async def test_a_scanner_killed_mid_scan_loses_nothing(
    uploads: Uploads,
    settings: Settings,
    processor: None,
    stalled_clamd: int,
    scanner_process: type[subprocess.Popen[bytes]],
) -> None:
    queue = scanner_queue(settings).name
    before = await consumers_on(settings, queue)
    doomed = scanner_process(
        clamd_port=stalled_clamd, scanner_metrics_port=None, clamd_timeout_seconds=120
    )
    async with asyncio.timeout(30):
        while await consumers_on(settings, queue) <= before:
            assert doomed.poll() is None, "the scanner exited early"
            await asyncio.sleep(0.1)

    upload_id = await uploads.send(make_jpeg())
    await wait_for_status(uploads, upload_id, "scanning")  # the scanner holds the message
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(10)

    scanner_process(scanner_metrics_port=None)  # a healthy one takes over
    record = await uploads.wait_final(upload_id)
    assert record["status"] == "ready"
    statuses = [e["status"] for e in record["timeline"]]
    assert statuses == ["pending", "uploaded", "scanning", "processing", "ready"]


async def test_a_file_over_the_scanners_limit_fails_and_is_never_clean(
    uploads: Uploads, settings: Settings, gateway: str
) -> None:
    data = make_jpeg(1600, 1200) + b"\0" * (2 << 20)  # ~2 MiB, still a valid JPEG prefix
    created = await uploads.create(data, "image/jpeg")
    await uploads.put(created, data)
    await uploads.complete(created["id"])
    small_scanner_limit = 1 << 20
    async with worker_resources(settings, "test-small-scanner") as (_connection, resources):
        scanner = Scanner(
            resources,
            ClamdClient(
                settings.clamd_host,
                settings.clamd_port,
                timeout=30,
                max_bytes=small_scanner_limit,
            ),
        )
        head = await resources.s3.head_object(Bucket=settings.bucket, Key=created["key"])
        event = ObjectCreated.build(
            upload_id=created["id"],
            bucket=settings.bucket,
            key=created["key"],
            size=head["ContentLength"],
            etag=head["ETag"].strip('"'),
            source="gateway",
        )
        delivery = Delivery(
            queue="direct",
            attempt=1,
            max_attempts=1,
            redeliveries=0,
            routing_key="object.created",
            message_id=event.event_id,
            correlation_id=event.correlation_id,
            headers={},
        )
        await scanner(event, delivery)
    record = await uploads.wait_final(created["id"])
    assert record["status"] == "failed"
    assert "scan" in record["reason"]
    assert "processing" not in [e["status"] for e in record["timeline"]]
