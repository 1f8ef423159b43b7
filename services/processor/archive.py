"""ZIP archives the virus scanner cannot vouch for.

clamd scans only the first `MaxFileSize` bytes of a compressed member and still
answers OK (see the scanner notes), and it cannot look inside encrypted members.
So after a clean scan the processor reads the archive's central directory (two
ranged reads, never the whole file) and rejects archives with a member larger than
the scanner's limit or an encrypted member.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

EOCD = b"PK\x05\x06"
ZIP64_LOCATOR = b"PK\x06\x07"
CENTRAL = b"PK\x01\x02"
# End of central directory record (22 bytes) plus the longest possible comment.
TAIL_BYTES = 22 + 0xFFFF
ZIP32_MAX = 0xFFFFFFFF


class ArchiveError(ValueError):
    """The archive's directory is unreadable; it can't be vouched for either."""


@dataclass(frozen=True)
class Member:
    name: str
    size: int  # uncompressed, as declared by the directory
    encrypted: bool


def central_directory_span(tail: bytes, total_size: int) -> tuple[int, int]:
    """(offset, length) of the central directory, from the archive's last bytes."""
    at = tail.rfind(EOCD)
    if at < 0 or len(tail) - at < 22:
        raise ArchiveError("no end-of-central-directory record")
    if tail.rfind(ZIP64_LOCATOR, 0, at) >= 0:
        # Zip64 is how members over 4 GiB are stored: far beyond what can be scanned.
        raise ArchiveError("zip64 archives are not accepted")
    (cd_size, cd_offset) = struct.unpack_from("<II", tail, at + 12)
    if cd_offset + cd_size > total_size:
        raise ArchiveError("central directory lies outside the file")
    return cd_offset, cd_size


def members(directory: bytes) -> list[Member]:
    """Parse a central directory into its members."""
    found = []
    pos = 0
    while pos < len(directory):
        if directory[pos : pos + 4] != CENTRAL:
            raise ArchiveError(f"bad central directory entry at offset {pos}")
        if pos + 46 > len(directory):
            raise ArchiveError("truncated central directory")
        flags = struct.unpack_from("<H", directory, pos + 8)[0]
        size = struct.unpack_from("<I", directory, pos + 24)[0]
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", directory, pos + 28)
        name = directory[pos + 46 : pos + 46 + name_len].decode("utf-8", "replace")
        if size == ZIP32_MAX:
            raise ArchiveError(f"member {name!r} uses zip64 sizes")
        found.append(Member(name=name, size=size, encrypted=bool(flags & 0x1)))
        pos += 46 + name_len + extra_len + comment_len
    return found


def unscannable_reason(entries: list[Member], max_bytes: int) -> str | None:
    """Why the scanner's verdict can't be trusted for these members, or None."""
    for member in entries:
        if member.encrypted:
            return f"the archive member {member.name!r} is encrypted and cannot be scanned"
        if member.size > max_bytes:
            return (
                f"the archive member {member.name!r} is {member.size} bytes; the virus "
                f"scanner can fully scan at most {max_bytes}"
            )
    return None
