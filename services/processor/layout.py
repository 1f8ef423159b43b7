"""Where an image ends, how many frames it has and how much of it is metadata.

Read from the container's own structure, never by decoding pixels and never by
searching for an end marker anywhere in the file (an EXIF thumbnail holds a JPEG
EOI, a text chunk can hold `IEND`): PNG is walked chunk by chunk, JPEG segment by
segment (the entropy-coded data after each SOS is skipped to the next real
marker), GIF block by block (sub-blocks skipped by their lengths), WebP by its
RIFF size and chunks. Each walk touches only headers, so it costs microseconds per
block; `max_frames` stops a walk as soon as the count is over it, so a file with
a million frames costs no more than one with `max_frames + 1`.

The *end* is the offset just past the image: after PNG's IEND chunk, JPEG's EOI
marker, GIF's trailer, or the RIFF size of a WebP. When the structure stops
cleanly without its end marker (the file's end, or bytes that cannot start a
block: a GIF decoder stops there too, a PNG chunk type must be letters), that is
the end. A block that claims more bytes than the file holds is a truncated
file: `LayoutError`.

*Metadata* counts every byte that is neither pixels nor the structure that frames
them: PNG chunks other than IHDR/PLTE/IDAT/IEND and APNG's acTL/fcTL/fdAT (text,
zTXt/iTXt, eXIf, iCCP, private chunks…); JPEG APPn (JFIF, EXIF, XMP, ICC, IPTC…),
COM and JPGn segments and any extraneous bytes between segments; GIF extensions
other than graphic control (comments, application blocks such as XMP or ICC,
plain text); WebP chunks other than VP8/VP8L/VP8X/ALPH/ANIM/ANMF (EXIF, XMP, ICCP,
unknown). Whole blocks are counted, headers included.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Pixels, and the structure that frames them; every other chunk is metadata.
_PNG_IMAGE_CHUNKS = frozenset({b"IHDR", b"PLTE", b"IDAT", b"IEND", b"acTL", b"fcTL", b"fdAT"})
_PNG_MAX_LENGTH = 0x7FFFFFFF

# The next marker after entropy-coded data: 0xFF followed by anything but a stuffed
# zero, a restart marker (both belong to the data) or another 0xFF (fill).
_JPEG_MARKER_AFTER_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_SOI, _EOI, _SOS, _TEM = 0xD8, 0xD9, 0xDA, 0x01

_GIF_IMAGE, _GIF_EXTENSION, _GIF_TRAILER = 0x2C, 0x21, 0x3B
_GIF_GRAPHIC_CONTROL = 0xF9

_WEBP_IMAGE_CHUNKS = frozenset({b"VP8 ", b"VP8L", b"VP8X", b"ALPH", b"ANIM", b"ANMF"})


class LayoutError(ValueError):
    """The container's structure is truncated or malformed (the message says where)."""


@dataclass(frozen=True)
class Layout:
    """What the structure says about one image file.

    `end` is the offset just past the image (see the module docstring); bytes from
    there on are trailing data. `frames` counts images/animation frames. With
    `complete` False the walk stopped because `frames` went over the caller's
    `max_frames`: `frames` is then a lower bound and `end`/`metadata_bytes` only
    cover what was walked.
    """

    end: int
    frames: int
    metadata_bytes: int
    complete: bool = True
    # How the end was found, as a phrase: "after its EOI marker", "at the end of the
    # file", "before bytes that are not a chunk"...
    ended_by: str = ""


def image_layout(data: bytes, image_type: str, *, max_frames: int | None = None) -> Layout | None:
    """The layout of `data` as `image_type` (JPEG, PNG, GIF, WebP); None for other types.

    Raises `LayoutError` for a truncated or malformed structure.
    """
    reader = _READERS.get(image_type)
    if reader is None:
        return None
    limit = max_frames if max_frames is not None else len(data) + 1
    return reader(data, limit)


def png_layout(data: bytes, max_frames: int) -> Layout:
    """PNG: chunks until IEND; an APNG's frames from acTL and its fcTL chunks."""
    if not data.startswith(_PNG_SIGNATURE):
        raise LayoutError("not a PNG: the signature is missing")
    size = len(data)
    pos = len(_PNG_SIGNATURE)
    walk = _PngWalk()
    unpack = struct.unpack_from
    while pos < size:
        if size - pos < 8:
            return walk.layout(pos, "before a partial chunk header")
        length, kind = unpack(">I4s", data, pos)
        if not kind.isalpha():
            # Chunk types are letters: whatever this is, the PNG stopped before it.
            return walk.layout(pos, "before bytes that are not a chunk")
        end = pos + 12 + length
        if length > _PNG_MAX_LENGTH or end > size:
            raise LayoutError(
                f"the PNG is truncated: its {kind.decode()} chunk at byte {pos} declares "
                f"{length} bytes but only {max(size - pos - 12, 0)} follow"
            )
        if kind == b"IEND":
            return walk.layout(end, "after its IEND chunk")
        if kind == b"IDAT":
            if walk.declared and not walk.controls:
                walk.default_image = True  # shown by plain decoders, not the first frame
            walk.seen_idat = True
        elif kind == b"fcTL":
            walk.controls += 1
        elif kind == b"acTL":
            if not walk.seen_idat and length >= 8:
                (walk.declared,) = unpack(">I", data, pos + 8)
        elif kind not in _PNG_IMAGE_CHUNKS:
            walk.metadata += 12 + length
        pos = end
        if walk.frames() > max_frames:
            return walk.layout(pos, "", complete=False)
    return walk.layout(pos, "at the end of the file")


@dataclass
class _PngWalk:
    metadata: int = 0
    controls: int = 0  # fcTL chunks: one per animation frame
    declared: int = 0  # acTL's num_frames (0: not an APNG)
    default_image: bool = False
    seen_idat: bool = False

    def frames(self) -> int:
        # A plain PNG is one frame. An APNG's are its fcTL chunks (acTL says how many;
        # the larger counts), plus the plain image when it is not the first frame.
        if not self.declared:
            return 1
        return max(self.controls, self.declared) + self.default_image

    def layout(self, end: int, ended_by: str, *, complete: bool = True) -> Layout:
        return Layout(end, self.frames(), self.metadata, complete, ended_by)


def jpeg_layout(data: bytes, max_frames: int) -> Layout:
    """JPEG: one frame; segments until EOI, each scan's data skipped to its next marker."""
    if not data.startswith(b"\xff\xd8"):
        raise LayoutError("not a JPEG: the SOI marker is missing")
    size = len(data)
    pos = 2
    metadata = 0
    while True:
        if pos >= size:
            raise LayoutError("the JPEG is truncated: it ends before its EOI marker")
        if data[pos] != 0xFF:
            # Extraneous bytes where a marker belongs: decoders skip them; so do we,
            # counting them as non-image data.
            next_marker = data.find(b"\xff", pos)
            if next_marker < 0:
                raise LayoutError("the JPEG is truncated: it ends before its EOI marker")
            metadata += next_marker - pos
            pos = next_marker
        start = pos
        while pos < size and data[pos] == 0xFF:  # fill bytes before a marker
            pos += 1
        if pos >= size:
            raise LayoutError("the JPEG is truncated: it ends before its EOI marker")
        marker = data[pos]
        pos += 1
        if marker == _EOI:
            return Layout(pos, 1, metadata, True, "after its EOI marker")
        if marker == _TEM or 0xD0 <= marker <= 0xD7:
            continue  # standalone markers carry no length
        if marker == _SOI or marker < 0xC0:
            raise LayoutError(f"the JPEG has an invalid marker 0xFF{marker:02X} at byte {start}")
        if pos + 2 > size:
            raise LayoutError("the JPEG is truncated inside a segment header")
        (length,) = struct.unpack_from(">H", data, pos)
        if length < 2 or pos + length > size:
            raise LayoutError(
                f"the JPEG is truncated: the segment 0xFF{marker:02X} at byte {start} declares "
                f"{length} bytes but only {size - pos} follow"
            )
        pos += length
        if 0xE0 <= marker <= 0xEF or marker >= 0xF0:  # APPn, JPGn, COM
            metadata += pos - start
        elif marker == _SOS:
            found = _JPEG_MARKER_AFTER_SCAN.search(data, pos)
            if found is None:
                raise LayoutError(
                    "the JPEG is truncated: it ends inside its scan data, before its EOI marker"
                )
            pos = found.start()


def gif_layout(data: bytes, max_frames: int) -> Layout:
    """GIF: blocks until the trailer; an image descriptor per frame."""
    if len(data) < 13 or not data.startswith((b"GIF87a", b"GIF89a")):
        raise LayoutError("not a GIF: the header is missing")
    size = len(data)
    flags = data[10]
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    frames = 0
    metadata = 0
    start = pos
    try:
        while pos < size:
            start = pos
            introducer = data[pos]
            if introducer == _GIF_TRAILER:
                return Layout(pos + 1, frames, metadata, True, "after its trailer")
            if introducer == _GIF_IMAGE:
                frames += 1
                if frames > max_frames:
                    return Layout(pos, frames, metadata, False)
                descriptor_flags = data[pos + 9]
                pos += 10
                if descriptor_flags & 0x80:
                    pos += 3 << ((descriptor_flags & 7) + 1)
                pos = _skip_sub_blocks(data, pos + 1)  # after the LZW minimum code size
            elif introducer == _GIF_EXTENSION:
                label = data[pos + 1]
                pos = _skip_sub_blocks(data, pos + 2)
                if label != _GIF_GRAPHIC_CONTROL:
                    metadata += pos - start
            else:
                # Not a block: the GIF ends here, as it does for browsers' decoders.
                ended_by = f"before a byte 0x{introducer:02X} that starts no block"
                return Layout(pos, frames, metadata, True, ended_by)
    except IndexError:
        pos = size + 1
    if pos > size:
        raise LayoutError(f"the GIF is truncated: its block at byte {start} runs past the end")
    return Layout(size, frames, metadata, True, "at the end of the file")


def _skip_sub_blocks(data: bytes, pos: int) -> int:
    """The offset after a chain of sub-blocks (each a length byte; 0 ends the chain)."""
    while True:
        length = data[pos]  # IndexError past the end: truncated
        pos += length + 1
        if not length:
            return pos


def webp_layout(data: bytes, max_frames: int) -> Layout:
    """WebP: the RIFF size says where it ends; ANMF chunks are its frames."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise LayoutError("not a WebP: the RIFF header is missing")
    (riff_size,) = struct.unpack_from("<I", data, 4)
    end = 8 + riff_size
    if end > len(data):
        raise LayoutError(
            f"the WebP is truncated: its RIFF size says {end} bytes but the file has {len(data)}"
        )
    pos = 12
    frames = 0
    metadata = 0
    while pos < end:
        if end - pos < 8:
            raise LayoutError(f"the WebP has a partial chunk header at byte {pos}")
        kind, length = struct.unpack_from("<4sI", data, pos)
        if pos + 8 + length > end:
            raise LayoutError(f"the WebP's {kind!r} chunk at byte {pos} runs past its RIFF size")
        chunk_end = min(pos + 8 + length + (length & 1), end)  # chunks are padded to even
        if kind == b"ANMF":
            frames += 1
            if frames > max_frames:
                return Layout(chunk_end, frames, metadata, False)
        elif kind not in _WEBP_IMAGE_CHUNKS:
            metadata += chunk_end - pos
        pos = chunk_end
    return Layout(end, max(frames, 1), metadata, True, "where its RIFF size says")


_READERS: dict[str, Callable[[bytes, int], Layout]] = {
    "image/png": png_layout,
    "image/jpeg": jpeg_layout,
    "image/gif": gif_layout,
    "image/webp": webp_layout,
}
