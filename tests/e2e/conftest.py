"""Browser tests: the demo page in headless Chromium against the real stack.

A second gateway runs in this process on a fixed port, whose origin the suite's
bucket admits through CORS, with the development token route on; it shares the
suite's database, queues and bucket, so the suite's `workers` carry its uploads
through the pipeline. The browser reaches storage through `StorageLink`, a TCP
proxy that can break a part upload half-way (the gateway presigns for the proxy's
address; the proxy passes the signed Host header through untouched). Chromium is
Debian's `chromium` (`CLEARANCE_CHROMIUM` overrides the path), driven by Playwright.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

from services.gateway.app import create_app
from shared.settings import Settings
from tests.support import BROWSER_PORTS

# The browser tests' origin, listed in the suite's `cors_origins` (tests/conftest.py).
E2E_PORT = BROWSER_PORTS["demo"]
E2E_ORIGIN = f"http://127.0.0.1:{E2E_PORT}"

# Headless on a closed network: no sandbox (containers), no GPU, and none of the
# background services that would dial out.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    configured = os.environ.get("CLEARANCE_CHROMIUM")
    if configured:
        return configured
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(
        "Chromium not found: install Debian's `chromium` or set CLEARANCE_CHROMIUM to its path"
    )


class StorageLink:
    """A TCP proxy from the browser to storage that breaks chosen part uploads half-way.

    It reads each request's head to know which part it carries; a part listed in
    `break_next` has its next attempt stopped after half its body, held for a moment
    (a stalled link: the browser has reported progress by then), then answered 503.
    """

    def __init__(self, upstream: str, *, stall_seconds: float = 0.4) -> None:
        target = urlsplit(upstream)
        self._host, self._port = target.hostname or "127.0.0.1", target.port or 80
        self._stall = stall_seconds
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.break_next: set[int] = set()
        self.broken: list[int] = []

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection(self._host, self._port)
        except OSError:
            writer.close()
            self._tasks.discard(task)
            return
        back = asyncio.create_task(self._copy(up_reader, writer))
        try:
            await self._forward_requests(reader, up_writer, writer, back)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the browser or storage hung up: so does the link
        finally:
            back.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await back
            for w in (up_writer, writer):
                w.close()
            self._tasks.discard(task)

    async def _forward_requests(
        self,
        reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
        writer: asyncio.StreamWriter,
        back: asyncio.Task[None],
    ) -> None:
        while True:  # one request after another on a keep-alive connection
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *lines = head.decode("latin-1").split("\r\n")
            method, target, _ = request_line.split(" ", 2)
            headers = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(":") for line in lines if ":" in line)
            }
            length = int(headers.get("content-length", "0"))
            numbers = parse_qs(urlsplit(target).query).get("partNumber", [])
            part = int(numbers[0]) if numbers else None
            breaking = method == "PUT" and part in self.break_next
            up_writer.write(head)
            left = length // 2 if breaking else length
            while left:
                chunk = await reader.read(min(left, 1 << 16))
                if not chunk:
                    return
                up_writer.write(chunk)
                await up_writer.drain()
                left -= len(chunk)
            if breaking:
                assert part is not None
                self.break_next.discard(part)
                self.broken.append(part)
                back.cancel()  # storage never gets the rest, nor answers it
                up_writer.close()
                await asyncio.sleep(self._stall)
                await self._refuse(writer, headers.get("origin"))
                return

    async def _refuse(self, writer: asyncio.StreamWriter, origin: str | None) -> None:
        body = b"<Error><Code>SlowDown</Code><Message>the link broke</Message></Error>"
        cors = f"Access-Control-Allow-Origin: {origin}\r\n" if origin else ""
        writer.write(
            (
                "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\n"
                f"Content-Length: {len(body)}\r\n{cors}Connection: close\r\n\r\n"
            ).encode()
            + body
        )
        await writer.drain()

    @staticmethod
    async def _copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        while chunk := await src.read(1 << 16):
            dst.write(chunk)
            await dst.drain()
        dst.close()


@pytest.fixture(scope="session")
async def storage_link(settings: Settings) -> AsyncIterator[tuple[StorageLink, str]]:
    link = StorageLink(settings.browser_s3_endpoint)
    url = await link.start()
    try:
        yield link, url
    finally:
        await link.close()


@pytest.fixture
def link(storage_link: tuple[StorageLink, str]) -> StorageLink:
    """The browser's link to storage, intact at the start of every test."""
    proxy, _ = storage_link
    proxy.break_next.clear()
    proxy.broken.clear()
    return proxy


@pytest.fixture(scope="session")
def e2e_settings(settings: Settings, storage_link: tuple[StorageLink, str]) -> Settings:
    """The suite's settings (its own database, queues and bucket) at the page's origin."""
    if E2E_ORIGIN not in settings.cors_origins:
        # The suite's bucket takes its CORS rules from this list (tests/conftest.py).
        pytest.fail(f"{E2E_ORIGIN} must be in cors_origins: storage would refuse the page")
    _, link_url = storage_link
    return settings.model_copy(
        update={
            "dev_token_endpoint": True,
            "gateway_port": E2E_PORT,
            "public_url": E2E_ORIGIN,
            "s3_public_endpoint_url": link_url,
        }
    )


@pytest.fixture(scope="session")
async def e2e_gateway(e2e_settings: Settings, database: str, stack_up: None) -> AsyncIterator[str]:
    """The real gateway serving the demo page at the browser tests' origin."""
    app: web.Application = create_app(e2e_settings)
    server = TestServer(app, host="127.0.0.1", port=E2E_PORT)
    try:
        await server.start_server()
    except OSError as exc:
        pytest.fail(f"port {E2E_PORT} for the browser tests is taken: {exc}")
    try:
        yield E2E_ORIGIN
    finally:
        await server.close()


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture
async def context(browser: Browser, e2e_gateway: str) -> AsyncIterator[BrowserContext]:
    """A fresh profile per test: its own localStorage and sessionStorage."""
    ctx = await browser.new_context(base_url=e2e_gateway, viewport={"width": 1100, "height": 900})
    try:
        yield ctx
    finally:
        await ctx.close()


@pytest.fixture
async def page(context: BrowserContext) -> AsyncIterator[Page]:
    """A page whose script errors and CSP violations fail the test."""
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    page.on(
        "console",
        lambda msg: errors.append(msg.text) if "Content Security Policy" in msg.text else None,
    )
    yield page
    assert not errors, errors
