"""Videos (PyAV): metadata and a poster frame, read with bounded bytes, frames and pixels.

Runs in the processor's pool process. The sniffed type picks the only demuxer
allowed (`mov` for MP4/QuickTime, `matroska` for WebM/Matroska), the codec must
be one we expect in uploads, and before any pixel is decoded the size the file
declares is checked against the pixel limit, in the container (Matroska can
declare any size) and in the codec parameters; the decoder itself is also told
the limit (`max_pixels`), so a stream that changes size mid-way can't get past it.

The poster is the keyframe at or before min(1 s, 10 % of the duration): one
seek, decoding key frames only (`skip_frame=NONKEY`), a bounded number of packets.
Rotation (the display matrix) is applied; the frame is scaled by swscale straight
to the largest thumbnail size, and the thumbnails are the images' WebP set.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import av
import av.error
import av.logging
from PIL import Image

from services.processor.imaging import Rejection
from services.processor.media import (
    MediaLimits,
    MediaReport,
    MediaSource,
    analyse,
    clean_text,
)
from services.processor.ranged import RangedReader, ReadBudgetExceeded
from shared.detected import DetectedVideo

# Detected type -> (the one demuxer allowed, the container name in records).
DEMUXERS = {
    "video/mp4": ("mov", "mp4"),
    "video/quicktime": ("mov", "mov"),
    "video/webm": ("matroska", "webm"),
    "video/x-matroska": ("matroska", "mkv"),
}
VIDEO_TYPES = frozenset(DEMUXERS)

# Codecs uploads carry; anything else (raw video, exotic or obsolete decoders,
# which see far less fuzzing) is refused rather than decoded.
VIDEO_CODECS = frozenset({"h264", "hevc", "vp8", "vp9", "av1", "mpeg4", "mpeg2video", "prores"})

POSTER_AT = 1.0  # seconds, or 10 % of a shorter video
# How much of the file's start the Matroska declared-size check reads.
MATROSKA_HEAD = 64 * 1024

# Errors FFmpeg raises for malformed data (PyAV maps each AVERROR to a class).
_FFMPEG_ERRORS = (av.error.FFmpegError, ValueError, EOFError)


def analyse_video(
    source: MediaSource, detected: str, limits: MediaLimits
) -> MediaReport | Rejection:
    """Describe the video at `source` and make its poster thumbnails (pool process)."""
    # FFmpeg's own error line ("moov atom not found") rides on the exceptions
    # only while its logging is on.
    av.logging.set_level(av.logging.ERROR)
    return analyse("video", source, detected, limits, lambda r: describe_video(r, detected, limits))


def describe_video(
    reader: RangedReader, detected: str, limits: MediaLimits
) -> tuple[DetectedVideo, Image.Image] | Rejection:
    """The facts and the upright poster picture, or why the file is refused."""
    demuxer, container_name = DEMUXERS[detected]
    try:
        if demuxer == "matroska":
            declared = matroska_declared_size(_peek(reader, MATROSKA_HEAD))
            if declared is not None and (too_big := _over(declared, limits.max_pixels)):
                return too_big
        with av.open(
            reader,
            "r",
            format=demuxer,
            options={"max_pixels": str(limits.max_pixels)},
            metadata_errors="replace",
        ) as container:
            return _describe(container, container_name, limits)
    except ReadBudgetExceeded as exc:
        return Rejection("over_limit", f"the video can't be described within limits: {exc}")
    except MemoryError:
        return Rejection("over_limit", "decoding the video needs more memory than allowed")
    except _FFMPEG_ERRORS as exc:
        return Rejection("corrupt", f"the video can't be read: {_ffmpeg_message(exc)}")


def _describe(
    container: Any, container_name: str, limits: MediaLimits
) -> tuple[DetectedVideo, Image.Image] | Rejection:
    if not container.streams.video:
        return Rejection("corrupt", "the file has no video stream")
    stream = container.streams.video[0]
    codec = stream.codec_context
    if codec.name not in VIDEO_CODECS:
        return Rejection("unsupported", f"the video codec {codec.name!r} is not accepted")
    width, height = int(codec.width), int(codec.height)
    if width <= 0 or height <= 0:
        return Rejection("corrupt", "the video stream declares no frame size")
    if too_big := _over((width, height), limits.max_pixels):
        return too_big

    duration = _duration(container, stream)
    if duration is not None and duration > limits.max_seconds:
        return Rejection(
            "over_limit",
            f"the video declares {duration:.0f} s, over the limit of {limits.max_seconds:.0f} s",
        )
    audio = container.streams.audio[0] if container.streams.audio else None

    target = min(POSTER_AT, duration * 0.1) if duration else 0.0
    poster = _poster(container, stream, target, limits)
    if isinstance(poster, Rejection):
        return poster
    frame = poster
    if frame.width * frame.height > limits.max_pixels:
        return _over((frame.width, frame.height), limits.max_pixels) or Rejection(
            "decompression_bomb", "the decoded frame is over the pixel limit"
        )
    rotation = _clockwise(frame)
    display_w, display_h = _display_size(frame.width, frame.height, stream.sample_aspect_ratio)
    picture = _picture(frame, display_w, display_h, max(limits.sizes), rotation)
    if rotation in (90, 270):
        display_w, display_h = display_h, display_w

    facts = DetectedVideo(
        container=container_name,
        duration=round(duration, 3) if duration is not None else None,
        video_codec=codec.name,
        audio_codec=clean_text(audio.codec_context.name, 32) if audio is not None else None,
        has_audio=audio is not None,
        width=display_w,
        height=display_h,
        rotation=rotation,
        frame_rate=_rate(stream),
        bit_rate=int(container.bit_rate) if container.bit_rate else None,
        poster_at=round(float(frame.time), 3) if frame.time is not None else None,
    )
    return facts, picture


def _poster(container: Any, stream: Any, target: float, limits: MediaLimits) -> Any:
    codec = stream.codec_context
    codec.skip_frame = "NONKEY"  # only key frames are decoded at all
    codec.thread_count = 1  # the pool has a process per core already
    if target > 0 and stream.time_base:
        try:
            container.seek(int(target / stream.time_base), stream=stream, backward=True)
        except _FFMPEG_ERRORS:
            container.seek(0)
    for packets, packet in enumerate(container.demux(stream), 1):
        if packets > limits.max_frames:
            return Rejection(
                "over_limit",
                f"no decodable key frame within {limits.max_frames} packets of the poster time",
            )
        for frame in packet.decode():
            return frame
    return Rejection("corrupt", "no video frame could be decoded")


def _picture(frame: Any, width: int, height: int, bound: int, rotation: int) -> Image.Image:
    """The frame as an upright RGB picture no larger than `bound` (swscale does the scaling)."""
    scale = min(1.0, bound / max(width, height))
    picture: Image.Image = frame.to_image(
        width=max(2, round(width * scale)),
        height=max(2, round(height * scale)),
        interpolation="BICUBIC",
    )
    if rotation == 90:
        return picture.transpose(Image.Transpose.ROTATE_270)
    if rotation == 180:
        return picture.transpose(Image.Transpose.ROTATE_180)
    if rotation == 270:
        return picture.transpose(Image.Transpose.ROTATE_90)
    return picture


def _clockwise(frame: Any) -> int:
    """Clockwise degrees to show the frame upright, from its display matrix.

    FFmpeg reports the matrix's rotation counter-clockwise; phones' portrait
    videos read -90 there, i.e. "turn 90° clockwise".
    """
    try:
        degrees = float(frame.rotation)
    except (AttributeError, TypeError, ValueError):
        return 0
    if not math.isfinite(degrees):
        return 0
    return round(-degrees / 90.0) % 4 * 90


def _display_size(width: int, height: int, sar: Fraction | None) -> tuple[int, int]:
    """Stored size → shown size for non-square pixels (anamorphic video)."""
    if sar is None or sar <= 0 or sar == 1 or not 0.1 < sar < 10:
        return width, height
    return max(1, round(width * sar)), height


def _duration(container: Any, stream: Any) -> float | None:
    if container.duration and container.duration > 0:
        return float(container.duration) / av.time_base
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    return None


def _rate(stream: Any) -> float | None:
    rate = stream.average_rate or stream.guessed_rate
    if not rate or rate <= 0:
        return None
    return round(float(rate), 3)


def _over(size: tuple[int, int], max_pixels: int) -> Rejection | None:
    width, height = size
    if width * height <= max_pixels:
        return None
    return Rejection(
        "decompression_bomb",
        f"the video declares {width}×{height} px ({width * height} pixels) per frame, over "
        f"the limit of {max_pixels} pixels",
    )


def _peek(reader: RangedReader, length: int) -> bytes:
    reader.seek(0)
    head = reader.read(length)
    reader.seek(0)
    return head


def _ffmpeg_message(exc: BaseException) -> str:
    text = str(getattr(exc, "strerror", None) or exc)
    log = getattr(exc, "log", None)
    if isinstance(log, tuple) and len(log) == 3 and isinstance(log[2], str):
        text = f"{text} ({log[2].strip()})"
    return clean_text(text, 300) or type(exc).__name__


# -- Matroska: the size a file declares, before FFmpeg replaces it ---------------

_SEGMENT, _TRACKS, _TRACK_ENTRY, _VIDEO = 0x18538067, 0x1654AE6B, 0xAE, 0xE0
_PIXEL_WIDTH, _PIXEL_HEIGHT, _CLUSTER = 0xB0, 0xBA, 0x1F43B675
_EBML_HEADER = 0x1A45DFA3


def matroska_declared_size(head: bytes) -> tuple[int, int] | None:
    """The largest PixelWidth×PixelHeight any video track declares in `head`, if found.

    FFmpeg takes a track's frame size from the bitstream once it decodes, so a
    container that declares 100000×100000 px over a small stream reads as
    small; such a file lies, and it is refused before anything is decoded.
    Only what lies within `head` is looked at (Tracks precede the first Cluster).
    """
    best: tuple[int, int] | None = None
    for element, start, end in _elements(head, 0, len(head)):
        if element != _SEGMENT:
            continue
        for child, c_start, c_end in _elements(head, start, end):
            if child == _CLUSTER:
                break
            if child != _TRACKS:
                continue
            for entry, e_start, e_end in _elements(head, c_start, c_end):
                if entry != _TRACK_ENTRY:
                    continue
                for video, v_start, v_end in _elements(head, e_start, e_end):
                    if video != _VIDEO:
                        continue
                    dims = {_PIXEL_WIDTH: 0, _PIXEL_HEIGHT: 0}
                    for field, f_start, f_end in _elements(head, v_start, v_end):
                        if field in dims and f_end - f_start <= 8:
                            dims[field] = int.from_bytes(head[f_start:f_end], "big")
                    size = (dims[_PIXEL_WIDTH], dims[_PIXEL_HEIGHT])
                    if best is None or size[0] * size[1] > best[0] * best[1]:
                        best = size
    return best


def _elements(buf: bytes, pos: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(id, data start, data end) of each EBML element in buf[pos:end], clipped to end."""
    while pos < end:
        element = _vint(buf, pos, keep_marker=True)
        if element is None:
            return
        element_id, size_start = element
        sized = _vint(buf, size_start, keep_marker=False)
        if sized is None:
            return
        size, pos = sized
        # An all-ones size (live streams, unfinished files) runs to the parent's end.
        unknown = size == (1 << (7 * (pos - size_start))) - 1
        data_end = end if unknown else min(end, pos + size)
        yield element_id, pos, data_end
        pos = data_end


def _vint(buf: bytes, pos: int, *, keep_marker: bool) -> tuple[int, int] | None:
    if pos >= len(buf) or buf[pos] == 0:
        return None
    first = buf[pos]
    length = 9 - first.bit_length()
    if pos + length > len(buf):
        return None
    value = first if keep_marker else first & ((1 << (8 - length)) - 1)
    for byte in buf[pos + 1 : pos + length]:
        value = (value << 8) | byte
    return value, pos + length
