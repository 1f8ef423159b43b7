"""S3 access shared by the services: one client per process, built at start-up.

The gateway signs URLs with our own presigner (`shared.presign`) and uses the
aioboto3 client only for the few calls that really go to storage (HEAD, delete,
multipart control); workers use it to stream objects.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from shared.presign import Credentials, Presigner
from shared.settings import Settings


def credentials(settings: Settings) -> Credentials:
    return Credentials(settings.s3_access_key, settings.s3_secret_key.get_secret_value())


def browser_presigner(settings: Settings) -> Presigner:
    """Signs URLs for the endpoint that clients (browsers, CLI) can reach."""
    return Presigner(
        endpoint_url=settings.browser_s3_endpoint,
        region=settings.s3_region,
        credentials=credentials(settings),
        addressing_style=settings.s3_addressing_style,
    )


def storage_signer(settings: Settings) -> Presigner:
    """Signs the requests a service sends to storage itself (its own endpoint)."""
    return Presigner(
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        credentials=credentials(settings),
        addressing_style=settings.s3_addressing_style,
    )


@asynccontextmanager
async def s3_client(settings: Settings) -> AsyncIterator[Any]:
    """An aiobotocore S3 client with timeouts and bounded retries on every call."""
    # Imported here: aioboto3 costs ~0.5 s, and tools that only name S3 errors skip it.
    import aioboto3
    from aiobotocore.config import AioConfig

    session = aioboto3.Session()
    config = AioConfig(
        signature_version="s3v4",
        s3={"addressing_style": settings.s3_addressing_style},
        connect_timeout=5,
        read_timeout=60,
        retries={"max_attempts": 3, "mode": "standard"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    async with session.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key,
        aws_secret_access_key=settings.s3_secret_key.get_secret_value(),
        config=config,
    ) as client:
        yield client


def error_code(exc: BaseException) -> str:
    """The S3 error code of a botocore `ClientError` (`NoSuchKey`, `403`, …); "" otherwise."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return ""
    return str(response.get("Error", {}).get("Code", ""))


def is_not_found(exc: BaseException) -> bool:
    """Whether a botocore ClientError means the object (or upload) does not exist."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return False
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return error_code(exc) in {"404", "NoSuchKey", "NotFound", "NoSuchUpload"} or status == 404
