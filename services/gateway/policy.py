"""Upload rules as plain functions: policy checks, key naming, part sizing."""

from __future__ import annotations

import base64
import binascii
import math
import unicodedata
from dataclasses import dataclass

from shared.settings import S3_MAX_PART, S3_MAX_PARTS, MiB, UploadPolicy


@dataclass(frozen=True, slots=True)
class FieldError:
    field: str
    message: str


@dataclass(frozen=True, slots=True)
class Declared:
    """A declared file, normalised; nothing in it is trusted after the bytes land."""

    filename: str
    content_type: str
    size: int
    sha256_b64: str | None


def normalise_filename(name: str) -> str:
    return unicodedata.normalize("NFC", name.strip())


def normalise_content_type(value: str) -> str:
    return value.strip().lower()


def checksum_b64(value: str) -> str | None:
    """A SHA-256 given as 64 hex digits or base64 of 32 bytes → base64, else None."""
    v = value.strip()
    if len(v) == 64:
        try:
            return base64.b64encode(bytes.fromhex(v)).decode()
        except ValueError:
            return None
    try:
        raw = base64.b64decode(v, validate=True)
    except (binascii.Error, ValueError):
        return None
    return v if len(raw) == 32 else None


def check_declared(
    policy: UploadPolicy, *, filename: str, content_type: str, size: int, sha256: str | None
) -> tuple[Declared | None, list[FieldError]]:
    """Validate a declared file against a profile; every failing field is reported."""
    errors: list[FieldError] = []
    name = normalise_filename(filename)
    if not policy.filename_min <= len(name) <= policy.filename_max:
        errors.append(
            FieldError(
                "filename",
                f"must be {policy.filename_min}..{policy.filename_max} characters long",
            )
        )
    elif name in {".", ".."} or any(c in name for c in "/\\") or _has_control(name):
        errors.append(
            FieldError("filename", "must be a plain file name without paths or control characters")
        )
    ctype = normalise_content_type(content_type)
    if ctype not in policy.content_types:
        allowed = ", ".join(sorted(policy.content_types))
        errors.append(
            FieldError("content_type", f"{ctype or 'empty'} is not allowed; use {allowed}")
        )
    if size < policy.min_size:
        errors.append(FieldError("size", f"must be at least {policy.min_size} bytes"))
    elif size > policy.max_size:
        errors.append(FieldError("size", f"must be at most {policy.max_size} bytes"))
    checksum = None
    if sha256 is not None:
        checksum = checksum_b64(sha256)
        if checksum is None:
            errors.append(FieldError("sha256", "must be 64 hex digits or base64 of 32 bytes"))
    if errors:
        return None, errors
    return Declared(name, ctype, size, checksum), []


def _has_control(name: str) -> bool:
    return any(unicodedata.category(c) in {"Cc", "Cf", "Zl", "Zp"} for c in name)


def uses_multipart(policy: UploadPolicy, size: int) -> bool:
    return policy.multipart_threshold is not None and size > policy.multipart_threshold


def part_layout(size: int) -> tuple[int, int]:
    """(part_size, part_count): the smallest whole MiB ≥ max(8 MiB, size/10000)."""
    part_size = max(8 * MiB, math.ceil(size / S3_MAX_PARTS / MiB) * MiB)
    if part_size > S3_MAX_PART:
        raise ValueError("file too large for S3 multipart")
    return part_size, max(1, math.ceil(size / part_size))
