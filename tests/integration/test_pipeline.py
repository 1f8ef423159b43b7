"""The event pipeline end to end on the real stack: land → scan → process → ready.

The gateway (recorder, reconciler, SSE) and both workers run in this process
against the real RabbitMQ, PostgreSQL, SeaweedFS and clamd.
"""

from __future__ import annotations

import asyncio
import io
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aio_pika
import pytest
from aiohttp import ClientSession, web
from botocore.exceptions import ClientError
from PIL import Image
from prometheus_client import REGISTRY

from services.gateway.appkeys import POOL, PUBLISHER, S3, UPLOADS
from services.gateway.reconciler import Reconciler
from shared.amqp.topology import dlq_name
from shared.events import ObjectCreated
from shared.keys import quarantine_key
from shared.pipeline import scanner_queue
from shared.settings import Settings
from tests.support import EICAR, Uploads, eventually, make_jpeg, make_zip, patch_directory

pytestmark = pytest.mark.integration


@pytest.fixture
def uploads(http: ClientSession, gateway: str, owner_headers: dict[str, str]) -> Uploads:
    return Uploads(http, gateway, owner_headers)


def rotated_jpeg() -> bytes:
    """A 640×480 JPEG whose EXIF says 'rotate 90° clockwise' (orientation 6)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "Clearance Camera Co"
    exif[0x0110] = "Model 1"
    return make_jpeg(640, 480, exif=exif)


async def test_a_jpeg_reaches_ready_with_every_stage_streamed_in_order(
    uploads: Uploads, workers: None, http: ClientSession
) -> None:
    data = rotated_jpeg()
    created = await uploads.create(data, "image/jpeg")
    # Listen before the bytes land: the stream shows every stage live, then closes.
    stream = asyncio.create_task(uploads.events(created["id"]))
    await uploads.put(created, data)
    await uploads.complete(created["id"])
    async with asyncio.timeout(30):
        events = await stream
    assert [e["status"] for e in events] == [
        "pending",
        "uploaded",
        "scanning",
        "processing",
        "ready",
    ]
    assert [e["event_id"] for e in events] == sorted(e["seq"] for e in events)

    record = await uploads.get(created["id"])
    assert record["status"] == "ready"
    detected = record["detected"]
    assert (detected["width"], detected["height"]) == (480, 640)  # after EXIF orientation
    assert detected["type"] == "image/jpeg"
    assert detected["exif"]["camera_make"] == "Clearance Camera Co"
    sizes = {}
    for thumb in record["thumbnails"]:
        async with http.get(thumb["url"]) as resp:
            assert resp.status == 200
            image = Image.open(io.BytesIO(await resp.read()))
        assert image.format == "WEBP"
        assert not image.info.get("exif")
        sizes[thumb["size"]] = image.size
    assert sizes == {1024: (480, 640), 256: (192, 256)}

    # Resuming after the last event: nothing more comes, the stream just ends.
    assert await uploads.events(created["id"], last_event_id=events[-1]["event_id"]) == []
    # Resuming half-way replays only what came after.
    tail = await uploads.events(created["id"], last_event_id=events[1]["event_id"])
    assert [e["status"] for e in tail] == ["scanning", "processing", "ready"]

    async with http.get(
        f"{uploads.gateway}/v1/uploads/{created['id']}/download",
        headers=uploads.headers,
        allow_redirects=False,
    ) as resp:
        assert resp.status == 302
        assert resp.headers["X-Request-ID"]
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        location = resp.headers["Location"]
    async with http.get(location) as resp:
        assert await resp.read() == data
    async with http.get(f"{uploads.gateway}/metrics") as resp:
        metrics = await resp.text()
    download = 'route="/v1/uploads/{id}/download",status="302"'
    assert f'clearance_http_requests_total{{method="GET",{download}}}' in metrics
    # A `complete` retried after the pipeline finished is answered with the outcome.
    async with http.post(
        f"{uploads.gateway}/v1/uploads/{created['id']}/complete", json={}, headers=uploads.headers
    ) as resp:
        assert resp.status == 202
        assert (await resp.json())["status"] == "ready"


async def test_reusing_the_upload_url_after_the_scan_cannot_change_what_is_served(
    uploads: Uploads, workers: None, http: ClientSession
) -> None:
    original = make_jpeg()
    created = await uploads.create(original, "image/jpeg")
    await uploads.put(created, original)
    await uploads.complete(created["id"])
    assert (await uploads.wait_final(created["id"]))["status"] == "ready"
    # The signed URL is still valid: same length and type, other bytes. Storage takes it…
    swapped = bytes(b ^ 0xFF for b in original)
    await uploads.put(created, swapped)
    # …but downloads serve the version that was scanned and verified.
    async with http.get(
        f"{uploads.gateway}/v1/uploads/{created['id']}/download",
        headers=uploads.headers,
        allow_redirects=False,
    ) as resp:
        location = resp.headers["Location"]
    async with http.get(location) as resp:
        assert await resp.read() == original


async def test_eicar_is_infected_quarantined_and_never_downloadable(
    uploads: Uploads, workers: None, gateway_app: web.Application, settings: Settings
) -> None:
    upload_id = await uploads.send(EICAR)
    record = await uploads.wait_final(upload_id)
    assert record["status"] == "infected"
    assert "Eicar" in record["reason"]
    s3 = gateway_app[S3]
    moved = await s3.head_object(
        Bucket=settings.bucket, Key=quarantine_key(settings.quarantine_prefix, record["key"])
    )
    assert moved["ContentLength"] == len(EICAR)
    with pytest.raises(ClientError, match="Not Found"):
        await s3.head_object(Bucket=settings.bucket, Key=record["key"])
    async with uploads.http.get(
        f"{uploads.gateway}/v1/uploads/{upload_id}/download",
        headers=uploads.headers,
        allow_redirects=False,
    ) as resp:
        assert resp.status == 409


async def test_malware_inside_an_archive_is_found(uploads: Uploads, workers: None) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("docs/readme.txt", "nothing to see")
        archive.writestr("docs/eicar.com", EICAR)
    created = await uploads.http.post(
        f"{uploads.gateway}/v1/uploads",
        json={
            "filename": "bundle.zip",
            "content_type": "application/zip",
            "size": len(buf.getvalue()),
            "profile": "media",
        },
        headers=uploads.headers,
    )
    body = await created.json()
    await uploads.put(body, buf.getvalue())
    await uploads.complete(body["id"])
    record = await uploads.wait_final(body["id"])
    assert record["status"] == "infected"


async def test_an_archive_the_scanner_cannot_fully_scan_is_rejected(
    uploads: Uploads, workers: None
) -> None:
    # clamd scans only the first MaxFileSize bytes of a member and says OK; the
    # processor reads the directory and refuses what was not fully scanned.
    data = patch_directory(make_zip(**{"disk.img": b"\0" * 4096}), size=3_000_000_000)
    upload_id = await uploads.send(data, "application/zip", profile="media")
    record = await uploads.wait_final(upload_id)
    assert record["status"] == "rejected", record
    assert "disk.img" in record["reason"]


TESTFILES = Path("/usr/share/clamav-testfiles")


@pytest.mark.parametrize("name", ["clam.exe", "clam.zip", "clam.7z", "clam.mail", "clam.pdf"])
async def test_debian_clamav_testfiles_are_infected(
    uploads: Uploads, workers: None, name: str
) -> None:
    path = TESTFILES / name
    assert path.exists(), "install Debian's clamav-testfiles (the CI script does)"
    upload_id = await uploads.send(path.read_bytes())
    record = await uploads.wait_final(upload_id)
    assert record["status"] == "infected", record


def png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buf, "PNG")
    return buf.getvalue()


def bomb_png() -> bytes:
    """30000×30000 px of one colour: a few hundred KB that would decode to 2.7 GB."""
    buf = io.BytesIO()
    Image.new("1", (30000, 30000)).save(buf, "PNG", optimize=True)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("make", "content_type", "code"),
    [
        (png_bytes, "image/jpeg", "type_mismatch"),
        (bomb_png, "image/png", "decompression_bomb"),
        (lambda: make_jpeg()[:-2000], "image/jpeg", "corrupt"),
    ],
    ids=["png-declared-jpeg", "decompression-bomb", "truncated-jpeg"],
)
async def test_files_that_are_not_what_they_claim_are_rejected(
    uploads: Uploads, workers: None, make: Callable[[], bytes], content_type: str, code: str
) -> None:
    data = make()
    upload_id = await uploads.send(data, content_type)
    record = await uploads.wait_final(upload_id)
    assert record["status"] == "rejected", record
    assert record["reason"]
    assert record["timeline"][-1]["detail"]["code"] == code


async def test_a_duplicate_notification_is_scanned_and_processed_once(
    uploads: Uploads, workers: None, gateway_app: web.Application, settings: Settings
) -> None:
    upload_id = await uploads.send(make_jpeg())
    record = await uploads.wait_final(upload_id)
    assert record["status"] == "ready"
    s3 = gateway_app[S3]
    thumb_key = (
        record["key"].rsplit("/", 1)[0]
        + "/"
        + record["thumbnails"][0]["url"].split("?")[0].rsplit("/", 1)[1]
    )
    written = (await s3.head_object(Bucket=settings.bucket, Key=thumb_key))["LastModified"]
    head = await s3.head_object(Bucket=settings.bucket, Key=record["key"])
    duplicate = ObjectCreated.build(
        upload_id=record["id"],
        bucket=settings.bucket,
        key=record["key"],
        size=head["ContentLength"],
        etag=head["ETag"].strip('"'),
        source="seaweedfs",
    )
    before = {name: _sample(name) for name in WORK_COUNTERS}
    publisher = gateway_app[PUBLISHER]
    await asyncio.gather(publisher.publish(duplicate), publisher.publish(duplicate))
    # Both copies reach the scanner, which republishes its recorded verdict; the
    # processor gets those and republishes its recorded result. Nothing is redone.
    await eventually(
        lambda: _counted(before, "clearance_processing_duplicates_total", 2),
        timeout=20,
        what="two duplicate deliveries at the processor",
    )
    # (The counters also see other modules' late work: `>=`; the ledger below is exact.)
    assert (
        _sample("clearance_scan_duplicates_total") >= before["clearance_scan_duplicates_total"] + 2
    )
    after = (await s3.head_object(Bucket=settings.bucket, Key=thumb_key))["LastModified"]
    assert after == written  # thumbnails written once
    pool = gateway_app[POOL]
    claims = await pool.fetch(
        "SELECT stage, runs, cardinality(finished) AS finished FROM work_claims WHERE key = $1",
        record["key"],
    )
    assert sorted((r["stage"], r["runs"], r["finished"]) for r in claims) == [
        ("processing", 1, 1),
        ("scan", 1, 1),
    ]
    record = await uploads.get(upload_id)
    assert [e["status"] for e in record["timeline"]].count("ready") == 1
    assert (
        await pool.fetchval("SELECT count(*) FROM upload_events WHERE upload_id = $1", record["id"])
        == 5
    )


async def test_landings_reported_twice_at_once_are_scanned_and_processed_once_each(
    uploads: Uploads, workers: None, gateway_app: web.Application, settings: Settings
) -> None:
    # What every upload sees in production: the relay's notification and the client's
    # `complete` both report the landing, at about the same time.
    s3 = gateway_app[S3]
    publisher = gateway_app[PUBLISHER]
    files = [make_jpeg(320 + i, 240) for i in range(4)] + [EICAR]
    created = [await uploads.create(data, "image/jpeg") for data in files]
    for upload, data in zip(created, files, strict=True):
        await uploads.put(upload, data)
        head = await s3.head_object(Bucket=settings.bucket, Key=upload["key"])
        relayed = ObjectCreated.build(
            upload_id=upload["id"],
            bucket=settings.bucket,
            key=upload["key"],
            size=head["ContentLength"],
            etag=head["ETag"].strip('"'),
            source="seaweedfs",
        )
        await asyncio.gather(publisher.publish(relayed), uploads.complete(upload["id"]))
    records = [await uploads.wait_final(upload["id"]) for upload in created]
    assert [r["status"] for r in records] == ["ready"] * 4 + ["infected"]
    # The workers' counters count other modules' late work too; the ledger is exact.
    claims = await gateway_app[POOL].fetch(
        "SELECT key, stage, runs, cardinality(finished) AS finished FROM work_claims"
        " WHERE key = ANY($1::text[])",
        [upload["key"] for upload in created],
    )
    done = {(c["key"], c["stage"]): (c["runs"], c["finished"]) for c in claims}
    for upload, record in zip(created, records, strict=True):
        assert done[(upload["key"], "scan")] == (1, 1)
        if record["status"] == "ready":
            assert done[(upload["key"], "processing")] == (1, 1)
    for record in records:
        statuses = [e["status"] for e in record["timeline"]]
        assert len(statuses) == len(set(statuses)), statuses


WORK_COUNTERS = (
    "clearance_scans_total",
    "clearance_scan_duplicates_total",
    "clearance_processings_total",
    "clearance_processing_duplicates_total",
)


def _sample(name: str) -> float:
    """A counter of the in-process workers (they count on the default registry)."""
    return REGISTRY.get_sample_value(name) or 0.0


async def _counted(before: dict[str, float], name: str, more: int) -> bool:
    return _sample(name) >= before[name] + more


async def test_a_lost_notification_is_recovered_by_the_reconciler(
    uploads: Uploads, workers: None, gateway_app: web.Application, settings: Settings
) -> None:
    data = make_jpeg()
    created = await uploads.create(data, "image/jpeg")
    await uploads.put(created, data)  # no `complete`, and no relay listening: nothing reported
    assert (await uploads.get(created["id"]))["status"] == "pending"
    reconciler = Reconciler(gateway_app[UPLOADS])
    # A pass after the URL's deadline finds the object and starts the pipeline.
    report = await reconciler.run_once(now=datetime.now(UTC) + timedelta(hours=1))
    assert created["id"] in report.landed
    record = await uploads.wait_final(created["id"])
    assert record["status"] == "ready"
    assert record["timeline"][1]["actor"] == "reconciler"

    # One that never arrives expires.
    never = await uploads.create(data, "image/jpeg")
    report = await reconciler.run_once(now=datetime.now(UTC) + timedelta(hours=1))
    assert never["id"] in report.expired
    assert (await uploads.get(never["id"]))["status"] == "expired"


async def test_a_malformed_message_goes_to_the_dlq_and_the_queue_keeps_flowing(
    uploads: Uploads, workers: None, settings: Settings
) -> None:
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(settings.amqp_exchange)
        await exchange.publish(
            aio_pika.Message(b"{this is not an event", content_type="application/json"),
            routing_key="object.created",
        )
        dlq = await channel.get_queue(dlq_name(scanner_queue(settings).name))
        async with asyncio.timeout(15):
            while True:
                message = await dlq.get(fail=False)
                if message is not None and message.body == b"{this is not an event":
                    await message.ack()
                    break
                if message is not None:
                    await message.ack()
                await asyncio.sleep(0.05)
        assert message.headers["x-death-reason"]
    upload_id = await uploads.send(make_jpeg())
    assert (await uploads.wait_final(upload_id))["status"] == "ready"
