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
from typing import Protocol
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp import ClientSession
from PIL import Image
from playwright.async_api import FileChooser, FilePayload, Locator, Page, Request, Route, expect

from services.gateway.auth import mint_token
from shared.settings import MiB, Settings
from tests.support import make_jpeg, tiny_mp4

pytestmark = pytest.mark.integration

EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
BIG_SIZE = 110 * MiB
PART_SIZE = 8 * MiB  # the gateway's layout for 110 MiB: max(8 MiB, size / 10000)
PART_COUNT = -(-BIG_SIZE // PART_SIZE)
PIPELINE_TIMEOUT = 90_000  # ms: upload, scan and process 110 MiB on a busy 2-core machine

# A minimal ISO-BMFF `ftyp` box (brand isom): sniffed as video/mp4.
# A real, playable MP4: the processor decodes what follows the header now.
FTYP = tiny_mp4()

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


class BreakableLink(Protocol):
    """The browser's link to storage (the `link` fixture)."""

    break_next: set[int]  # parts whose next attempt breaks half-way
    broken: list[int]  # parts broken so far


@pytest.fixture(scope="module")
def big_mp4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """110 MiB that play as video/mp4: a small real MP4, then random bytes."""
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
    link: BreakableLink,
    e2e_gateway: str,
    cleanup: Callable[..., None],
) -> None:
    refused = {5}  # the first attempt fails before any byte is sent
    link.break_next = {2, 9}  # the first attempt breaks half-way, after progress was shown
    expired = 7  # the first attempt is answered 403, as for an expired URL: signed again
    attempts: Counter[int] = Counter()
    signed: list[list[int]] = []

    async def refuse_first_attempts(route: Route) -> None:
        n = part_number(route.request.url)
        if route.request.method == "PUT" and n is not None:
            attempts[n] += 1
            if n in refused and attempts[n] == 1:
                await route.abort("connectionreset")
                return
            if n == expired and attempts[n] == 1:
                await route.fulfill(
                    status=403,
                    body="<Error><Code>AccessDenied</Code><Message>Request has expired</Message>"
                    "</Error>",
                    headers={"Access-Control-Allow-Origin": e2e_gateway},
                )
                return
        await route.continue_()

    def on_request(request: Request) -> None:
        if request.method == "POST" and request.url.endswith("/parts"):
            signed.append(request.post_data_json["part_numbers"])

    page.on("request", on_request)
    await page.route(lambda url: part_number(url) is not None, refuse_first_attempts)
    await open_demo(page, owner_token)
    await page.set_input_files("#picker", big_mp4)

    big = card(page, "big.mp4")
    await expect(big).to_have_attribute("data-upload-id", re.compile(".+"))
    cleanup(await big.get_attribute("data-upload-id"), owner_token)
    await expect(big).to_have_attribute("data-phase", "ready", timeout=PIPELINE_TIMEOUT)

    assert sorted(link.broken) == [2, 9]
    assert {n for n, count in attempts.items() if count > 1} == {2, 5, 7, 9}
    assert sum(attempts.values()) == PART_COUNT + 4
    assert signed[0] == list(range(1, PART_COUNT + 1))  # signed ahead, in one batch
    assert signed[1:] == [[expired]]  # and part 7 once more after its 403
    history = await bar_history(page, "big.mp4")
    assert len(history) > PART_COUNT  # it really moved in steps
    assert all(a <= b for a, b in itertools.pairwise(history)), [
        (a, b) for a, b in itertools.pairwise(history) if b < a
    ]
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


@pytest.mark.timeout(180)
async def test_pause_then_resume_sends_every_part_exactly_once(
    page: Page,
    workers: None,
    big_mp4: Path,
    owner_token: str,
    cleanup: Callable[..., None],
) -> None:
    keep = 3
    holding = True
    stored: Counter[int] = Counter()
    landed = asyncio.Event()

    async def on_finished(request: Request) -> None:
        response = await request.response()
        if is_part_put(request) and response is not None and response.status == 200:
            n = part_number(request.url)
            assert n is not None
            stored[n] += 1
            if len(stored) >= keep:
                landed.set()

    async def hold_late_parts(route: Route) -> None:
        n = part_number(route.request.url)
        if holding and route.request.method == "PUT" and n is not None and n > keep:
            await route.abort("connectionreset")
            return
        await route.continue_()

    page.on("requestfinished", on_finished)
    await page.route(lambda url: part_number(url) is not None, hold_late_parts)
    await open_demo(page, owner_token)
    await page.set_input_files("#picker", big_mp4)
    big = card(page, "big.mp4")
    await expect(big).to_have_attribute("data-upload-id", re.compile(".+"))
    cleanup(await big.get_attribute("data-upload-id"), owner_token)
    async with asyncio.timeout(30):
        await landed.wait()

    await big.get_by_role("button", name="Pause").click()
    await expect(big).to_have_attribute("data-phase", "paused")
    holding = False
    await big.get_by_role("button", name="Resume").click()
    await expect(big).to_have_attribute("data-phase", "ready", timeout=PIPELINE_TIMEOUT)
    assert stored == Counter(range(1, PART_COUNT + 1))  # each part stored once, none resent
    history = await bar_history(page, "big.mp4")
    assert history[-1] == BIG_SIZE


async def test_cancel_after_pause_aborts_the_upload_and_forgets_it(
    page: Page,
    big_mp4: Path,
    owner_token: str,
    http: ClientSession,
    e2e_gateway: str,
    cleanup: Callable[..., None],
) -> None:
    async def only_the_first_part(route: Route) -> None:
        n = part_number(route.request.url)
        if route.request.method == "PUT" and n is not None and n > 1:
            await route.abort("connectionreset")
            return
        await route.continue_()

    await page.route(lambda url: part_number(url) is not None, only_the_first_part)
    await open_demo(page, owner_token)
    await page.set_input_files("#picker", big_mp4)
    big = card(page, "big.mp4")
    await expect(big).to_have_attribute("data-upload-id", re.compile(".+"))
    upload_id = await big.get_attribute("data-upload-id")
    cleanup(upload_id, owner_token)
    await big.get_by_role("button", name="Pause").click()
    await expect(big).to_have_attribute("data-phase", "paused")
    await expect(page.locator("#remembered")).to_contain_text("big.mp4")
    await big.get_by_role("button", name="Cancel").click()  # a paused upload can be dropped
    await expect(big).to_have_attribute("data-phase", "cancelled")
    await expect(page.locator("#remembered")).to_be_hidden()
    await expect(big.get_by_role("button", name="Retry")).to_be_visible()

    headers = {"Authorization": f"Bearer {owner_token}"}
    record_url = f"{e2e_gateway}/v1/uploads/{upload_id}"
    deadline = asyncio.get_running_loop().time() + 10
    while True:  # the DELETE is sent right after the click
        async with http.get(record_url, headers=headers) as resp:
            status = (await resp.json())["status"]
        if status == "aborted" or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.1)
    assert status == "aborted"
    remembered = await page.evaluate(
        "() => Object.keys(localStorage).filter((k) => k.startsWith('clearance-upload:'))"
    )
    assert remembered == []


async def test_a_dropped_status_stream_reconnects_with_last_event_id(
    page: Page, workers: None, owner_token: str, cleanup: Callable[..., None]
) -> None:
    asked: list[str | None] = []
    cut_after: list[str] = []

    async def break_the_first_stream(route: Route) -> None:
        asked.append(route.request.headers.get("last-event-id"))
        if len(asked) > 1:
            await route.continue_()
            return
        # The whole stream (it ends at the final state), cut after two events.
        upstream = await route.fetch(timeout=PIPELINE_TIMEOUT)
        frames = (await upstream.body()).split(b"\n\n")
        assert frames[0].startswith(b"retry:")
        cut_after.extend(re.findall(r"^id: (\d+)$", frames[2].decode(), re.M))
        await route.fulfill(
            status=200,
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"},
            body=b"\n\n".join(frames[:3]) + b"\n\n",
        )

    await page.route("**/v1/uploads/*/events", break_the_first_stream)
    await open_demo(page, owner_token)
    photo_file: FilePayload = {
        "name": "stream.jpg",
        "mimeType": "image/jpeg",
        "buffer": make_jpeg(),
    }
    await page.set_input_files("#picker", files=[photo_file])
    photo = card(page, "stream.jpg")
    await expect(photo).to_have_attribute("data-upload-id", re.compile(".+"))
    cleanup(await photo.get_attribute("data-upload-id"), owner_token)
    await expect(photo).to_have_attribute("data-phase", "ready", timeout=PIPELINE_TIMEOUT)
    await expect(photo.locator(".stages li.done")).to_have_count(4)
    # Reconnected once, from the last event it had, and got the rest.
    assert asked == [None, *cut_after]


async def test_the_event_stream_parser_follows_the_spec(page: Page, e2e_gateway: str) -> None:
    await open_demo(page)
    events = await page.evaluate(
        """async () => {
      const { readEventStream } = await import('/static/clearance-upload.js');
      const text = 'retry: 1500\\r\\n\\r\\n: heartbeat\\n\\nid: 7\\nevent: status\\n' +
        'data: {"état":1}\\r\\n\\rid: 8\\ndata: line one\\ndata:line two\\n\\n' +
        'event: ignored-without-data\\n\\ndata: unterminated';
      const bytes = new TextEncoder().encode(text);
      const runs = [];
      for (const step of [1, 2, 3, 5, 7, bytes.length]) {  // split anywhere, even mid-character
        const body = new ReadableStream({ start(c) {
          for (let i = 0; i < bytes.length; i += step) c.enqueue(bytes.slice(i, i + step));
          c.close();
        } });
        const out = [];
        for await (const e of readEventStream(body)) out.push(e);
        runs.push(out);
      }
      return runs;
    }"""
    )
    expected = [
        {"type": "status", "data": '{"état":1}', "id": "7", "retry": 1500},
        {"type": "message", "data": "line one\nline two", "id": "8", "retry": 1500},
    ]
    assert events == [expected] * 6


async def test_the_page_works_from_the_keyboard_and_announces_progress(
    page: Page, workers: None, cleanup: Callable[..., None]
) -> None:
    choosers: asyncio.Queue[FileChooser] = asyncio.Queue()
    # Listening from the start: Playwright intercepts the dialog only once told to.
    page.on("filechooser", choosers.put_nowait)
    await open_demo(page)
    await page.focus("#token")
    await page.keyboard.press("Tab")
    await expect(page.get_by_role("button", name="Get a dev token")).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(page.locator("#token")).to_have_value(re.compile(r"^ey"))
    await page.keyboard.press("Tab")
    await expect(page.get_by_role("button", name="Choose files…")).to_be_focused()
    await page.keyboard.press("Enter")
    async with asyncio.timeout(10):
        chooser = await choosers.get()
    keys_file: FilePayload = {"name": "keys.jpg", "mimeType": "image/jpeg", "buffer": make_jpeg()}
    await chooser.set_files(files=[keys_file])
    keys = card(page, "keys.jpg")
    await expect(keys).to_have_attribute("data-upload-id", re.compile(".+"))
    cleanup(await keys.get_attribute("data-upload-id"), await page.input_value("#token"))
    await expect(page.locator("#announcer")).to_have_text("keys.jpg is ready", timeout=30_000)
    await expect(keys.get_by_role("progressbar", name="Upload of keys.jpg")).to_be_visible()


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
