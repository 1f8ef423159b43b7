"""One settings object for every Clearance process, parsed once from env and `.env`.

Every variable takes the `CLEARANCE_` prefix, e.g. `CLEARANCE_DATABASE_URL`.
Nested values (profiles) are JSON, e.g. `CLEARANCE_PROFILES='{"image": {...}}'`.
"""

from __future__ import annotations

import base64
import binascii
import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.status import Status

MiB = 1024 * 1024

# clamd silently caps MaxFileSize at 2147483645 bytes; anything larger comes back
# "OK" unscanned. No profile may allow more than the scanner can fully scan.
CLAMD_HARD_LIMIT = 2_147_483_645

# How an environment variable says "None" (e.g. CLEARANCE_SCANNER_METRICS_PORT=null).
NONE_VALUE = "null"

PROFILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

# S3's own multipart limits.
S3_MIN_PART = 5 * MiB
S3_MAX_PART = 5 * 1024 * MiB
S3_MAX_PARTS = 10_000


class UploadPolicy(BaseModel):
    """What one upload profile accepts.

    The declared file is checked before any URL exists (type, name, size); the
    landed bytes by the processor (the image fields below, read from the file).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    content_types: frozenset[str] = Field(min_length=1)
    min_size: int = Field(default=1, ge=1)
    max_size: int = Field(ge=1)
    filename_min: int = Field(default=1, ge=1)
    filename_max: int = Field(default=200, ge=1, le=1024)
    # Sizes strictly above this use S3 multipart; None means single PUT only.
    multipart_threshold: int | None = Field(default=None, ge=S3_MIN_PART)
    thumbnails: bool = False
    # Images: read from the container's structure before any pixel is decoded (JPEG,
    # PNG, GIF, WebP; frames also for HEIC/AVIF). None means no limit.
    # Frames of an animated GIF/PNG/WebP (or images of a HEIF sequence).
    max_frames: int | None = Field(default=1000, ge=1)
    # Bytes that are neither pixels nor their framing: text/zTXt/iTXt chunks, EXIF,
    # XMP, ICC profiles, comments, application and unknown blocks, all together.
    max_metadata_bytes: int | None = Field(default=1 * MiB, ge=0)
    # Bytes after the image's end (JPEG EOI, PNG IEND, GIF trailer, WebP RIFF size):
    # `strip` serves the image alone, `reject` refuses the file, `keep` serves it whole.
    trailing_data: Literal["strip", "reject", "keep"] = "strip"

    @model_validator(mode="after")
    def _consistent(self) -> UploadPolicy:
        if self.min_size > self.max_size:
            raise ValueError("min_size must not exceed max_size")
        if self.filename_min > self.filename_max:
            raise ValueError("filename_min must not exceed filename_max")
        if self.multipart_threshold is None and self.max_size > S3_MAX_PART:
            raise ValueError("single-PUT profiles are limited to 5 GiB; set multipart_threshold")
        return self


def default_profiles() -> dict[str, UploadPolicy]:
    return {
        "image": UploadPolicy(
            content_types=frozenset(
                {"image/jpeg", "image/png", "image/gif", "image/heic", "image/heif", "image/avif"}
            ),
            max_size=10_000_000,
            thumbnails=True,
        ),
        "media": UploadPolicy(
            content_types=frozenset(
                {
                    "video/mp4",
                    "video/quicktime",
                    "video/webm",
                    "video/x-matroska",
                    "application/pdf",
                    "application/zip",
                    "image/jpeg",
                    "image/png",
                    "image/gif",
                    "image/heic",
                    "image/heif",
                    "image/avif",
                }
            ),
            max_size=2000 * MiB,
            multipart_threshold=100 * MiB,
            # Originals are kept as uploaded (a motion photo's video follows its JPEG).
            max_frames=10_000,
            max_metadata_bytes=16 * MiB,
            trailing_data="keep",
        ),
    }


Port = Annotated[int, Field(ge=1, le=65535)]

# The public event types: `upload.<status>` (shared.status), or all of them.
ALL_UPLOAD_EVENTS = "upload.*"
WEBHOOK_SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret


class WebhookEndpoint(BaseModel):
    """One operator-configured receiver of signed event POSTs (Standard Webhooks).

    `secret` is `whsec_` + base64 of 24..64 random bytes (the Standard Webhooks form);
    `clearance webhooks secret` prints a new one. `events` filters by type:
    `upload.<status>` or `upload.*`. `name` identifies the endpoint in the delivery
    log and metrics (default: the URL's host and path).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: AnyHttpUrl
    secret: SecretStr
    events: tuple[str, ...] = Field(default=(ALL_UPLOAD_EVENTS,), min_length=1)
    name: str = Field(default="", pattern=r"^([a-z0-9_.:/-]{1,100})?$")

    @field_validator("secret")
    @classmethod
    def _standard_secret(cls, v: SecretStr) -> SecretStr:
        raw = v.get_secret_value()
        if not raw.startswith(WEBHOOK_SECRET_PREFIX):
            raise ValueError(f"must start with {WEBHOOK_SECRET_PREFIX!r}")
        try:
            key = base64.b64decode(raw[len(WEBHOOK_SECRET_PREFIX) :], validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"must be {WEBHOOK_SECRET_PREFIX!r} + base64") from None
        if not 24 <= len(key) <= 64:
            raise ValueError(f"must hold 24..64 random bytes, not {len(key)}")
        return v

    @field_validator("events")
    @classmethod
    def _known_types(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        known = {ALL_UPLOAD_EVENTS} | {f"upload.{s.value}" for s in Status}
        unknown = [e for e in v if e not in known]
        if unknown:
            raise ValueError(f"unknown event types {unknown}; use upload.<status> or upload.*")
        return v

    @model_validator(mode="after")
    def _named(self) -> WebhookEndpoint:
        if not self.name:
            parts = urlsplit(str(self.url))
            default = f"{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"
            object.__setattr__(self, "name", default.rstrip("/").lower()[:100])
        return self

    def wants(self, event_type: str) -> bool:
        """Whether this endpoint subscribed to `event_type`."""
        return ALL_UPLOAD_EVENTS in self.events or event_type in self.events


class Settings(BaseSettings):
    """Settings shared by the gateway, relay, workers, CLI and tests."""

    model_config = SettingsConfigDict(
        env_prefix="CLEARANCE_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
        env_parse_none_str=NONE_VALUE,
    )

    environment: Literal["development", "production", "test"] = "development"
    log_level: str = "INFO"
    # Where the local stack keeps data, logs and PID files (ignored by git).
    state_dir: Path = Path(".clearance")

    # Gateway
    gateway_host: str = "127.0.0.1"
    gateway_port: Port = 8080
    public_url: str = "http://127.0.0.1:8080"
    # Gateway processes sharing the port (SO_REUSEPORT); None means one per CPU.
    gateway_workers: int | None = Field(default=None, ge=1, le=64)
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    # Origins allowed to call the gateway and PUT to the bucket from a browser.
    cors_origins: tuple[str, ...] = ("http://127.0.0.1:8080", "http://localhost:8080")
    dev_token_endpoint: bool = False
    sse_heartbeat_seconds: float = Field(default=15.0, gt=0, le=300)

    # What one client may take of the gateway. Per-owner limits hold across every
    # gateway process (PostgreSQL is the shared count).
    create_rate_per_minute: float = Field(default=600.0, gt=0)  # sustained, per owner
    # A user dropping a few hundred photos at once is normal; a script creating thousands is not.
    create_burst: int = Field(default=300, ge=1)  # creates at once, per owner
    max_pending_uploads: int = Field(default=500, ge=1)  # not yet landed, per owner
    max_streams_per_owner: int = Field(default=400, ge=1)  # open SSE streams (one per file)
    max_header_bytes: int = Field(default=32 * 1024, ge=1024)  # all request headers
    max_headers: int = Field(default=64, ge=8)  # header fields per request
    # A connection that has not sent a whole request head this long after connecting
    # (or after its last answer) is closed: slow-header clients can't hold sockets.
    http_idle_timeout_seconds: float = Field(default=15.0, gt=0, le=3600)
    body_read_timeout_seconds: float = Field(default=20.0, gt=0, le=600)
    max_token_lifetime_seconds: int = Field(default=24 * 3600, ge=60)
    # Auth: HS256 with a shared secret (default) or RS256 with a public key.
    jwt_algorithm: Literal["HS256", "RS256"] = "HS256"
    jwt_secret: SecretStr = SecretStr("clearance-development-secret-change-me")
    jwt_public_key: str | None = None
    jwt_private_key: SecretStr | None = None  # only for `clearance token` with RS256
    jwt_audience: str | None = None
    jwt_issuer: str | None = None

    # PostgreSQL
    database_url: str = "postgresql://postgres@127.0.0.1:5432/clearance"
    db_pool_min: int = Field(default=1, ge=0)
    db_pool_max: int = Field(default=10, ge=1)

    # RabbitMQ
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    amqp_exchange: str = "clearance.events"
    queue_prefix: str = Field(default="clearance", pattern=r"^[A-Za-z0-9_.-]{1,100}$")
    amqp_prefetch: int = Field(default=8, ge=1)
    max_attempts: int = Field(default=5, ge=1)
    drain_timeout_seconds: float = Field(default=30.0, gt=0)
    retry_delays_ms: tuple[int, ...] = (1000, 5000, 30000)

    # Public events (DESIGN §5): the gateway relays its transactional outbox to this
    # topic exchange, routing keys `upload.<status>`. `notifications_amqp_url` lets the
    # application-facing stream live on another vhost or broker (default: amqp_url).
    notifications_exchange: str = "clearance.notifications"
    notifications_amqp_url: str | None = None
    outbox_batch_size: int = Field(default=500, ge=1, le=10_000)
    # Where the announcers (outbox relay, webhook dispatcher) run: in every gateway
    # process (true), or only in `clearance announcer` processes (false), which keeps
    # the event publishing (~90 µs of CPU per event) out of the request processes; the
    # gateway then wakes them with one NOTIFY per few milliseconds of creates.
    gateway_announcers: bool = True
    announcer_host: str = "127.0.0.1"
    announcer_port: Port = 8082
    outbox_poll_seconds: float = Field(default=2.0, gt=0, le=300)
    # After a wake-up, wait this long so that changes committed meanwhile share the pass;
    # after a pass of at least `outbox_busy_events` (under load), `_busy_linger_seconds`:
    # one claim, broker write and commit then serve several times as many events.
    outbox_linger_seconds: float = Field(default=0.01, ge=0, le=1)
    outbox_busy_events: int = Field(default=32, ge=1, le=10_000)
    outbox_busy_linger_seconds: float = Field(default=0.05, ge=0, le=1)
    outbox_publish_timeout_seconds: float = Field(default=5.0, gt=0, le=120)

    # Webhooks: signed POSTs of the same events to operator-configured endpoints, e.g.
    # CLEARANCE_WEBHOOKS='[{"url": "https://app.example/hooks", "secret": "whsec_…"}]'.
    webhooks: tuple[WebhookEndpoint, ...] = ()
    # Seconds before attempt 2, 3, …; one attempt more than delays. Default 10 s·3ⁿ:
    # 9 attempts over about 9 hours, then the delivery is dead (replayable).
    webhook_retry_schedule_seconds: tuple[float, ...] = (
        10,
        30,
        90,
        270,
        810,
        2430,
        7290,
        21870,
    )
    webhook_retry_jitter: float = Field(default=0.2, ge=0, lt=1)  # ± this share of a delay
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    webhook_concurrency: int = Field(default=16, ge=1, le=1000)
    webhook_poll_seconds: float = Field(default=5.0, gt=0, le=300)
    webhook_retention_days: float = Field(default=14.0, gt=0)

    # S3-compatible storage
    s3_endpoint_url: str = "http://127.0.0.1:18333"
    s3_public_endpoint_url: str | None = None  # what browsers use, if different
    s3_region: str = "us-east-1"
    s3_access_key: str = "clearance-dev"
    s3_secret_key: SecretStr = SecretStr("clearance-dev-secret")
    s3_addressing_style: Literal["path", "virtual"] = "path"
    bucket: str = "clearance-uploads"
    upload_prefix: str = "uploads"
    quarantine_prefix: str = "quarantine"
    verified_prefix: str = "verified"
    presign_ttl_seconds: int = Field(default=900, ge=1, le=7 * 24 * 3600)
    download_ttl_seconds: int = Field(default=300, ge=1, le=7 * 24 * 3600)

    # Local SeaweedFS (`clearance stack`); every port below 32768.
    weed_s3_port: Port = 18333
    weed_master_port: Port = 19333
    weed_volume_port: Port = 19340
    weed_filer_port: Port = 18888
    weed_admin_port: Port = 19646

    # Relay
    relay_host: str = "127.0.0.1"
    relay_port: Port = 8081
    webhook_token: SecretStr = SecretStr("clearance-webhook-dev-token")
    relay_catchup_enabled: bool = True  # off where storage is not SeaweedFS (AWS, MinIO)
    relay_catchup_interval_seconds: float = Field(default=10.0, gt=0)
    relay_catchup_window_seconds: float = Field(default=3600.0, gt=0)
    # AWS: S3 event notifications read from SQS (direct, or SNS-wrapped with raw
    # delivery off). Credentials come from the default AWS chain (instance or task role)
    # unless given here; `sqs_endpoint_url` is for SQS-compatible servers only.
    sqs_queue_url: str | None = None
    sqs_endpoint_url: str | None = None
    sqs_region: str | None = None  # default: s3_region
    sqs_access_key: str | None = None
    sqs_secret_key: SecretStr | None = None
    sqs_wait_seconds: int = Field(default=20, ge=0, le=20)  # long polling
    sqs_publish_timeout_seconds: float = Field(default=10.0, gt=0)

    # Scanner
    clamd_host: str = "127.0.0.1"
    clamd_port: Port = 13310
    clamd_max_bytes: int = Field(default=2000 * MiB, ge=1, le=CLAMD_HARD_LIMIT)
    clamd_timeout_seconds: float = Field(default=120.0, gt=0)
    # ClamAV (1.4 and newer) decodes every JPEG, PNG, GIF and TIFF to compute a
    # perceptual hash, matched only by `fuzzy_img#` logical signatures (pictures
    # known from phishing kits, say): about 40 ms of clamd per 2 MP photo, over three
    # times the rest of its scan. Off unless your signature set has such signatures;
    # clamd's image format checks (`ScanImage`) stay on either way.
    clamd_image_fuzzy_hash: bool = False
    scanner_metrics_port: Port | None = 18091

    # Processor
    thumbnail_sizes: tuple[int, ...] = (1024, 256)
    max_image_pixels: int = Field(default=50_000_000, ge=1)
    processor_workers: int = Field(default=2, ge=1, le=64)
    # Threads inside one image job. Unset (auto): 2 for a job that starts while no
    # other job runs (one upload on an idle machine gets both cores: ~64 → ~51 ms for
    # a 2 MP photo here), 1 while others run (`processor_workers` = cores is then the
    # throughput setting). A number is used for every job.
    processor_threads: int | None = Field(default=None, ge=1, le=8)
    processor_metrics_port: Port | None = 18092
    # Hard limits on one file's decoding (videos, PDFs, HEIC/AVIF and other images).
    # A job over its wall time is killed with its pool process; the file is rejected.
    processor_job_seconds: float = Field(default=60.0, gt=0, le=3600)
    # Bytes a video or PDF job may read from storage (ranged GETs) for its metadata
    # and poster/preview; the whole object is never downloaded for that.
    media_read_bytes: int = Field(default=64 * MiB, ge=64 * 1024)
    # Packets a video job may demux looking for its poster keyframe.
    media_max_frames: int = Field(default=600, ge=1)
    media_max_seconds: float = Field(default=24 * 3600.0, gt=0)  # declared duration
    pdf_max_pages: int = Field(default=50_000, ge=1)

    # Workers: each object version is scanned once and processed once (shared.ledger).
    # A crashed worker's claim is taken over once its lease runs out; the holder renews
    # it every third of this while it works.
    work_lease_seconds: float = Field(default=10.0, gt=0, le=3600)
    # Finished work records are kept this long (a later duplicate does the work again).
    work_retention_days: float = Field(default=7.0, gt=0)

    # Reconciler
    reconcile_interval_seconds: float = Field(default=30.0, gt=0)
    stuck_after_seconds: float = Field(default=300.0, gt=0)
    multipart_abandon_seconds: float = Field(default=24 * 3600.0, gt=0)

    profiles: dict[str, UploadPolicy] = Field(default_factory=default_profiles)
    default_profile: str = "image"

    @field_validator("thumbnail_sizes")
    @classmethod
    def _sizes_descending(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(s < 16 or s > 8192 for s in v):
            raise ValueError("thumbnail sizes must be between 16 and 8192 px")
        return tuple(sorted(set(v), reverse=True))

    @field_validator("webhook_retry_schedule_seconds")
    @classmethod
    def _schedule(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if any(d <= 0 for d in v):
            raise ValueError("retry delays must be positive seconds")
        return v

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.default_profile not in self.profiles:
            raise ValueError(
                f"default_profile {self.default_profile!r} is not a configured profile"
            )
        for name, policy in self.profiles.items():
            if not PROFILE_NAME.fullmatch(name):
                # The name travels with the object as signed S3 metadata (a header).
                raise ValueError(
                    f"profile name {name!r} must be 1..64 of A-Z, a-z, 0-9, '_', '.', '-'"
                )
            if policy.max_size > self.clamd_max_bytes:
                raise ValueError(
                    f"profile {name!r} allows {policy.max_size} bytes but the scanner can fully "
                    f"scan at most {self.clamd_max_bytes} (clamd_max_bytes); lower max_size"
                )
        if self.jwt_algorithm == "RS256" and not self.jwt_public_key:
            raise ValueError("jwt_algorithm RS256 needs jwt_public_key (PEM)")
        names = [w.name for w in self.webhooks]
        if len(set(names)) != len(names):
            raise ValueError(f"webhook endpoint names must be unique, got {names}")
        if self.environment == "production":
            self._check_production()
        return self

    def _check_production(self) -> None:
        """Refuse to run production on development secrets or an open storage."""
        if self.dev_token_endpoint:
            raise ValueError("dev_token_endpoint must stay off in production")
        defaults = type(self).model_fields
        secrets = {
            "jwt_secret": self.jwt_algorithm == "HS256",
            "s3_secret_key": True,
            "webhook_token": True,
        }
        for name, used in secrets.items():
            default = defaults[name].default.get_secret_value()
            value = getattr(self, name).get_secret_value()
            if used and value == default:
                raise ValueError(f"{name} is the development default; set a real secret")
        if self.jwt_algorithm == "HS256" and len(self.jwt_secret.get_secret_value()) < 32:
            raise ValueError("jwt_secret must be at least 32 characters in production")
        if not self.s3_access_key or self.s3_access_key == defaults["s3_access_key"].default:
            raise ValueError("s3_access_key is the development default; set real credentials")
        plain = [w.name for w in self.webhooks if w.url.scheme != "https"]
        if plain:
            raise ValueError(f"webhook endpoints {plain} must use https in production")

    @property
    def browser_s3_endpoint(self) -> str:
        return self.s3_public_endpoint_url or self.s3_endpoint_url
