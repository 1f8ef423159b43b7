"""Application metadata rules as pure units: what is stored, and what each refusal names."""

from __future__ import annotations

from typing import Any

import pytest

from services.gateway.metadata import (
    MAX_BYTES,
    MetadataRefused,
    check_metadata,
    from_query,
    from_uppy,
)


def fields(raw: object) -> list[str]:
    with pytest.raises(MetadataRefused) as refused:
        check_metadata(raw)
    assert refused.value.status == 422
    return [e.field for e in refused.value.errors]


def test_strings_under_the_limits_are_stored_as_given() -> None:
    given = {"order_id": "42", "tenant.region": "eu-1", "note": "ünïcode ✓", "empty": ""}
    assert check_metadata(given) == given
    assert check_metadata(None) == {}
    assert check_metadata({f"k{i}": "v" for i in range(16)}) == {f"k{i}": "v" for i in range(16)}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({f"k{i}": "v" for i in range(17)}, ["metadata"]),
        ({"big": "x" * (MAX_BYTES - 2)}, ["metadata"]),
        ({"nested": {"a": "b"}}, ["metadata.nested"]),
        (
            {"n": 5, "ok": "fine", "flag": True, "none": None, "list": ["a"]},
            [
                "metadata.n",
                "metadata.flag",
                "metadata.none",
                "metadata.list",
            ],
        ),
        ({"Order": "1"}, ["metadata.Order"]),
        ({"has space": "1"}, ["metadata.has space"]),
        ({"": "1"}, ["metadata."]),
        ({"k" * 65: "1"}, [f"metadata.{'k' * 65}"]),
        (["a", "b"], ["metadata"]),
        ("order=42", ["metadata"]),
    ],
)
def test_each_refusal_names_the_field(raw: object, expected: list[str]) -> None:
    assert fields(raw) == expected


def test_the_byte_limit_counts_utf8_of_keys_and_values() -> None:
    exactly = {"k": "é" * ((MAX_BYTES - 1) // 2)}  # 1 + 2·1023 = 2047 bytes
    assert check_metadata(exactly) == exactly
    assert fields({"k": "é" * 1024}) == ["metadata"]


def test_uppy_meta_loses_uppys_own_fields_and_the_profile() -> None:
    meta: dict[str, Any] = {
        "name": "a.jpg",
        "type": "image/jpeg",
        "relativePath": None,
        "profile": "image",
        "order_id": "42",
    }
    assert from_uppy(meta) == {"order_id": "42"}
    assert from_uppy(None) == {}


def test_query_metadata_is_read_from_bracketed_names_once_each() -> None:
    meta, errors = from_query(
        [("filename", "a.jpg"), ("metadata[profile]", "image"), ("metadata[order_id]", "42")]
    )
    assert (meta, errors) == ({"profile": "image", "order_id": "42"}, [])
    _, errors = from_query([("metadata[a]", "1"), ("metadata[a]", "2")])
    assert [e.field for e in errors] == ["metadata.a"]
