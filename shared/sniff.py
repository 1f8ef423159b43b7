"""Detect a file's real type from its first bytes, never from what the client declared.

Pure functions, no I/O: the caller hands over the head of the object
(`SNIFF_BYTES` is always enough) and compares the answer with the declared
type through `type_matches`.
"""

from __future__ import annotations

# Every signature below is decided within this many leading bytes.
SNIFF_BYTES = 4096

# Fixed signatures at offset 0, checked in order (longest prefixes first where
# they share a start).
_PREFIXES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"%PDF-", "application/pdf"),
    (b"PK\x03\x04", "application/zip"),
    (b"PK\x05\x06", "application/zip"),  # empty archive
    (b"PK\x07\x08", "application/zip"),  # spanned archive marker
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
    (b"BM", "image/bmp"),
    (b"\x1f\x8b", "application/gzip"),
    (b"7z\xbc\xaf\x27\x1c", "application/x-7z-compressed"),
    (b"Rar!\x1a\x07", "application/vnd.rar"),
    (b"\x7fELF", "application/x-elf"),
    (b"MZ", "application/vnd.microsoft.portable-executable"),
    (b"OggS", "application/ogg"),
    (b"fLaC", "audio/flac"),
    (b"ID3", "audio/mpeg"),
)

_RIFF_FORMS = {b"WEBP": "image/webp", b"AVI ": "video/x-msvideo", b"WAVE": "audio/wav"}

# ISO base media file format (`ftyp` box) brands.
_QUICKTIME_BRANDS = frozenset({b"qt  "})
_MP4_BRANDS = frozenset(
    {
        b"isom",
        b"iso2",
        b"iso3",
        b"iso4",
        b"iso5",
        b"iso6",
        b"iso7",
        b"iso8",
        b"iso9",
        b"mp41",
        b"mp42",
        b"mp71",
        b"avc1",
        b"dash",
        b"msnv",
        b"M4V ",
        b"M4VH",
        b"M4VP",
        b"f4v ",
        b"NDAS",
        b"MSNV",
    }
)
_OTHER_BRANDS = {
    b"M4A ": "audio/mp4",
    b"M4B ": "audio/mp4",
    b"3gp4": "video/3gpp",
    b"3gp5": "video/3gpp",
    b"3gp6": "video/3gpp",
    b"3g2a": "video/3gpp2",
    b"avif": "image/avif",
    b"avis": "image/avif",
    b"heic": "image/heic",
    b"heix": "image/heic",
    b"heim": "image/heic",
    b"heis": "image/heic",
}
# Structural HEIF brands: they say "an image file of the HEIF family" but not its
# codec, so they count only when no brand names one (a `mif1` file that is also
# `avif` is AVIF, whichever brand comes first).
_HEIF_STRUCTURAL = frozenset({b"mif1", b"msf1", b"miaf"})
# QuickTime files written before `ftyp` existed open with one of these atoms.
_LEGACY_QUICKTIME_ATOMS = frozenset({b"moov", b"mdat", b"wide", b"pnot", b"free", b"skip"})

_EBML_MAGIC = b"\x1a\x45\xdf\xa3"
_EBML_DOCTYPE_ID = 0x4282
_EBML_DOCTYPES = {b"webm": "video/webm", b"matroska": "video/x-matroska"}

# Names clients use for the same type.
_ALIASES = {
    "image/jpg": "image/jpeg",
    "image/pjpeg": "image/jpeg",
    "image/x-png": "image/png",
    "application/x-pdf": "application/pdf",
    "application/x-zip": "application/zip",
    "application/x-zip-compressed": "application/zip",
    "video/x-m4v": "video/mp4",
    "audio/x-wav": "audio/wav",
    "audio/wave": "audio/wav",
    "image/x-ms-bmp": "image/bmp",
}

# MP4 and QuickTime share one container and the same demuxers; recorders and
# browsers label them loosely (an `.mov` holding an `mp42` brand is common), so
# one may stand for the other. HEIC is HEIF with HEVC inside, and phones and
# browsers name `.heic` files either way. Nothing else is interchangeable.
_INTERCHANGEABLE = (
    frozenset({"video/mp4", "video/quicktime"}),
    frozenset({"image/heic", "image/heif"}),
)

# Declared types whose container is a ZIP archive: they match a detected ZIP.
_ZIP_CONTAINERS = frozenset(
    {
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        "application/vnd.oasis.opendocument.text",
        "application/vnd.oasis.opendocument.spreadsheet",
        "application/vnd.oasis.opendocument.presentation",
        "application/epub+zip",
        "application/java-archive",
    }
)


def sniff_type(head: bytes) -> str | None:
    """The MIME type the leading bytes of a file prove, or None when unrecognised.

    `head` should hold the first `SNIFF_BYTES` bytes (or the whole file if
    shorter). Container formats are told apart by their inner markers: the RIFF
    form type, the ISO-BMFF `ftyp` brands and the EBML DocType.
    """
    if head.startswith(b"RIFF") and len(head) >= 12:
        return _RIFF_FORMS.get(head[8:12])
    if len(head) >= 8 and head[4:8] == b"ftyp":
        return _iso_bmff_type(head)
    if head.startswith(_EBML_MAGIC):
        return _ebml_type(head)
    for prefix, mime in _PREFIXES:
        if head.startswith(prefix):
            return mime
    legacy_atom = len(head) >= 8 and head[4:8] in _LEGACY_QUICKTIME_ATOMS
    if legacy_atom and int.from_bytes(head[:4], "big") >= 8:
        return "video/quicktime"
    return None


def normalise_type(content_type: str) -> str:
    """Lower-case a declared type, drop parameters (`; charset=...`) and map aliases."""
    base = content_type.split(";", 1)[0].strip().lower()
    return _ALIASES.get(base, base)


def type_matches(declared: str, detected: str | None) -> bool:
    """Whether content sniffed as `detected` may be stored as the `declared` type.

    Unrecognised content (`detected is None`) never matches.
    """
    if detected is None:
        return False
    want = normalise_type(declared)
    if want == detected:
        return True
    if detected == "application/zip" and want in _ZIP_CONTAINERS:
        return True
    return any(want in group and detected in group for group in _INTERCHANGEABLE)


def _iso_bmff_type(head: bytes) -> str | None:
    box_size = int.from_bytes(head[:4], "big")
    # The major brand decides; compatible brands rescue unknown majors.
    brands = [head[8:12]]
    end = min(len(head), box_size) if box_size >= 16 else min(len(head), 16)
    brands += [head[i : i + 4] for i in range(16, end - 3, 4)]
    for brand in brands:
        if brand in _QUICKTIME_BRANDS:
            return "video/quicktime"
        if brand in _MP4_BRANDS:
            return "video/mp4"
        if brand in _OTHER_BRANDS:
            return _OTHER_BRANDS[brand]
    if any(brand in _HEIF_STRUCTURAL for brand in brands):
        return "image/heif"
    return None


def _read_vint(buf: bytes, pos: int, *, keep_marker: bool) -> tuple[int, int] | None:
    """An EBML variable-length integer at `pos`: (value, next position)."""
    if pos >= len(buf) or buf[pos] == 0:
        return None
    first = buf[pos]
    length = 8 - first.bit_length() + 1
    if pos + length > len(buf):
        return None
    value = first if keep_marker else first & ((1 << (8 - length)) - 1)
    for byte in buf[pos + 1 : pos + length]:
        value = (value << 8) | byte
    return value, pos + length


def _ebml_type(head: bytes) -> str | None:
    header = _read_vint(head, len(_EBML_MAGIC), keep_marker=False)
    if header is None:
        return None
    header_size, pos = header
    end = min(len(head), pos + header_size)
    # Walk the EBML header's children until DocType.
    while pos < end:
        element = _read_vint(head, pos, keep_marker=True)
        if element is None:
            return None
        element_id, pos = element
        sized = _read_vint(head, pos, keep_marker=False)
        if sized is None:
            return None
        size, pos = sized
        if element_id == _EBML_DOCTYPE_ID:
            return _EBML_DOCTYPES.get(head[pos : pos + size].rstrip(b"\x00"))
        pos += size
    return None
