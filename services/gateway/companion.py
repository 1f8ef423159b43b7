"""Uppy Companion-compatible `/s3/...` routes, so stock `@uppy/aws-s3` works unchanged."""

from __future__ import annotations

from typing import Any

from aiohttp import web

# (method, path) → OpenAPI operation for the routes added here.
OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {}


def add_companion_routes(app: web.Application) -> None:
    """Register the `/s3/params` and `/s3/multipart...` routes."""
