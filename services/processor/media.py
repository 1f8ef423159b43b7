"""What a video or PDF job gets: where to read the object, and the limits it runs under.

Both are plain frozen dataclasses, pickled into the pool process. The job reads
the object itself, through `RangedReader` on a presigned GET URL that the
parent signed (the pool process holds no storage credentials), pinned to the
scanned version by its ETag.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image
from pydantic import BaseModel

from services.processor.imaging import Derivative, Rejection, derivatives
from services.processor.ranged import HttpRangeFetcher, RangedReader

# Titles, authors and other text a file carries are attacker-controlled.
TEXT_MAX = 200


@dataclass(frozen=True)
class MediaSource:
    url: str  # presigned GET for the object
    size: int
    etag: str | None
    request_timeout: float = 30.0


@dataclass(frozen=True)
class MediaLimits:
    """Hard limits for one job (the wall time is the pool's, around it)."""

    sizes: tuple[int, ...]  # thumbnail bounds, as for images
    max_pixels: int  # a frame or page image, as declared and as decoded
    read_bytes: int  # bytes read from storage
    max_frames: int = 600  # packets demuxed looking for the poster keyframe
    max_seconds: float = 24 * 3600.0  # declared duration
    max_pages: int = 50_000


@dataclass(frozen=True)
class ReadStats:
    bytes_read: int
    requests: int
    storage_seconds: float


@dataclass(frozen=True)
class MediaReport:
    """A described video or PDF: `facts` is a `DetectedVideo`/`DetectedDocument` dump."""

    kind: str  # "video" or "document"
    detected_type: str
    facts: dict[str, object]
    derivatives: list[Derivative]
    read: ReadStats
    sha256: str = ""  # filled in by the parent, which hashes the whole object


def open_reader(source: MediaSource, limits: MediaLimits) -> tuple[RangedReader, HttpRangeFetcher]:
    fetcher = HttpRangeFetcher(source.url, etag=source.etag, timeout=source.request_timeout)
    return RangedReader(fetcher, source.size, budget=limits.read_bytes), fetcher


def read_stats(reader: RangedReader, fetcher: HttpRangeFetcher) -> ReadStats:
    return ReadStats(reader.bytes_fetched, reader.requests, fetcher.seconds)


Describe = Callable[[RangedReader], "tuple[BaseModel, Image.Image] | Rejection"]


def analyse(
    kind: str, source: MediaSource, detected: str, limits: MediaLimits, describe: Describe
) -> MediaReport | Rejection:
    """Read the object through a ranged reader, describe it, make its thumbnail set."""
    reader, fetcher = open_reader(source, limits)
    try:
        outcome = describe(reader)
    finally:
        fetcher.close()
    if isinstance(outcome, Rejection):
        return outcome
    facts, picture = outcome
    return MediaReport(
        kind=kind,
        detected_type=detected,
        facts=facts.model_dump(mode="json"),
        derivatives=derivatives(picture, limits.sizes),
        read=read_stats(reader, fetcher),
    )


def clean_text(value: object, limit: int = TEXT_MAX) -> str | None:
    """Printable text only, trimmed and capped; None when nothing is left."""
    if not isinstance(value, str):
        return None
    text = " ".join("".join(ch if ch.isprintable() else " " for ch in value).split())
    return text[:limit] or None
