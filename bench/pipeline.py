"""Land → `ready` latency of the whole pipeline, then the thumbnail benchmark.

Run with the local stack up (`clearance stack up --infra-only`):

    .venv/bin/python bench/pipeline.py [--uploads 50]

It starts its own gateway, scanner and processor in this process (queues of their
own, so a running stack is not disturbed), uploads N 2-megapixel JPEGs one after
the other, and for each measures the time from "the PUT to storage returned" to
"the SSE stream said ready". Goal on this 2-core machine: p50 ≤ 300 ms, p99 ≤ 1 s.
Then it runs `bench/thumbnails.py` (ours vs naive Pillow vs libvips) in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import runpy
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp import ClientSession, web
from PIL import Image

from services.gateway.app import create_app
from services.gateway.auth import mint_token
from services.processor.worker import build_processor, process_pool
from services.scanner.worker import build_scanner
from shared.amqp.consumer import Consumer
from shared.db import migrate
from shared.pipeline import processor_queue, scanner_queue
from shared.settings import Settings
from shared.worker import worker_resources

PORT = 18283
BENCH_DB = "clearance_bench"


def two_megapixel_jpeg(seed: int) -> bytes:
    img = Image.effect_noise((1632, 1224), 40 + seed % 20).convert("RGB")
    img = Image.blend(img, Image.linear_gradient("L").resize(img.size).convert("RGB"), 0.6)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return buf.getvalue()


async def fresh_database(settings: Settings) -> str:
    base = settings.database_url.rsplit("/", 1)[0]
    admin = await asyncpg.connect(f"{base}/postgres")
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{BENCH_DB}"')
    finally:
        await admin.close()
    dsn = f"{base}/{BENCH_DB}"
    await migrate(dsn)
    return dsn


async def one_upload(
    http: ClientSession, gateway: str, headers: dict[str, str], data: bytes
) -> float:
    body = {"filename": "bench.jpg", "content_type": "image/jpeg", "size": len(data)}
    async with http.post(f"{gateway}/v1/uploads", json=body, headers=headers) as resp:
        created: dict[str, Any] = await resp.json()
    upload_id = created["id"]
    ready = asyncio.Event()
    landed_at: list[float] = []
    finished_at: list[float] = []

    async def follow() -> None:
        async with http.get(f"{gateway}/v1/uploads/{upload_id}/events", headers=headers) as resp:
            async for raw in resp.content:
                if raw.startswith(b"data: ") and b'"status":"ready"' in raw:
                    finished_at.append(time.perf_counter())
                    ready.set()
                    return
                if raw.startswith(b"data: ") and any(
                    f'"status":"{s}"'.encode() in raw for s in ("infected", "rejected", "failed")
                ):
                    raise RuntimeError(raw.decode())

    follower = asyncio.create_task(follow())
    async with http.put(
        created["upload"]["url"], data=io.BytesIO(data), headers=created["upload"]["headers"]
    ) as resp:
        assert resp.status == 200, await resp.text()
    landed_at.append(time.perf_counter())
    async with http.post(
        f"{gateway}/v1/uploads/{upload_id}/complete", json={}, headers=headers
    ) as resp:
        assert resp.status == 202
    await asyncio.wait_for(follower, timeout=30)
    return (finished_at[0] - landed_at[0]) * 1000


async def run(count: int) -> list[float]:
    base = Settings()
    settings = base.model_copy(
        update={
            "queue_prefix": "clearance.bench",
            "amqp_exchange": "clearance.bench.events",
            "gateway_port": PORT,
        }
    )
    settings = settings.model_copy(update={"database_url": await fresh_database(settings)})
    app = create_app(settings, with_reconciler=False)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", PORT)
    await site.start()
    gateway = f"http://127.0.0.1:{PORT}"
    headers = {"Authorization": f"Bearer {mint_token(settings, 'bench')}"}
    images = [two_megapixel_jpeg(i) for i in range(8)]
    latencies: list[float] = []
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
                async with ClientSession() as http:
                    # Warm up: process pool start-up and first connections.
                    for data in images[:3]:
                        await one_upload(http, gateway, headers, data)
                    for i in range(count):
                        latencies.append(
                            await one_upload(http, gateway, headers, images[i % len(images)])
                        )
                for consumer in consumers:
                    await consumer.drain(5)
    finally:
        await runner.cleanup()
    return latencies


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=50)
    parser.add_argument("--skip-thumbnails", action="store_true")
    args = parser.parse_args(argv)
    latencies = asyncio.run(run(args.uploads))
    p50, p99 = percentile(latencies, 0.50), percentile(latencies, 0.99)
    print(f"land → ready over {len(latencies)} uploads of a 2 MP JPEG (scan + verify + 2 WebP)")
    print(
        f"  p50 {p50:.0f} ms (goal ≤ 300)   p99 {p99:.0f} ms (goal ≤ 1000)   "
        f"mean {statistics.mean(latencies):.0f} ms   max {max(latencies):.0f} ms"
    )
    if not args.skip_thumbnails:
        print()
        sys.argv = [str(Path(__file__).with_name("thumbnails.py"))]
        runpy.run_path(sys.argv[0], run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
