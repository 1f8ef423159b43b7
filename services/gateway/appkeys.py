"""Typed application state, declared in one place."""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp import web

from services.gateway.auth import TokenVerifier
from services.gateway.metrics import GatewayMetrics
from services.gateway.s3_requests import S3Requests
from services.gateway.uploads import EventPublisher, UploadService
from shared.presign import Presigner
from shared.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", asyncpg.Pool)
S3: web.AppKey[Any] = web.AppKey("s3")  # aiobotocore client
S3_REQUESTS = web.AppKey("s3_requests", S3Requests)  # signed requests on the hot path
PRESIGNER = web.AppKey("presigner", Presigner)
VERIFIER = web.AppKey("verifier", TokenVerifier)
# /openapi.json and /asyncapi.json, each built on its first request (they never change).
DOCUMENTS: web.AppKey[dict[str, bytes]] = web.AppKey("documents")
METRICS = web.AppKey("metrics", GatewayMetrics)
PUBLISHER = web.AppKey("publisher", EventPublisher)
LISTENER: web.AppKey[Any] = web.AppKey("listener")  # live.Listener
AMQP: web.AppKey[Any] = web.AppKey("amqp")  # aio_pika robust connection, for readiness
UPLOADS = web.AppKey("uploads", UploadService)

# Per-request values set by middlewares.
REQUEST_ID = web.RequestKey("request_id", str)
OWNER = web.RequestKey("owner", str)
