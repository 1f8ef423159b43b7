"""What the processor found in a file: the `detected` part of an upload's record.

The processor produces these (inside `processing.done`), the gateway serves them
(`GET /v1/uploads/{id}` → `detected`), so both import them from here and
`/openapi.json` describes them. Every field is optional: an image has no
`video`, a plain archive has only type, size and digest. Unknown keys are kept,
so a record written by a newer processor still reads.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class DetectedVideo(BaseModel):
    """A video's facts, read from its container and its poster keyframe."""

    model_config = ConfigDict(extra="allow")

    container: str = Field(description="Container format: mp4, mov, webm or mkv")
    duration: float | None = Field(default=None, description="Seconds, as the container says")
    video_codec: str = Field(description="FFmpeg's codec name, e.g. h264, hevc, vp9, av1")
    audio_codec: str | None = Field(default=None, description="Codec of the first audio track")
    has_audio: bool
    width: int = Field(description="Display width in pixels, after rotation")
    height: int = Field(description="Display height in pixels, after rotation")
    rotation: int = Field(description="Clockwise degrees applied for display: 0, 90, 180, 270")
    frame_rate: float | None = Field(default=None, description="Frames per second")
    bit_rate: int | None = Field(default=None, description="Bits per second, whole file")
    poster_at: float | None = Field(default=None, description="Time of the poster frame (s)")


class DetectedDocument(BaseModel):
    """A PDF's facts, from its trailer, page tree and first page."""

    model_config = ConfigDict(extra="allow")

    pages: int
    page_width: float = Field(description="First page's width in points (1/72 in)")
    page_height: float = Field(description="First page's height in points")
    encrypted: bool = Field(description="Encrypted without a password to open it (owner-only)")
    title: str | None = Field(default=None, description="Sanitised, at most 200 characters")
    author: str | None = Field(default=None, description="Sanitised, at most 200 characters")
    version: str | None = Field(default=None, description="PDF version, e.g. 1.7")


class Detected(BaseModel):
    """Facts the processor verified; nothing here comes from what the client declared."""

    model_config = ConfigDict(extra="allow")

    type: str | None = Field(default=None, description="The type the content proves")
    size: int | None = Field(default=None, description="Real size in bytes, as uploaded")
    sha256: str | None = Field(default=None, description="SHA-256 (hex) of the bytes uploaded")
    width: int | None = Field(default=None, description="Images: after EXIF orientation")
    height: int | None = None
    format: str | None = None
    mode: str | None = None
    frames: int | None = None
    exif: dict[str, Any] | None = None
    metadata_bytes: int | None = Field(
        default=None,
        description="Images: bytes of metadata and other non-image data (text, EXIF, XMP, "
        "ICC, comments, application and unknown blocks); absent for HEIC/AVIF",
    )
    trailing_bytes: int | None = Field(
        default=None,
        description="Images: bytes after the image's end (JPEG EOI, PNG IEND, GIF trailer, "
        "WebP RIFF size); absent for HEIC/AVIF",
    )
    trailing_bytes_removed: int | None = Field(
        default=None, description="Images: trailing bytes left out of the download (`strip`)"
    )
    served_size: int | None = Field(
        default=None, description="Images: bytes the download serves (the image alone or all)"
    )
    served_sha256: str | None = Field(
        default=None, description="Images: SHA-256 (hex) of the bytes the download serves"
    )
    video: DetectedVideo | None = None
    document: DetectedDocument | None = None
