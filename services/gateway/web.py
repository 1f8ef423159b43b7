"""The browser side: the demo page at `/` and the `clearance-upload.js` module."""

from __future__ import annotations

from typing import Any

from aiohttp import web

# (method, path) → OpenAPI operation for the routes added here.
OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {}


def add_web_routes(app: web.Application) -> None:
    """Register the demo page and static assets (see clients/web/)."""
