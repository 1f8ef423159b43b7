"""Stock Uppy (the published browser bundle) against the gateway's `/s3` routes.

Headless Chromium loads a page with Uppy's Dashboard and `AwsS3` pointed at the real
gateway (`companionEndpoint`), picks two files in the Dashboard and presses upload:
a 3 MiB JPEG goes as one POST-policy form upload, a 110 MiB MP4 as a multipart
upload (Uppy's default above 100 MiB). Both land in SeaweedFS with their sizes and
reach `ready` through the scanner and processor running in this process.

A tiny static server on a loopback port of the run's own serves the page and the
bundle; its origin is in the suite's `cors_origins` (and so in the bucket's CORS rules). It must
be a real loopback server: Chromium refuses calls from a page of unknown address
space (e.g. one fulfilled by request routing) to loopback services. Uppy comes from
npm, installed on first use into `tests/e2e/.node/` (git-ignored).

A POST-policy upload has no `complete` call: in production the storage notification
(relay → `object.created` → recorder) starts the pipeline. There is no relay here, so
the test publishes exactly the event the relay would for that object; the reconciler
path is covered by `tests/integration/test_companion.py`.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer
from PIL import Image
from playwright.async_api import Browser, Request

from services.gateway.appkeys import PRESIGNER, PUBLISHER, S3
from shared.events import ObjectCreated
from shared.keys import upload_id_from_key
from shared.settings import MiB, Settings
from tests.support import BROWSER_PORTS, Uploads, tiny_mp4

pytestmark = pytest.mark.integration

UPPY_VERSION = "6.0.1"
NODE_DIR = Path(__file__).parent / ".node"
PAGE = Path(__file__).parent / "uppy_page.html"
# Its origin is listed in the suite's `cors_origins`: the gateway and the bucket admit it.
PAGE_PORT = BROWSER_PORTS["uppy"]
BIG_SIZE = 110 * MiB
UPPY_PART = 5 * MiB  # Uppy's part size for this file: max(5 MiB, size / 10000)
# A real, playable MP4: the processor decodes what follows the header now.
MP4_HEADER = tiny_mp4()
ASSETS = {
    "/uppy/uppy.min.mjs": "text/javascript; charset=utf-8",
    "/uppy/uppy.min.css": "text/css; charset=utf-8",
}


@pytest.fixture(scope="session")
def uppy_dist() -> Path:
    """The `uppy` package's `dist/` (browser bundle + CSS), npm-installed on first use."""
    package = NODE_DIR / "node_modules" / "uppy" / "package.json"
    installed = package.exists() and json.loads(package.read_text())["version"] == UPPY_VERSION
    if not installed:
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("npm not found: install Debian's `npm` to fetch the Uppy bundle")
        done = subprocess.run(
            [npm, "install", "--prefix", str(NODE_DIR), "--no-audit", "--no-fund",
             "--loglevel=error", f"uppy@{UPPY_VERSION}"],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            pytest.fail(f"npm install uppy@{UPPY_VERSION} failed:\n{done.stderr[-2000:]}")
    return package.parent / "dist"


@pytest.fixture(scope="module")
async def page_origin(uppy_dist: Path) -> AsyncIterator[str]:
    """The page and the published bundle, served from the fixed origin."""

    async def page(request: web.Request) -> web.Response:
        return web.Response(body=PAGE.read_bytes(), content_type="text/html", charset="utf-8")

    async def asset(request: web.Request) -> web.Response:
        path = request.path
        if path not in ASSETS:
            raise web.HTTPNotFound()
        return web.Response(
            body=(uppy_dist / path.rsplit("/", 1)[1]).read_bytes(),
            headers={"Content-Type": ASSETS[path]},
        )

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_get("/uppy/{name}", asset)
    server = TestServer(app, host="127.0.0.1", port=PAGE_PORT)
    try:
        await server.start_server()
    except OSError as exc:
        pytest.fail(f"port {PAGE_PORT} for the Uppy page is taken: {exc}")
    try:
        yield f"http://127.0.0.1:{PAGE_PORT}"
    finally:
        await server.close()


def photo(path: Path) -> int:
    """A ~3 MiB JPEG of noise (2048×1536), written to `path`; returns its size."""
    image = Image.frombytes("RGB", (2048, 1536), os.urandom(2048 * 1536 * 3))
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=92)
    path.write_bytes(buf.getvalue())
    return len(buf.getvalue())


def clip(path: Path) -> int:
    """110 MiB that play as video/mp4: a small real MP4, then random bytes."""
    with path.open("wb") as out:
        out.write(MP4_HEADER)
        left = BIG_SIZE - len(MP4_HEADER)
        while left:
            chunk = min(left, 8 * MiB)
            out.write(os.urandom(chunk))
            left -= chunk
    return BIG_SIZE


@pytest.mark.timeout(240)
async def test_stock_uppy_uploads_a_photo_and_a_large_video_to_ready(
    browser: Browser,
    page_origin: str,
    gateway: str,
    gateway_app: web.Application,
    settings: Settings,
    http: ClientSession,
    token: Callable[..., str],
    workers: None,
    tmp_path: Path,
) -> None:
    assert page_origin in settings.cors_origins
    owner_token = token()
    uploads = Uploads(http, gateway, {"Authorization": f"Bearer {owner_token}"})
    sizes = {"photo.jpg": photo(tmp_path / "photo.jpg"), "clip.mp4": clip(tmp_path / "clip.mp4")}
    assert 2.8 * MiB < sizes["photo.jpg"] < 3.5 * MiB

    calls: list[str] = []

    def record_call(request: Request) -> None:
        if request.url.startswith(f"{gateway}/s3/") and request.method != "OPTIONS":
            path = request.url.removeprefix(gateway).split("?", 1)[0]
            calls.append(f"{request.method} {re.sub(r'/multipart/[^/]+', '/multipart/ID', path)}")

    context = await browser.new_context()
    try:
        await context.add_init_script(
            f"window.CLEARANCE = {json.dumps({'gateway': gateway, 'token': owner_token})};"
        )
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("request", record_call)
        await page.goto(f"{page_origin}/")
        await page.locator(".uppy-Dashboard-input").first.set_input_files(
            [tmp_path / "photo.jpg", tmp_path / "clip.mp4"]
        )
        await page.locator(".uppy-StatusBar-actionBtn--upload").click()
        handle = await page.wait_for_function("window.uppyResult", timeout=150_000)
        result = await handle.json_value()
        assert not errors, errors
    finally:
        await context.close()

    assert result["failed"] == [], result
    done = {f["name"]: f for f in result["successful"]}
    assert set(done) == set(sizes)
    # What stock Uppy really called: one POST policy, then a multipart upload whose
    # parts were signed one by one and completed through the gateway.
    parts = -(-BIG_SIZE // UPPY_PART)
    assert sorted(calls) == sorted(
        ["GET /s3/params", "POST /s3/multipart", "POST /s3/multipart/ID/complete"]
        + [f"GET /s3/multipart/ID/{n}" for n in range(1, parts + 1)]
    ), calls

    bucket_url = gateway_app[PRESIGNER].bucket_url(settings.bucket)
    ids = {}
    for name, size in sizes.items():
        key = done[name]["key"]
        assert done[name]["location"] == bucket_url + key
        upload_id = upload_id_from_key(settings.upload_prefix, key)
        assert upload_id is not None, key
        ids[name] = upload_id
        head = await gateway_app[S3].head_object(Bucket=settings.bucket, Key=key)
        assert head["ContentLength"] == size, name
        assert head["ServerSideEncryption"] == "AES256"

    # The photo's storage notification, as the relay would publish it.
    key = done["photo.jpg"]["key"]
    head = await gateway_app[S3].head_object(Bucket=settings.bucket, Key=key)
    await gateway_app[PUBLISHER].publish(
        ObjectCreated.build(
            upload_id=ids["photo.jpg"],
            bucket=settings.bucket,
            key=key,
            size=int(head["ContentLength"]),
            etag=str(head["ETag"]).strip('"'),
            source="seaweedfs",
        )
    )

    expected = {"photo.jpg": ("image", "image/jpeg"), "clip.mp4": ("media", "video/mp4")}
    for name, upload_id in ids.items():
        record = await uploads.wait_final(str(upload_id))
        assert record["status"] == "ready", record
        assert record["size"] == sizes[name]
        assert record["filename"] == name
        assert (record["profile"], record["detected"]["type"]) == expected[name]
    clip_record = await uploads.get(str(ids["clip.mp4"]))
    assert "uploading" in [t["status"] for t in clip_record["timeline"]]
