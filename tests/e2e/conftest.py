"""Browser tests: the demo page in headless Chromium against the real stack.

A second gateway runs in this process on a fixed port, whose origin the suite's
bucket admits through CORS, with the development token route on; it shares the
suite's database, queues and bucket, so the suite's `workers` carry its uploads
through the pipeline. Chromium is Debian's `chromium` (`CLEARANCE_CHROMIUM`
overrides the path), driven by Playwright.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

from services.gateway.app import create_app
from shared.settings import Settings

# The browser tests' origin, listed in the default `cors_origins`.
E2E_PORT = 18280
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


@pytest.fixture(scope="session")
def e2e_settings(settings: Settings) -> Settings:
    """The suite's settings (its own database, queues and bucket) at the page's origin."""
    if E2E_ORIGIN not in settings.cors_origins:
        # The suite's bucket takes its CORS rules from this list (tests/conftest.py).
        pytest.fail(f"{E2E_ORIGIN} must be in cors_origins: storage would refuse the page")
    return settings.model_copy(
        update={"dev_token_endpoint": True, "gateway_port": E2E_PORT, "public_url": E2E_ORIGIN}
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
    """A page whose console errors fail the test (a broken module shows up there first)."""
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    yield page
    assert not errors, errors
