"""Upload rules as plain functions: policy checks, profile choice, part sizing.

No I/O here. The rules raise the gateway's precise refusals (below), which each API
answers in its own envelope.
"""

from __future__ import annotations

import base64
import binascii
import math
import unicodedata
from dataclasses import dataclass

from shared.problems import Conflict, FieldError, PayloadTooLarge, ValidationFailed
from shared.settings import S3_MAX_PART, S3_MAX_PARTS, S3_MIN_PART, MiB, Settings, UploadPolicy

# Uploads started through the Companion routes (`/s3`) declare no size: Uppy never
# sends one. Storage enforces the profile's byte range; the landed size is recorded.
UNDECLARED_SIZE = 0


class PolicyRefused(ValidationFailed):
    """The declared file (or the profile asked for) breaks the upload policy."""


class PartsGone(Conflict):
    """Storage no longer holds the multipart upload (aborted or expired there)."""


class PartListRefused(Conflict):
    """Storage refused to complete with the given part list."""


class TooLarge(PayloadTooLarge):
    """The stored file is outside the profile's byte range."""

    slug = "file-too-large"
    title = "The file is outside the profile's size range"


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


_CONTROL_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})


def _has_control(name: str) -> bool:
    """A control, format or line/paragraph separator character anywhere in `name`."""
    if name.isascii():  # then those are exactly what str.isprintable refuses (C code)
        return not name.isprintable()
    return any(unicodedata.category(c) in _CONTROL_CATEGORIES for c in name)


def profile_named(settings: Settings, name: str | None) -> tuple[str, UploadPolicy]:
    """The profile a `/v1` upload names (the default one if none)."""
    name = name or settings.default_profile
    policy = settings.profiles.get(name)
    if policy is None:
        raise PolicyRefused(
            "unknown upload profile",
            errors=[
                FieldError("profile", f"must be one of {', '.join(sorted(settings.profiles))}")
            ],
        )
    return name, policy


def choose_profile(
    settings: Settings, content_type: str, requested: str | None, *, multipart: bool
) -> tuple[str, UploadPolicy]:
    """The profile an Uppy upload falls under.

    `metadata[profile]` names it; otherwise the default profile if it takes the type,
    else the tightest profile (smallest maximum) that does. Multipart uploads need a
    profile that allows multipart.
    """
    profiles = settings.profiles
    if requested:
        policy = profiles.get(requested)
        if policy is None:
            raise PolicyRefused(
                f"unknown upload profile {requested!r}; use one of {', '.join(sorted(profiles))}"
            )
        if multipart and policy.multipart_threshold is None:
            raise PolicyRefused(
                f"the {requested} profile takes single-request uploads only, not multipart"
            )
        return requested, policy
    ctype = normalise_content_type(content_type)
    names = [
        name
        for name, policy in profiles.items()
        if ctype in policy.content_types and (not multipart or policy.multipart_threshold)
    ]
    if not names:
        how = "a multipart upload" if multipart else "an upload"
        raise PolicyRefused(f"no upload profile takes {ctype or 'an empty type'} as {how}")
    if settings.default_profile in names:
        return settings.default_profile, profiles[settings.default_profile]
    name = min(names, key=lambda n: (profiles[n].max_size, n))
    return name, profiles[name]


def single_request_max(policy: UploadPolicy) -> int:
    """The largest single POST a profile allows (S3 takes at most 5 GiB in one request)."""
    return min(policy.max_size, S3_MAX_PART)


def max_part_number(policy: UploadPolicy) -> int:
    """No file within the profile needs a higher part number (parts are ≥ 5 MiB)."""
    return max(1, min(S3_MAX_PARTS, math.ceil(policy.max_size / S3_MIN_PART)))


def size_range(policy: UploadPolicy) -> str:
    return f"{policy.min_size}..{policy.max_size} bytes"


def uses_multipart(policy: UploadPolicy, size: int) -> bool:
    return policy.multipart_threshold is not None and size > policy.multipart_threshold


def part_layout(size: int) -> tuple[int, int]:
    """(part_size, part_count): the smallest whole MiB ≥ max(8 MiB, size/10000)."""
    part_size = max(8 * MiB, math.ceil(size / S3_MAX_PARTS / MiB) * MiB)
    if part_size > S3_MAX_PART:
        raise ValueError("file too large for S3 multipart")
    return part_size, max(1, math.ceil(size / part_size))
