"""Rules for multipart part lists, as pure functions: which numbers, lengths and ETags
a part list may have, checked against what storage holds.

A `/v1` upload has a declared layout (`part_size`, `part_count`): every part's exact
length is known and the list must be complete. An upload started through the Uppy
routes declares none: its parts are whatever the client sent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from services.gateway.policy import UNDECLARED_SIZE, max_part_number
from services.gateway.storage import HeldPart, unquoted
from services.gateway.store import Upload
from shared.problems import Conflict, FieldError, ValidationFailed
from shared.settings import UploadPolicy
from shared.status import BEFORE_LANDING


def require_open(upload: Upload, what: str) -> None:
    """Parts can be signed, listed or aborted only before the bytes have landed."""
    if upload.status not in BEFORE_LANDING:
        raise Conflict(
            f"the upload is {upload.status.value}; {what}", upload_status=upload.status.value
        )


def multipart_id(upload: Upload) -> str:
    if upload.multipart_upload_id is None:
        raise Conflict("this is a single-PUT upload; it has no parts")
    return upload.multipart_upload_id


def highest_part(upload: Upload, policy: UploadPolicy) -> int:
    """The highest part number an upload may use: its layout's, else the profile's."""
    return upload.part_count if upload.part_count is not None else max_part_number(policy)


def check_part_numbers(
    numbers: list[int], highest: int, field: str = "part_numbers"
) -> list[FieldError]:
    """Part numbers are 1..`highest`, each at most once."""
    errors = []
    bad = sorted({n for n in numbers if not 1 <= n <= highest})
    if bad:
        errors.append(FieldError(field, f"must be between 1 and {highest}; got {bad[:10]}"))
    if len(set(numbers)) != len(numbers):
        errors.append(FieldError(field, "must not repeat a part number"))
    return errors


def part_length(size: int, part_size: int, part_count: int, part_number: int) -> int:
    """The exact size of one part of a declared layout: `part_size`, except the last one."""
    if part_number < part_count:
        return part_size
    return size - part_size * (part_count - 1)


def expected_length(upload: Upload, number: int) -> int | None:
    """The exact length of a part of a declared layout; None when the client chose."""
    if upload.part_size is None or upload.part_count is None:
        return None
    return part_length(upload.size, upload.part_size, upload.part_count, number)


def listed_parts(upload: Upload, parts: Sequence[tuple[int, str]], highest: int) -> dict[int, str]:
    """The client's (number, ETag) list as number → unquoted ETag, or ValidationFailed."""
    if not parts:
        raise ValidationFailed(
            "a multipart upload completes with its parts",
            errors=[FieldError("parts", "must list every part with its ETag")],
        )
    errors = check_part_numbers([n for n, _ in parts], highest, "parts")
    wanted = {n: unquoted(etag) for n, etag in parts}
    if upload.part_count is not None:
        missing = sorted(set(range(1, upload.part_count + 1)) - set(wanted))
        if missing:
            errors.append(FieldError("parts", f"missing part(s) {missing[:20]}"))
    if errors:
        raise ValidationFailed("the part list is incomplete or invalid", errors=errors)
    return wanted


def stored_total(upload: Upload, wanted: Mapping[int, str], held: Sequence[HeldPart]) -> int:
    """Check every listed part against storage; the bytes they add up to."""
    by_number = {p.part_number: p for p in held}
    problems = []
    for n, etag in sorted(wanted.items()):
        stored = by_number.get(n)
        expected = expected_length(upload, n)
        if stored is None:
            problems.append(FieldError(f"parts.{n}", "this part is not in storage"))
        elif stored.etag != etag:
            problems.append(FieldError(f"parts.{n}", "the ETag does not match the stored part"))
        elif expected is not None and stored.size != expected:
            problems.append(
                FieldError(
                    f"parts.{n}", f"stored size {stored.size} is not the expected {expected}"
                )
            )
    if problems:
        raise ValidationFailed("the parts do not match what storage holds", errors=problems)
    total = sum(by_number[n].size for n in wanted)
    if upload.size != UNDECLARED_SIZE and total != upload.size:
        raise Conflict(f"the parts add up to {total} bytes, not the declared {upload.size}")
    return total
