"""The archive check that backs up clamd on ZIP members it cannot fully scan."""

from __future__ import annotations

import pytest

from services.processor.archive import (
    ArchiveError,
    central_directory_span,
    members,
    unscannable_reason,
)
from tests.support import make_zip, patch_directory


def directory_of(data: bytes) -> bytes:
    offset, length = central_directory_span(data[-70000:], len(data))
    return data[offset : offset + length]


def test_a_plain_archive_lists_its_members() -> None:
    data = make_zip(**{"a.txt": b"hello", "dir/b.bin": b"\0" * 1000})
    found = members(directory_of(data))
    assert [(m.name, m.size, m.encrypted) for m in found] == [
        ("a.txt", 5, False),
        ("dir/b.bin", 1000, False),
    ]
    assert unscannable_reason(found, max_bytes=10_000) is None


def test_a_member_larger_than_the_scanner_limit_is_named() -> None:
    data = patch_directory(make_zip(**{"huge.iso": b"x" * 10}), size=3_000_000_000)
    reason = unscannable_reason(members(directory_of(data)), max_bytes=2_000 * 1024 * 1024)
    assert reason is not None
    assert "huge.iso" in reason


def test_an_encrypted_member_cannot_be_vouched_for() -> None:
    data = patch_directory(make_zip(**{"secret.doc": b"x"}), flags=0x1)
    reason = unscannable_reason(members(directory_of(data)), max_bytes=10_000)
    assert reason is not None
    assert "encrypted" in reason


@pytest.mark.parametrize("data", [b"not a zip at all", b"PK\x05\x06" + b"\xff" * 18])
def test_unreadable_directories_are_errors(data: bytes) -> None:
    with pytest.raises(ArchiveError):
        central_directory_span(data, len(data))


def test_zip64_sizes_are_refused() -> None:
    data = patch_directory(make_zip(**{"a": b"x"}), size=0xFFFFFFFF)
    with pytest.raises(ArchiveError, match="zip64"):
        members(directory_of(data))
