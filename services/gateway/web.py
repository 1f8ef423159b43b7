"""The browser side: the demo page at `/` and the `clearance-upload.js` module.

Files come from `clients/web/` (read once at start-up). The page is a small
template: the gateway fills in the upload profiles and whether the development
token button is shown, so the page never guesses the configuration.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import importlib.resources
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson
from aiohttp import web

from services.gateway import devtoken
from services.gateway.appkeys import PRESIGNER, SETTINGS
from shared.problems import NotFound
from shared.settings import Settings

PAGE = "index.html"
# Assets served under /static/, with their media types. Nothing else is served.
ASSETS = {
    "clearance-upload.js": "text/javascript; charset=utf-8",
    "demo.js": "text/javascript; charset=utf-8",
    "demo.css": "text/css; charset=utf-8",
}

# Not versioned by name, so browsers revalidate each time: a 304 costs one round trip
# and an edited module is never stale.
ASSET_CACHE = "no-cache"
PAGE_CACHE = "no-cache"

# (method, path) → OpenAPI operation for the routes that always exist.
OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("GET", "/"): {
        "summary": "The demo page: drag-and-drop uploads with live progress through every stage",
        "security": [],
        "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}},
    },
    ("GET", "/static/{name}"): {
        "summary": "Browser assets: the `clearance-upload.js` module, the demo script and style",
        "security": [],
        "parameters": [
            {
                "name": "name",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "enum": sorted(ASSETS)},
            }
        ],
        "responses": {
            "200": {"description": "The asset (revalidate with If-None-Match)"},
            "304": {"description": "Not modified"},
            "404": {"description": "No such asset"},
        },
    },
}
# Routes that exist only in development (`dev_token_endpoint`).
DEV_OPERATIONS: dict[tuple[str, str], dict[str, Any]] = devtoken.OPERATIONS


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def _etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def content_security_policy(storage_origin: str) -> str:
    """Scripts and styles from the gateway only; bytes and thumbnails go to storage."""
    return "; ".join(
        (
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            f"img-src 'self' data: blob: {storage_origin}",
            f"connect-src 'self' {storage_origin}",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        )
    )


def render_page(template: str, settings: Settings) -> str:
    """Fill the page's placeholders; every value is HTML-escaped."""
    profiles = {
        name: sorted(policy.content_types) for name, policy in sorted(settings.profiles.items())
    }
    values = {
        "profiles": orjson.dumps(profiles).decode(),
        "default_profile": settings.default_profile,
        "dev_token": "on" if settings.dev_token_endpoint else "off",
    }
    for name, value in values.items():
        template = template.replace("{{" + name + "}}", html.escape(value, quote=True))
    return template


class DemoSite:
    """Serves the page and the allow-listed assets from memory."""

    def __init__(self) -> None:
        self._assets: dict[str, Asset] = {}
        self._page: bytes = b""
        self._page_etag = ""
        self._csp = ""

    async def load(self, app: web.Application) -> None:
        """Read the files once (start-up fails early if one is missing)."""
        folder = importlib.resources.files("clients.web")

        def read_all() -> dict[str, bytes]:
            return {name: folder.joinpath(name).read_bytes() for name in (PAGE, *ASSETS)}

        files = await asyncio.to_thread(read_all)
        self._assets = {
            name: Asset(files[name], ctype, _etag(files[name])) for name, ctype in ASSETS.items()
        }
        settings = app[SETTINGS]
        self._page = render_page(files[PAGE].decode("utf-8"), settings).encode("utf-8")
        self._page_etag = _etag(self._page)
        # The exact origin thumbnails and part URLs use (path- or virtual-hosted style).
        probe = app[PRESIGNER].presign_get(settings.bucket, "probe", expires_in=60)
        self._csp = content_security_policy(_origin(probe.url))

    async def page(self, request: web.Request) -> web.Response:
        headers = {
            "Cache-Control": PAGE_CACHE,
            "ETag": self._page_etag,
            "Content-Security-Policy": self._csp,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "X-Frame-Options": "DENY",
        }
        if _matches(request, self._page_etag):
            return web.Response(status=304, headers=headers)
        return web.Response(
            body=self._page, headers=headers, content_type="text/html", charset="utf-8"
        )

    async def asset(self, request: web.Request) -> web.Response:
        asset = self._assets.get(request.match_info["name"])
        if asset is None:
            raise NotFound("no such asset")
        headers = {
            "Cache-Control": ASSET_CACHE,
            "ETag": asset.etag,
            "X-Content-Type-Options": "nosniff",
        }
        if _matches(request, asset.etag):
            return web.Response(status=304, headers=headers)
        headers["Content-Type"] = asset.content_type
        return web.Response(body=asset.body, headers=headers)


def _matches(request: web.Request, etag: str) -> bool:
    wanted = request.headers.get("If-None-Match", "")
    return any(tag.strip().removeprefix("W/") == etag for tag in wanted.split(","))


def add_web_routes(app: web.Application) -> None:
    """Register the demo page, its assets and (in development) `POST /dev/token`."""
    site = DemoSite()
    app.on_startup.append(site.load)
    app.router.add_get("/", site.page)
    app.router.add_get("/static/{name}", site.asset)
    devtoken.add_dev_token_route(app)
