"""What every gateway view shares: the owner, the upload service, JSON in and out."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from services.gateway.appkeys import OWNER, REQUEST_ID, SETTINGS, UPLOADS
from services.gateway.store import Upload
from services.gateway.uploads import UploadService
from shared.problems import (
    BadRequest,
    FieldError,
    NotFound,
    RequestTimeout,
    Unauthorized,
    UnsupportedMediaType,
    ValidationFailed,
)
from shared.settings import Settings

M = TypeVar("M", bound=BaseModel)


def json_response(
    model: BaseModel | dict[str, Any] | list[Any], *, status: int = 200
) -> web.Response:
    if isinstance(model, BaseModel):
        # pydantic's serializer writes the JSON itself (what `model_dump(mode="json")`
        # and a dumps would give, without the intermediate dict).
        body = model.__pydantic_serializer__.to_json(model)
    else:
        body = orjson.dumps(model)
    return web.Response(body=body, status=status, content_type="application/json")


def validation_errors(exc: ValidationError) -> list[FieldError]:
    """pydantic's errors as (dotted field, message) pairs."""
    return [
        FieldError(".".join(str(p) for p in err["loc"]) or "body", err["msg"])
        for err in exc.errors(include_url=False)
    ]


async def read_model(request: web.Request, model: type[M], *, empty_ok: bool = False) -> M:
    """The request's JSON object body as `model`; BadRequest or ValidationFailed if not."""
    # Bounded in size by the app's client_max_size (→ 413) and in time here, unless it
    # is all here already (a small body comes with the head): then no timer is armed.
    limit = None if request.content.is_eof() else request.app[SETTINGS].body_read_timeout_seconds
    try:
        async with asyncio.timeout(limit):
            raw = await request.read()
    except TimeoutError:
        raise RequestTimeout("the request body did not arrive in time") from None
    if not raw.strip():
        if empty_ok:
            return model.model_validate({})
        raise BadRequest("the request body must be a JSON object")
    media_type = request.content_type
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise UnsupportedMediaType(
            f"the request body must be sent as application/json, not {media_type[:100]}"
        )
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ValidationFailed(
            "the request body has invalid fields", errors=validation_errors(exc)
        ) from None


def whole_number(raw: str, *, max_digits: int = 9) -> int | None:
    """`raw` as a non-negative integer if it is ASCII digits only (and not too long).

    `str.isdigit` alone admits '²' and other Unicode digits `int` refuses, and `int`
    refuses strings over 4,300 digits: both would be server errors.
    """
    if 0 < len(raw) <= max_digits and raw.isascii() and raw.isdigit():
        return int(raw)
    return None


def owner_of(request: web.Request) -> str:
    """The authenticated owner (set by the auth middleware)."""
    try:
        return request[OWNER]
    except KeyError:
        raise Unauthorized("authentication required") from None


def correlation_id(request: web.Request, upload_id: uuid.UUID | None = None) -> str:
    return request.get(REQUEST_ID) or str(upload_id or uuid.uuid4())


class BaseView(web.View):
    """Settings, the upload service, the owner and body parsing for every view."""

    @property
    def settings(self) -> Settings:
        return self.request.app[SETTINGS]

    @property
    def uploads(self) -> UploadService:
        return self.request.app[UPLOADS]

    @property
    def owner(self) -> str:
        return owner_of(self.request)

    async def parse(self, model: type[M], *, empty_ok: bool = False) -> M:
        return await read_model(self.request, model, empty_ok=empty_ok)

    def upload_id(self) -> uuid.UUID:
        try:
            return uuid.UUID(self.request.match_info["id"])
        except ValueError:
            raise NotFound("no such upload") from None

    async def load(self) -> Upload:
        """The caller's upload (404 for anyone else's)."""
        return await self.uploads.get(self.upload_id(), self.owner)
