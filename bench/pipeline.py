"""Land → `ready` latency of the whole pipeline, per stage, then a burst, then thumbnails.

Run with the local stack up (`clearance stack up --infra-only`):

    .venv/bin/python bench/pipeline.py [--uploads 50] [--burst 200]

It starts its own storage (`weed mini` on ports of its own), gateway, scanner and
processor in this process (a database, queues and exchange of this run's own, so
neither a running stack nor another benchmark run is disturbed), uploads N 2-megapixel
JPEGs one after the other, and for each measures the time from "the PUT to storage
returned" to "the SSE stream said ready", split into stages by the upload's timeline
(land → uploaded → scanning → processing → ready → seen on the SSE stream). Goals on
this 2-core machine: p50 ≤ 150 ms, p99 ≤ 400 ms. Then a burst: `--burst` uploads at
once, spread over 20 owners, reporting uploads/s and clamd scans per upload (1.0: each
object scanned once, however many events announced it). Then `bench/thumbnails.py`
(ours vs naive Pillow vs libvips) in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import itertools
import runpy
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from aiohttp import ClientOSError, ClientSession, ServerDisconnectedError, TCPConnector, web
from PIL import Image

from devstack.layout import StackLayout
from devstack.seaweedfs import SeaweedComponent
from services.gateway.app import create_app
from services.gateway.auth import mint_token
from services.processor.worker import build_processor, process_pool
from services.scanner.clamd import ClamdClient, ScanResult
from services.scanner.worker import build_scanner
from shared.amqp.consumer import Consumer
from shared.db import drop_database, recreate_database
from shared.pipeline import delete_topology, processor_queue, scanner_queue
from shared.settings import Settings
from shared.worker import worker_resources

PORT = 18283
WEED = {"s3": 18533, "master": 19533, "volume": 19540, "filer": 19088, "admin": 19846}
# Names of this run's own: several people may run benchmarks on one machine, and a
# fixed database (dropped WITH FORCE at start) or queue would break each other's runs.
RUN_ID = uuid.uuid4().hex[:8]
BENCH_DB = f"clearance_bench_{RUN_ID}"
QUEUE_PREFIX = f"clearance.bench-pipeline-{RUN_ID}"
STAGES = ("land → uploaded", "uploaded → scanning", "scanning → processing",
          "processing → ready", "ready → SSE")  # fmt: skip
BURST_OWNERS = 20


class Sample:
    """One upload: its end-to-end latency and the time each stage took (ms)."""

    def __init__(self, total_ms: float, stages: dict[str, float]) -> None:
        self.total_ms = total_ms
        self.stages = stages


async def forget(settings: Settings) -> None:
    """Drop this run's database, queues and exchanges."""
    await drop_database(f"{settings.database_url.rsplit('/', 1)[0]}/{BENCH_DB}")
    exchanges = [settings.amqp_exchange, settings.notifications_exchange]
    await delete_topology(settings, exchanges=exchanges)


def two_megapixel_jpeg(seed: int) -> bytes:
    img = Image.effect_noise((1632, 1224), 40 + seed % 20).convert("RGB")
    img = Image.blend(img, Image.linear_gradient("L").resize(img.size).convert("RGB"), 0.6)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return buf.getvalue()


async def fresh_database(settings: Settings) -> str:
    dsn = f"{settings.database_url.rsplit('/', 1)[0]}/{BENCH_DB}"
    await recreate_database(dsn)
    return dsn


async def one_upload(
    http: ClientSession, gateway: str, headers: dict[str, str], data: bytes
) -> Sample:
    body = {"filename": "bench.jpg", "content_type": "image/jpeg", "size": len(data)}
    async with http.post(f"{gateway}/v1/uploads", json=body, headers=headers) as resp:
        assert resp.status == 201, await resp.text()
        created: dict[str, Any] = await resp.json()
    upload_id = created["id"]
    ready = asyncio.Event()
    landed_at: list[float] = []
    finished_at: list[float] = []

    async def follow() -> None:
        # As a browser's EventSource does: a stream that ends early is resumed from the
        # last event id it delivered.
        last_id = ""
        while True:
            resume = {"Last-Event-ID": last_id} if last_id else {}
            url = f"{gateway}/v1/uploads/{upload_id}/events"
            async with http.get(url, headers=headers | resume) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"event stream: {resp.status} {await resp.text()}")
                async for raw in resp.content:
                    if raw.startswith(b"id: "):
                        last_id = raw[4:].decode().strip()
                    if raw.startswith(b"data: ") and b'"status":"ready"' in raw:
                        finished_at.append(time.time())
                        ready.set()
                        return
                    if raw.startswith(b"data: ") and any(
                        f'"status":"{s}"'.encode() in raw
                        for s in ("infected", "rejected", "failed")
                    ):
                        raise RuntimeError(raw.decode())

    follower = asyncio.create_task(follow())
    async with http.put(
        created["upload"]["url"], data=io.BytesIO(data), headers=created["upload"]["headers"]
    ) as resp:
        assert resp.status == 200, await resp.text()
    landed_at.append(time.time())
    async with http.post(
        f"{gateway}/v1/uploads/{upload_id}/complete", json={}, headers=headers
    ) as resp:
        assert resp.status == 202
    await asyncio.wait_for(follower, timeout=60)
    record = await get_record(http, f"{gateway}/v1/uploads/{upload_id}", headers)
    at = {e["status"]: datetime.fromisoformat(e["at"]).timestamp() for e in record["timeline"]}
    marks = [landed_at[0], at["uploaded"], at["scanning"], at["processing"], at["ready"]]
    marks.append(finished_at[0])
    pairs = itertools.pairwise(marks)
    stages = {name: (b - a) * 1000 for name, (a, b) in zip(STAGES, pairs, strict=True)}
    return Sample((finished_at[0] - landed_at[0]) * 1000, stages)


async def get_record(http: ClientSession, url: str, headers: dict[str, str]) -> dict[str, Any]:
    """The upload's record; a kept-alive connection the server just closed is retried."""
    for attempt in range(3):
        try:
            async with http.get(url, headers=headers) as resp:
                record: dict[str, Any] = await resp.json()
                return record
        except (ClientOSError, ServerDisconnectedError):
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


class ScanCounter:
    """Counts clamd scans (this process's scanner) while the benchmark runs."""

    def __init__(self) -> None:
        self.scans = 0
        self._original = ClamdClient.scan_stream

    def __enter__(self) -> ScanCounter:
        original = self._original
        counter = self

        async def counted(client: ClamdClient, chunks: Any) -> ScanResult:
            counter.scans += 1
            return await original(client, chunks)

        ClamdClient.scan_stream = counted  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        ClamdClient.scan_stream = self._original  # type: ignore[method-assign]


async def burst(
    http: ClientSession, gateway: str, settings: Settings, images: list[bytes], count: int
) -> tuple[float, float, list[Sample]]:
    """`count` uploads at once over BURST_OWNERS owners: (uploads/s, scans per upload)."""
    owners = [
        {"Authorization": f"Bearer {mint_token(settings, f'burst-{i}')}"}
        for i in range(BURST_OWNERS)
    ]
    headers = itertools.cycle(owners)
    with ScanCounter() as counter:
        started = time.perf_counter()
        samples = await asyncio.gather(
            *(
                one_upload(http, gateway, next(headers), images[i % len(images)])
                for i in range(count)
            )
        )
        elapsed = time.perf_counter() - started
    return count / elapsed, counter.scans / count, list(samples)


def own_storage(settings: Settings, state: Path) -> SeaweedComponent:
    """This run's own `weed mini` (ports of its own, data in `state`), bucket configured."""
    layout = StackLayout(root=state)
    layout.ensure()
    return SeaweedComponent(settings, layout)


async def run(
    count: int, burst_count: int
) -> tuple[list[Sample], tuple[float, float, list[Sample]] | None]:
    state = Path(tempfile.mkdtemp(prefix="clearance-bench-pipe-"))
    base = Settings()
    settings = base.model_copy(
        update={
            "state_dir": state,
            "queue_prefix": QUEUE_PREFIX,
            "amqp_exchange": f"{QUEUE_PREFIX}.events",
            "notifications_exchange": f"{QUEUE_PREFIX}.notifications",
            "gateway_port": PORT,
            "s3_endpoint_url": f"http://127.0.0.1:{WEED['s3']}",
            **{f"weed_{name}_port": port for name, port in WEED.items()},
            "relay_port": PORT + 1,  # no relay here: the gateway's complete publishes
        }
    )
    weed = own_storage(settings, state)
    await asyncio.to_thread(weed.up)
    try:
        return await measure(settings, count, burst_count)
    finally:
        await asyncio.to_thread(weed.down)
        shutil.rmtree(state, ignore_errors=True)


async def measure(
    settings: Settings, count: int, burst_count: int
) -> tuple[list[Sample], tuple[float, float, list[Sample]] | None]:
    settings = settings.model_copy(update={"database_url": await fresh_database(settings)})
    app = create_app(settings, with_reconciler=False)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", PORT)
    await site.start()
    gateway = f"http://127.0.0.1:{PORT}"
    headers = {"Authorization": f"Bearer {mint_token(settings, 'bench')}"}
    images = [two_megapixel_jpeg(i) for i in range(8)]
    latencies: list[Sample] = []
    burst_result = None
    try:
        with process_pool(settings.processor_workers) as pool:
            async with worker_resources(settings, "bench") as (connection, resources):
                scan, _ = await build_scanner(resources)
                proc, _ = await build_processor(resources, pool)
                consumers = [
                    Consumer(connection, settings, scanner_queue(settings), scan),
                    Consumer(connection, settings, processor_queue(settings), proc),
                ]
                for consumer in consumers:
                    await consumer.start()
                async with ClientSession(connector=TCPConnector(limit=0)) as http:
                    # Warm up: process pool start-up and first connections.
                    for data in images[:3]:
                        await one_upload(http, gateway, headers, data)
                    for i in range(count):
                        latencies.append(
                            await one_upload(http, gateway, headers, images[i % len(images)])
                        )
                    if burst_count:
                        burst_result = await burst(http, gateway, settings, images, burst_count)
                for consumer in consumers:
                    await consumer.drain(5)
    finally:
        await runner.cleanup()
        await forget(settings)
    return latencies, burst_result


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def print_stages(samples: list[Sample]) -> None:
    print(f"  {'stage':<24} {'p50 ms':>7} {'p99 ms':>7} {'mean ms':>8}")
    for name in STAGES:
        values = [x.stages[name] for x in samples]
        print(
            f"  {name:<24} {percentile(values, 0.5):7.0f} {percentile(values, 0.99):7.0f}"
            f" {statistics.mean(values):8.1f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=50)
    parser.add_argument("--burst", type=int, default=200, help="uploads at once (0: none)")
    parser.add_argument("--skip-thumbnails", action="store_true")
    args = parser.parse_args(argv)
    samples, burst_result = asyncio.run(run(args.uploads, args.burst))
    latencies = [x.total_ms for x in samples]
    p50, p99 = percentile(latencies, 0.50), percentile(latencies, 0.99)
    print(f"land → ready over {len(latencies)} uploads of a 2 MP JPEG (scan + verify + 2 WebP)")
    print(
        f"  p50 {p50:.0f} ms (goal ≤ 150)   p99 {p99:.0f} ms (goal ≤ 400)   "
        f"mean {statistics.mean(latencies):.0f} ms   max {max(latencies):.0f} ms"
    )
    print_stages(samples)
    if burst_result is not None:
        rate, scans, burst_samples = burst_result
        total = [x.total_ms for x in burst_samples]
        print()
        print(
            f"burst: {len(burst_samples)} uploads at once over {BURST_OWNERS} owners: "
            f"{rate:.1f} uploads/s, {scans:.2f} scans per upload (goal 1.00), "
            f"land → ready p50 {percentile(total, 0.5):.0f} ms, "
            f"p99 {percentile(total, 0.99):.0f} ms"
        )
        print_stages(burst_samples)
    if not args.skip_thumbnails:
        print()
        sys.argv = [str(Path(__file__).with_name("thumbnails.py"))]
        runpy.run_path(sys.argv[0], run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
