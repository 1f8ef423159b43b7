"""The compose deployment as a user meets it: one of each, then scaled out, then replicas killed.

Order matters and is kept: the contract on the fresh deployment first, then
`--scale gateway=2 scanner=2 processor=2` and a concurrent batch, then a scanner
and a gateway killed while a batch is in flight.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image

from tests.deploy.client import DeploymentClient
from tests.deploy.conftest import EDGE, STORAGE, Deployment, report
from tests.support import make_jpeg, mp4_like

pytestmark = pytest.mark.timeout(900)

MiB = 1024 * 1024
EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
PIPELINE = ["pending", "uploaded", "scanning", "processing", "ready"]


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), "red").save(buf, "PNG")
    return buf.getvalue()


# (bytes, declared type, expected final status): the mix every batch sends.
def kinds() -> dict[str, tuple[bytes, str, str]]:
    return {
        "jpeg": (make_jpeg(), "image/jpeg", "ready"),
        "eicar": (EICAR, "image/jpeg", "infected"),
        "spoofed": (png(), "image/jpeg", "rejected"),
    }


@pytest.fixture(scope="module")
def client(deployment: Deployment, http: aiohttp.ClientSession) -> DeploymentClient:
    token = deployment.token("deploy-tests")
    assert token.count(".") == 2, token  # a JWT
    return DeploymentClient(http, EDGE, token)


def at(entry: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(entry["at"].replace("Z", "+00:00"))


def check_timeline(record: dict[str, Any], expected: str) -> None:
    """Final as expected, and no status twice (so exactly one `ready` where ready)."""
    statuses = [e["status"] for e in record["timeline"]]
    assert record["status"] == expected, record
    assert len(statuses) == len(set(statuses)), statuses
    assert statuses[-1] == expected, statuses
    assert statuses.count("ready") == (1 if expected == "ready" else 0), statuses


async def test_health_demo_page_and_presigned_urls_point_at_published_ports(
    http: aiohttp.ClientSession, client: DeploymentClient
) -> None:
    async with http.get(f"{EDGE}/readyz") as resp:
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["checks"] == {"database": "ok", "storage": "ok", "broker": "ok"}
    async with http.get(f"{EDGE}/") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/html"
        assert STORAGE in resp.headers["Content-Security-Policy"]  # the page may PUT there
    async with http.get(f"{EDGE}/static/clearance-upload.js") as resp:
        assert resp.status == 200
    created = await client.create(make_jpeg(), "image/jpeg")
    assert created["upload"]["url"].startswith(f"{STORAGE}/")
    # Storage itself is locked down: anonymous requests are refused.
    async with http.get(f"{STORAGE}/") as resp:
        assert resp.status == 403


async def test_a_single_put_reaches_ready_with_thumbnails_streamed_over_sse(
    http: aiohttp.ClientSession, client: DeploymentClient
) -> None:
    data = make_jpeg(1600, 1200)
    created = await client.create(data, "image/jpeg")
    stream = asyncio.create_task(client.follow(created["id"]))
    await client.put_bytes(created["upload"]["url"], created["upload"]["headers"], data)
    await client.call("POST", f"/v1/uploads/{created['id']}/complete", json={}, expect=202)
    events = await stream
    statuses = [e["status"] for e in events]
    # Every stage streamed in order, once. (The recorder may fold `uploaded` into
    # `scanning` when the scanner's event is recorded first: it never goes back.)
    assert statuses[0] == "pending"
    assert statuses[-1] == "ready"
    assert statuses == sorted(set(statuses), key=PIPELINE.index), statuses
    assert {"scanning", "processing"} <= set(statuses), statuses
    record = await client.record(created["id"])
    check_timeline(record, "ready")
    assert record["detected"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert {t["size"] for t in record["thumbnails"]} == {1024, 256}
    for thumb in record["thumbnails"]:
        assert thumb["url"].startswith(f"{STORAGE}/")
        async with http.get(thumb["url"]) as resp:
            assert resp.status == 200
            assert (await resp.read())[8:12] == b"WEBP"


async def test_eicar_is_infected_and_a_spoofed_type_is_rejected(client: DeploymentClient) -> None:
    infected = await client.send(EICAR, "image/jpeg", filename="eicar.jpg")
    spoofed = await client.send(png(), "image/jpeg", filename="not-a.jpg")
    infected_events, spoofed_events = await asyncio.gather(
        client.follow(infected), client.follow(spoofed)
    )
    assert infected_events[-1]["status"] == "infected"
    assert spoofed_events[-1]["status"] == "rejected"
    check_timeline(await client.record(infected), "infected")
    rejected = await client.record(spoofed)
    check_timeline(rejected, "rejected")
    assert rejected["reason"]
    async with client.http.get(
        f"{EDGE}/v1/uploads/{infected}/download", headers=client.headers, allow_redirects=False
    ) as resp:
        assert resp.status == 409  # never served


async def test_an_upload_whose_webhook_was_lost_is_caught_up_from_the_filer_log(
    deployment: Deployment, client: DeploymentClient
) -> None:
    """Relay down while the bytes land, and no `complete` call: only the relay's catch-up
    (`weed filer.meta.tail` against the seaweedfs service) can move this upload on."""
    await asyncio.to_thread(deployment.run, "stop", "relay")
    try:
        data = make_jpeg()
        created = await client.create(data, "image/jpeg")
        await client.put_bytes(created["upload"]["url"], created["upload"]["headers"], data)
        assert (await client.record(created["id"]))["status"] == "pending"
    finally:
        await asyncio.to_thread(deployment.run, "up", "--detach", "--wait", "relay")
    events = await client.follow(created["id"])
    assert events[-1]["status"] == "ready", events
    record = await client.record(created["id"])
    check_timeline(record, "ready")
    # Landed through storage's own log (not `complete`, and long before the reconciler).
    for entry in record["timeline"]:
        if entry["status"] == "uploaded":
            assert entry["detail"]["via"] == "seaweedfs", entry


async def test_the_demo_page_at_the_published_url_takes_a_photo_to_ready(
    deployment: Deployment, tmp_path: Path
) -> None:
    """A user's view: the page from the edge, a pasted token, a dropped photo, a thumbnail."""
    from playwright.async_api import async_playwright, expect

    from tests.e2e.conftest import CHROMIUM_ARGS, chromium_path

    token = deployment.token("demo-page")
    photo = base64.b64encode(make_jpeg()).decode()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = await browser.new_page(viewport={"width": 1100, "height": 800})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(f"{EDGE}/")
            await expect(page.locator("body")).to_have_attribute("data-ready", "true")
            await page.fill("#token", token)
            transfer = await page.evaluate_handle(
                """(b64) => {
                  const dt = new DataTransfer();
                  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
                  dt.items.add(new File([bytes], "photo.jpg", {type: "image/jpeg"}));
                  return dt;
                }""",
                photo,
            )
            await page.dispatch_event("#dropzone", "drop", {"dataTransfer": transfer})
            card = page.locator('.card[data-file="photo.jpg"]')
            await expect(card).to_have_attribute("data-phase", "ready", timeout=90_000)
            thumbnail = card.get_by_role("img", name="Thumbnail of photo.jpg")
            await page.wait_for_function(
                "(img) => img.complete && img.naturalWidth > 0",
                arg=await thumbnail.element_handle(),
            )
            await page.screenshot(path=tmp_path / "demo.png", full_page=True)
            if target := os.environ.get("CLEARANCE_DEMO_SCREENSHOT"):
                await page.screenshot(path=target, full_page=True)
            assert not errors, errors
        finally:
            await browser.close()


async def test_a_120_mib_multipart_upload_reaches_ready(client: DeploymentClient) -> None:
    data = mp4_like(120 * MiB)
    started = time.monotonic()
    upload_id = await client.send_multipart(data, "video/mp4")
    sent = time.monotonic() - started
    events = await client.follow(upload_id)
    assert events[-1]["status"] == "ready", events
    record = await client.record(upload_id)
    check_timeline(record, "ready")
    assert record["size"] == len(data)
    assert record["detected"]["sha256"] == hashlib.sha256(data).hexdigest()
    report(
        f"120 MiB multipart: sent in {sent:.1f}s ({120 / sent:.0f} MiB/s), "
        f"ready {time.monotonic() - started:.1f}s after the first byte"
    )


async def run_batch(
    client: DeploymentClient,
    plan: list[str],
    *,
    concurrency: int | None = None,
    midway: asyncio.Event | None = None,
) -> tuple[float, list[tuple[str, str, dict[str, Any]]]]:
    """Send every upload of `plan` (kinds), follow each to its final state.

    Returns the wall time and (kind, expected, record) per upload. `midway` is set
    once a quarter of the uploads have been completed (their bytes landed).
    """
    mix = kinds()
    gate = asyncio.Semaphore(concurrency or len(plan))
    completed = 0

    async def one(index: int, kind: str) -> tuple[str, str, dict[str, Any]]:
        nonlocal completed
        data, content_type, expected = mix[kind]
        async with gate:
            upload_id = await client.send(data, content_type, filename=f"{kind}-{index}.jpg")
            completed += 1
            if midway is not None and completed >= len(plan) // 4:
                midway.set()
            events = await client.follow(upload_id)
        assert events[-1]["status"] == expected, (kind, upload_id, events)
        return kind, expected, await client.record(upload_id)

    started = time.monotonic()
    results = await asyncio.gather(*(one(i, k) for i, k in enumerate(plan)))
    return time.monotonic() - started, results


def land_to_ready(results: list[tuple[str, str, dict[str, Any]]]) -> list[float]:
    """Seconds from `uploaded` (the object landed) to `ready`, per ready upload."""
    out = []
    for _, expected, record in results:
        if expected == "ready":
            entries = {e["status"]: e for e in record["timeline"]}
            # With two recorders, `scan.started` may be applied before `object.created`
            # (the state machine lets a late event skip a stage): the first of them is
            # when the object had landed.
            landed = next(
                entries[s] for s in ("uploaded", "scanning", "processing") if s in entries
            )
            out.append((at(entries["ready"]) - at(landed)).total_seconds())
    return sorted(out)


def percentile(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


def batch_plan(count: int) -> list[str]:
    """Mostly photos, with 5 % infected and 5 % spoofed files among them."""
    return ["eicar" if i % 20 == 7 else "spoofed" if i % 20 == 13 else "jpeg" for i in range(count)]


async def test_scaled_out_200_concurrent_uploads_all_reach_their_final_state(
    deployment: Deployment, client: DeploymentClient
) -> None:
    started = time.monotonic()
    await asyncio.to_thread(deployment.scale, gateway=2, scanner=2, processor=2)
    report(f"scale to gateway=2 scanner=2 processor=2: {time.monotonic() - started:.1f}s")
    for service in ("gateway", "scanner", "processor"):
        assert len(deployment.containers(service)) == 2, service

    plan = batch_plan(200)
    retries_before, races_before = client.stats.retries, client.stats.complete_races
    wall, results = await run_batch(client, plan)
    for _, expected, record in results:
        check_timeline(record, expected)
    latencies = land_to_ready(results)
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    report(
        f"scaled batch: {len(plan)} concurrent uploads in {wall:.1f}s "
        f"({len(plan) / wall:.1f} uploads/s), land→ready p50 {p50 * 1000:.0f} ms, "
        f"p99 {p99 * 1000:.0f} ms ({len(latencies)} ready, "
        f"{client.stats.retries - retries_before} client retries, "
        f"{client.stats.complete_races - races_before} completes overtaken by the pipeline)"
    )
    # Both gateways served: the edge spread the load.
    edge_log = deployment.logs("edge", tail=2000)
    assert "gateways/gateway1 " in edge_log
    assert "gateways/gateway2 " in edge_log


async def test_a_killed_scanner_and_a_killed_gateway_lose_nothing(
    deployment: Deployment, client: DeploymentClient
) -> None:
    scanner, gateway = deployment.containers("scanner")[0], deployment.containers("gateway")[0]
    plan = batch_plan(120)
    midway = asyncio.Event()
    batch = asyncio.create_task(run_batch(client, plan, concurrency=40, midway=midway))
    await asyncio.wait_for(midway.wait(), timeout=120)
    # Off the event loop: the batch's clients keep going while docker works.
    await asyncio.to_thread(deployment.kill, scanner, gateway)
    killed_at = time.monotonic()
    wall, results = await batch
    for _, expected, record in results:
        check_timeline(record, expected)
    latencies = land_to_ready(results)
    report(
        f"kill run: scanner {scanner[:12]} and gateway {gateway[:12]} killed mid-batch; "
        f"{len(plan)} uploads all final as expected in {wall:.1f}s "
        f"({time.monotonic() - killed_at:.1f}s after the kill), land→ready p99 "
        f"{percentile(latencies, 99) * 1000:.0f} ms, {client.stats.retries} client retries, "
        f"{client.stats.reconnects} stream reconnects"
    )
    # The deployment heals: `up --wait` brings the replicas back to their number.
    await asyncio.to_thread(deployment.scale, gateway=2, scanner=2, processor=2)
    async with client.http.get(f"{EDGE}/readyz") as resp:
        assert resp.status == 200
