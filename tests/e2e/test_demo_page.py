"""The demo page and `clearance-upload.js` in headless Chromium, on the real stack.

Files are dropped or picked on the page like a user would; the bytes go from the
browser straight to SeaweedFS, through clamd and the processor, and the page shows
every stage. Storage failures are injected with Playwright's request routing.
"""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import os
import re
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp import ClientSession
from PIL import Image
from playwright.async_api import Locator, Page, Request, Route, expect

from services.gateway.auth import mint_token
from shared.settings import MiB, Settings

pytestmark = pytest.mark.integration

EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
BIG_SIZE = 110 * MiB
PART_SIZE = 8 * MiB  # the gateway's layout for 110 MiB: max(8 MiB, size / 10000)
PART_COUNT = -(-BIG_SIZE // PART_SIZE)
PIPELINE_TIMEOUT = 90_000  # ms: upload, scan and process 110 MiB on a busy 2-core machine

# A minimal ISO-BMFF `ftyp` box (brand isom): sniffed as video/mp4.
FTYP = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2"

# Records every value the page's progress bars go through (attribute history), so a
# bar that ever moved backwards is caught even between two samples.
WATCH_BARS = """() => {
  window.__bars = [];
  new MutationObserver((records) => {
    for (const r of records) {
      if (r.target.matches('progress.bar') && r.oldValue !== null) {
        window.__bars.push(Number(r.oldValue));
      }
    }
  }).observe(document.querySelector('#files'), {
    subtree: true, attributes: true, attributeFilter: ['value'], attributeOldValue: true,
  });
}"""

DROP_FILES = """(files) => {
  const dt = new DataTransfer();
  for (const f of files) {
    const bytes = f.b64 !== null
      ? Uint8Array.from(atob(f.b64), (c) => c.charCodeAt(0))
      : new Uint8Array(f.size);
    if (f.b64 === null) bytes.set([0xff, 0xd8, 0xff, 0xe0]);
    dt.items.add(new File([bytes], f.name, {type: f.type}));
  }
  return dt;
}"""


def colourful_jpeg() -> bytes:
    """A 640×480 photo-like JPEG (three crossing gradients), pleasant in a screenshot."""
    size = (640, 480)
    red = Image.linear_gradient("L").resize(size)
    green = Image.radial_gradient("L").resize(size)
    blue = Image.linear_gradient("L").rotate(90).resize(size)
    buf = io.BytesIO()
    Image.merge("RGB", (red, green, blue)).save(buf, "JPEG", quality=88)
    return buf.getvalue()


@pytest.fixture(scope="module")
def big_mp4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """110 MiB that sniff as video/mp4: an `ftyp` header, then random bytes."""
    path = tmp_path_factory.mktemp("media") / "big.mp4"
    with path.open("wb") as out:
        out.write(FTYP)
        left = BIG_SIZE - len(FTYP)
        while left:
            chunk = min(left, 8 * MiB)
            out.write(os.urandom(chunk))
            left -= chunk
    return path


@pytest.fixture
def owner_token(e2e_settings: Settings) -> str:
    return mint_token(e2e_settings, f"e2e-{uuid.uuid4().hex[:8]}", ttl_seconds=900)


@pytest.fixture
async def cleanup(http: ClientSession, e2e_gateway: str) -> AsyncIterator[Callable[..., None]]:
    """Delete the uploads a test made (big objects must not pile up in storage)."""
    made: list[tuple[str, str]] = []
    yield lambda upload_id, token: made.append((upload_id, token))
    for upload_id, token in made:
        async with http.delete(
            f"{e2e_gateway}/v1/uploads/{upload_id}", headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            assert resp.status in (204, 404), await resp.text()


async def open_demo(page: Page, token: str | None = None) -> None:
    await page.goto("/")
    await expect(page.locator("body")).to_have_attribute("data-ready", "true")
    if token is not None:
        await page.fill("#token", token)
    await page.evaluate(WATCH_BARS)


def card(page: Page, name: str) -> Locator:
    return page.locator(f'.card[data-file="{name}"]')


def part_number(url: str) -> int | None:
    numbers = parse_qs(urlsplit(url).query).get("partNumber")
    return int(numbers[0]) if numbers else None


def is_part_put(request: Request) -> bool:
    return request.method == "PUT" and part_number(request.url) is not None


def part_length(n: int) -> int:
    return PART_SIZE if n < PART_COUNT else BIG_SIZE - PART_SIZE * (PART_COUNT - 1)


async def bar_history(page: Page, name: str) -> list[int]:
    history: list[int] = await page.evaluate("() => window.__bars")
    current = await card(page, name).locator("progress.bar").evaluate("(bar) => bar.value")
    return [*history, int(current)]


async def test_three_files_dropped_at_once_end_ready_refused_and_infected(
    page: Page, workers: None, tmp_path: Path, http: ClientSession, e2e_gateway: str
) -> None:
    storage_puts: list[str] = []
    page.on("request", lambda r: storage_puts.append(r.url) if r.method == "PUT" else None)
    await open_demo(page)
    await page.get_by_role("button", name="Get a dev token").click()
    await expect(page.locator("#token-status")).to_contain_text("Development token for dev-")

    photo_bytes = base64.b64encode(colourful_jpeg()).decode()
    files = [
        {"name": "photo.jpg", "type": "image/jpeg", "b64": photo_bytes},
        {"name": "huge.jpg", "type": "image/jpeg", "b64": None, "size": 11_000_000},
        {"name": "eicar.jpg", "type": "image/jpeg", "b64": base64.b64encode(EICAR).decode()},
    ]
    transfer = await page.evaluate_handle(DROP_FILES, files)
    await page.dispatch_event("#dropzone", "drop", {"dataTransfer": transfer})

    photo, huge, eicar = card(page, "photo.jpg"), card(page, "huge.jpg"), card(page, "eicar.jpg")
    # The oversized file is refused by the policy before any byte leaves the browser.
    await expect(huge).to_have_attribute("data-phase", "refused")
    await expect(huge.locator(".error")).to_have_text(
        re.compile(r"Refused before upload: .*size must be at most 10000000 bytes")
    )
    await expect(huge.get_by_role("button", name="Retry")).to_be_visible()

    await expect(photo).to_have_attribute("data-phase", "ready", timeout=PIPELINE_TIMEOUT)
    thumbnail = photo.get_by_role("img", name="Thumbnail of photo.jpg")
    await expect(thumbnail).to_be_visible()
    await page.wait_for_function(
        "(img) => img.complete && img.naturalWidth > 0", arg=await thumbnail.element_handle()
    )
    await expect(photo.locator(".meta")).to_contain_text("640 × 480")
    await expect(photo.locator(".stages li.done")).to_have_count(4)

    await expect(eicar).to_have_attribute("data-phase", "infected", timeout=PIPELINE_TIMEOUT)
    await expect(eicar.locator(".error")).to_have_text(re.compile(r"^infected: \S*Eicar", re.I))
    await expect(eicar.locator(".stages li.bad")).to_have_text("scanning")
    await expect(eicar.get_by_role("button", name="Retry")).to_be_visible()

    # Only the two accepted files were sent to storage, once each.
    assert len(storage_puts) == 2, storage_puts
    assert await page.locator("#announcer").get_attribute("aria-live") == "polite"

    await page.screenshot(path=tmp_path / "demo.png", full_page=True)
    if target := os.environ.get("CLEARANCE_DEMO_SCREENSHOT"):
        await page.screenshot(path=target, full_page=True)


@pytest.mark.timeout(180)
async def test_failed_parts_are_retried_and_the_bar_never_goes_back(
    page: Page,
    workers: None,
    big_mp4: Path,
    owner_token: str,
    cleanup: Callable[..., None],
) -> None:
    flaky = {2, 5, 9}  # the first attempt of each is cut
    attempts: Counter[int] = Counter()

    async def cut_first_attempts(route: Route) -> None:
        n = part_number(route.request.url)
        if route.request.method == "PUT" and n is not None:
            attempts[n] += 1
            if n in flaky and attempts[n] == 1:
                await route.abort("connectionreset")
                return
        await route.continue_()

    await page.route(lambda url: part_number(url) is not None, cut_first_attempts)
    await open_demo(page, owner_token)
    await page.set_input_files("#picker", big_mp4)

    big = card(page, "big.mp4")
    await expect(big).to_have_attribute("data-upload-id", re.compile(".+"))
    cleanup(await big.get_attribute("data-upload-id"), owner_token)
    await expect(big).to_have_attribute("data-phase", "ready", timeout=PIPELINE_TIMEOUT)

    assert {n for n, count in attempts.items() if count > 1} == flaky
    assert sum(attempts.values()) == PART_COUNT + len(flaky)
    history = await bar_history(page, "big.mp4")
    assert len(history) > PART_COUNT  # it really moved in steps
    assert all(a <= b for a, b in itertools.pairwise(history)), history
    assert history[-1] == BIG_SIZE
    await expect(big.locator(".meta")).to_contain_text("video/mp4")


@pytest.mark.timeout(240)
async def test_a_reload_half_way_resumes_with_only_the_missing_parts(
    page: Page,
    workers: None,
    big_mp4: Path,
    owner_token: str,
    cleanup: Callable[..., None],
) -> None:
    keep = 6  # parts 1..6 land before the reload; every later part is cut until then
    landed = asyncio.Event()
    sent: dict[str, list[int]] = {"before": [], "after": []}
    phase = "before"

    async def on_finished(request: Request) -> None:
        during = phase
        response = await request.response()
        if not is_part_put(request) or response is None or response.status != 200:
            return
        sizes = await request.sizes()
        sent[during].append(sizes["requestBodySize"])
        if during == "before" and len(sent["before"]) >= keep:
            landed.set()

    async def cut_late_parts_until_reload(route: Route) -> None:
        n = part_number(route.request.url)
        if phase == "before" and route.request.method == "PUT" and n is not None and n > keep:
            await route.abort("connectionreset")
            return
        await route.continue_()  # routed requests report their body sizes

    page.on("requestfinished", on_finished)
    await page.route(lambda url: part_number(url) is not None, cut_late_parts_until_reload)
    await open_demo(page, owner_token)
    await page.set_input_files("#picker", big_mp4)
    big = card(page, "big.mp4")
    await expect(big).to_have_attribute("data-upload-id", re.compile(".+"))
    upload_id = await big.get_attribute("data-upload-id")
    assert upload_id is not None
    cleanup(upload_id, owner_token)
    async with asyncio.timeout(30):
        await landed.wait()

    await page.reload()  # mid-upload: the later parts are still being retried
    phase = "after"
    await expect(page.locator("body")).to_have_attribute("data-ready", "true")
    await expect(page.locator("#remembered")).to_contain_text("big.mp4")
    await expect(page.locator("#token")).to_have_value(owner_token)  # kept for the tab
    await page.evaluate(WATCH_BARS)

    await page.set_input_files("#picker", big_mp4)
    big = card(page, "big.mp4")
    await expect(big).to_have_attribute("data-phase", "ready", timeout=PIPELINE_TIMEOUT)
    assert await big.get_attribute("data-upload-id") == upload_id  # the same upload, resumed
    assert sum(sent["before"]) == keep * PART_SIZE
    assert sum(sent["after"]) == BIG_SIZE - keep * PART_SIZE
    assert sorted(sent["after"]) == sorted(part_length(n) for n in range(keep + 1, PART_COUNT + 1))
    history = await bar_history(page, "big.mp4")
    # The bar starts where the first session stopped, and only moves on.
    assert next(b for b in history if b > 0) >= keep * PART_SIZE
    assert all(a <= b for a, b in itertools.pairwise(history))
    remembered = await page.evaluate(
        "() => Object.keys(localStorage).filter((k) => k.startsWith('clearance-upload:'))"
    )
    assert remembered == []  # forgotten once completed


# ---- the gateway's side of the page (no browser) -------------------------------------


async def test_dev_token_route_is_absent_unless_enabled(http: ClientSession, gateway: str) -> None:
    async with http.post(f"{gateway}/dev/token", json={}) as resp:
        assert resp.status == 404
        assert resp.content_type == "application/problem+json"


async def test_dev_tokens_are_short_lived_and_accepted(
    http: ClientSession, e2e_gateway: str
) -> None:
    async with http.post(f"{e2e_gateway}/dev/token", json={"subject": "alice"}) as resp:
        assert resp.status == 201
        minted = await resp.json()
    assert minted["subject"] == "alice"
    assert minted["expires_in"] <= 3600
    headers = {"Authorization": f"Bearer {minted['token']}"}
    async with http.get(f"{e2e_gateway}/v1/uploads", headers=headers) as resp:
        assert resp.status == 200
    for bad in ({"subject": "../etc"}, {"ttl_seconds": 86400}, {"ttl_seconds": "60"}):
        async with http.post(f"{e2e_gateway}/dev/token", json=bad) as resp:
            assert resp.status == 422, bad
            assert resp.content_type == "application/problem+json"


async def test_page_and_module_are_served_with_csp_types_and_revalidation(
    http: ClientSession, e2e_gateway: str, e2e_settings: Settings
) -> None:
    async with http.get(f"{e2e_gateway}/") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/html"
        csp = resp.headers["Content-Security-Policy"]
        page = await resp.text()
    assert "script-src 'self'" in csp
    assert f"connect-src 'self' {e2e_settings.browser_s3_endpoint}" in csp
    assert "frame-ancestors 'none'" in csp
    assert 'data-dev-token="on"' in page
    assert "{{" not in page

    async with http.get(f"{e2e_gateway}/static/clearance-upload.js") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/javascript")
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        etag = resp.headers["ETag"]
        assert "export class ClearanceUploader" in await resp.text()
    async with http.get(
        f"{e2e_gateway}/static/clearance-upload.js", headers={"If-None-Match": etag}
    ) as resp:
        assert resp.status == 304
    async with http.get(f"{e2e_gateway}/static/demo.css") as resp:
        assert resp.headers["Content-Type"].startswith("text/css")
    for missing in ("/static/nothing.js", "/static/..%2Fapp.py", "/static/index.html"):
        async with http.get(f"{e2e_gateway}{missing}") as resp:
            assert resp.status == 404, missing
            assert resp.content_type == "application/problem+json"
