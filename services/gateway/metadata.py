"""Application metadata: the small string map an application attaches to an upload.

It is the application's, not Clearance's: stored as given, returned in the record and
carried in every event and webhook, never interpreted. The rules keep it small enough
to travel in every message: at most `MAX_KEYS` keys matching `KEY_PATTERN`, string
values, at most `MAX_BYTES` in total (UTF-8 of keys and values). No I/O here.

On the Uppy routes the map is Uppy's `meta` less what Uppy adds to every file
(`UPPY_OWN`) and `profile`, which picks the upload profile and is not stored.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from shared.problems import FieldError, ValidationFailed

MAX_KEYS = 16
MAX_BYTES = 2048
KEY_PATTERN = r"^[a-z0-9_.-]{1,64}$"
_KEY = re.compile(KEY_PATTERN)

# What @uppy/core puts in every file's `meta` (and @uppy/aws-s3 sends along).
UPPY_OWN = frozenset({"name", "type", "relativePath"})
# On the Uppy routes `metadata.profile` chooses the profile (it is not app metadata).
PROFILE_KEY = "profile"

# The JSON Schema of the map, for /openapi.json and /asyncapi.json.
SCHEMA: dict[str, Any] = {
    "type": "object",
    "maxProperties": MAX_KEYS,
    "propertyNames": {"pattern": KEY_PATTERN},
    "additionalProperties": {"type": "string"},
    "description": (
        f"Application metadata, stored and sent back as given: at most {MAX_KEYS} keys"
        f" matching {KEY_PATTERN}, string values, at most {MAX_BYTES} bytes in total"
        " (UTF-8 of keys and values)"
    ),
}


class MetadataRefused(ValidationFailed):
    """The application metadata breaks the rules; each bad key is named."""


def _kind(value: object) -> str:
    match value:
        case None:
            return "null"
        case bool():
            return "a boolean"
        case int() | float():
            return "a number"
        case dict():
            return "an object"
        case list():
            return "an array"
        case _:
            return type(value).__name__


def check_metadata(raw: object, *, field: str = "metadata") -> dict[str, str]:
    """The metadata as stored, or `MetadataRefused` naming every bad field.

    `None` is no metadata. Errors name `metadata` for the map as a whole and
    `metadata.<key>` for one entry.
    """
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise MetadataRefused(
            "invalid application metadata",
            errors=[FieldError(field, f"must be an object of strings, not {_kind(raw)}")],
        )
    errors: list[FieldError] = []
    if len(raw) > MAX_KEYS:
        errors.append(FieldError(field, f"has {len(raw)} keys; at most {MAX_KEYS} are allowed"))
    total = 0
    clean: dict[str, str] = {}
    for key, value in raw.items():
        name = f"{field}.{key}"
        if not isinstance(key, str) or not _KEY.match(key):
            errors.append(FieldError(name, "keys must be 1-64 characters of a-z, 0-9, _ . -"))
            continue
        if not isinstance(value, str):
            errors.append(FieldError(name, f"must be a string, not {_kind(value)}"))
            continue
        total += len(key.encode()) + len(value.encode())
        clean[key] = value
    if total > MAX_BYTES:
        errors.append(
            FieldError(field, f"is {total} bytes (keys and values, UTF-8); at most {MAX_BYTES}")
        )
    if errors:
        raise MetadataRefused("invalid application metadata", errors=errors)
    return clean


def from_uppy(meta: Mapping[str, Any] | None) -> dict[str, Any]:
    """Uppy's `meta` without Uppy's own fields and the profile selector."""
    if not meta:
        return {}
    return {k: v for k, v in meta.items() if k not in UPPY_OWN and k != PROFILE_KEY}


def from_query(pairs: Iterable[tuple[str, str]]) -> tuple[dict[str, Any], list[FieldError]]:
    """`metadata[k]=v` query parameters (Uppy's `/s3/params`) → Uppy's `meta` map.

    A key given twice is an error: which value was meant is not ours to guess.
    """
    meta: dict[str, Any] = {}
    errors: list[FieldError] = []
    for name, value in pairs:
        if not (name.startswith("metadata[") and name.endswith("]")):
            continue
        key = name[len("metadata[") : -1]
        if key in meta:
            errors.append(FieldError(f"metadata.{key}", "is given more than once"))
        meta[key] = value
    return meta, errors
