"""`POST /dev/token`: short-lived bearer tokens for the demo page, development only.

The route exists only when `dev_token_endpoint` is on (settings refuse that in
production); otherwise `/dev/token` is as absent as any unknown path (404).
"""

from __future__ import annotations

import secrets
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from services.gateway.appkeys import SETTINGS
from services.gateway.auth import mint_token
from services.gateway.base import BaseView, json_response
from shared.problems import ServiceUnavailable

PATH = "/dev/token"
DEFAULT_TTL = 900
MAX_TTL = 3600


class DevTokenRequest(BaseModel):
    """Who the token is for (a random `dev-…` subject if absent) and for how long."""

    model_config = ConfigDict(extra="forbid")

    subject: str | None = Field(
        default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._@-]+$"
    )
    ttl_seconds: int = Field(default=DEFAULT_TTL, ge=60, le=MAX_TTL, strict=True)


class DevToken(BaseModel):
    token: str
    subject: str
    expires_in: int


class DevTokenView(BaseView):
    async def post(self) -> web.Response:
        body = await self.parse(DevTokenRequest, empty_ok=True)
        subject = body.subject or f"dev-{secrets.token_hex(4)}"
        try:
            token = mint_token(self.request.app[SETTINGS], subject, ttl_seconds=body.ttl_seconds)
        except ValueError as exc:  # RS256 without a private key: nothing can sign
            raise ServiceUnavailable(f"development tokens can't be minted: {exc}") from None
        return json_response(
            DevToken(token=token, subject=subject, expires_in=body.ttl_seconds), status=201
        )


def add_dev_token_route(app: web.Application) -> None:
    """Register `POST /dev/token` if, and only if, the settings allow it."""
    if app[SETTINGS].dev_token_endpoint:
        app.router.add_view(PATH, DevTokenView)


def _inline(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema()


OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", PATH): {
        "summary": "Mint a short-lived development token (only with dev_token_endpoint on)",
        "security": [],
        "requestBody": {
            "required": False,
            "content": {"application/json": {"schema": _inline(DevTokenRequest)}},
        },
        "responses": {
            "201": {
                "description": "A bearer token",
                "content": {"application/json": {"schema": _inline(DevToken)}},
            },
            "422": {"description": "Invalid subject or lifetime"},
        },
    }
}
