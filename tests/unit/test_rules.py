"""Pure rules: the state machine, policy checks, key naming, part sizing, settings."""

from __future__ import annotations

import base64
import hashlib
import itertools
import os
import unicodedata
import uuid

import pytest
from pydantic import ValidationError

from services.gateway.policy import check_declared, checksum_b64, part_layout, uses_multipart
from shared.keys import object_key, owner_hash, thumbnail_key, upload_id_from_key
from shared.settings import MiB, Settings, UploadPolicy, default_profiles
from shared.status import FINAL, Status, can_transition

IMAGE = default_profiles()["image"]
MEDIA = default_profiles()["media"]


class TestLifecycle:
    def test_the_happy_path_moves_forward(self) -> None:
        path = [Status.PENDING, Status.UPLOADED, Status.SCANNING, Status.PROCESSING, Status.READY]
        for current, nxt in itertools.pairwise(path):
            assert can_transition(current, nxt)

    @pytest.mark.parametrize("final", sorted(FINAL))
    def test_nothing_leaves_a_final_state(self, final: Status) -> None:
        assert not any(can_transition(final, to) for to in Status)

    def test_no_backward_or_repeated_moves(self) -> None:
        assert not can_transition(Status.PROCESSING, Status.SCANNING)
        assert not can_transition(Status.UPLOADED, Status.UPLOADED)
        assert not can_transition(Status.SCANNING, Status.PENDING)

    def test_late_events_may_skip_stages(self) -> None:
        assert can_transition(Status.UPLOADED, Status.READY)
        assert can_transition(Status.PENDING, Status.INFECTED)

    def test_expiry_and_abort_only_before_landing(self) -> None:
        assert can_transition(Status.PENDING, Status.EXPIRED)
        assert can_transition(Status.UPLOADING, Status.ABORTED)
        assert not can_transition(Status.UPLOADED, Status.EXPIRED)
        assert not can_transition(Status.SCANNING, Status.ABORTED)


class TestPolicy:
    def test_a_valid_declaration_is_normalised(self) -> None:
        declared, errors = check_declared(
            IMAGE, filename="  cafe\u0301.JPG ", content_type=" Image/JPEG", size=5, sha256=None
        )
        assert errors == []
        assert declared is not None
        assert declared.filename == "café.JPG"
        assert declared.content_type == "image/jpeg"

    def test_every_failing_field_is_reported(self) -> None:
        declared, errors = check_declared(
            IMAGE, filename="", content_type="image/svg+xml", size=0, sha256="xyz"
        )
        assert declared is None
        assert {e.field for e in errors} == {"filename", "content_type", "size", "sha256"}

    @pytest.mark.parametrize("name", ["a/b.jpg", "..", "c\\d.jpg", "bad\x00.jpg", "rtl\u202e.jpg"])
    def test_paths_and_control_characters_are_refused(self, name: str) -> None:
        _, errors = check_declared(
            IMAGE, filename=name, content_type="image/png", size=1, sha256=None
        )
        assert [e.field for e in errors] == ["filename"]

    def test_every_control_character_is_refused(self) -> None:
        """By Unicode category (Cc, Cf, Zl, Zp), with an ASCII name checked the quick way."""
        for code in [*range(0x80), 0x85, 0xA0, 0xAD, 0x200B, 0x2028, 0x2029, 0x202E, 0xFEFF]:
            char = chr(code)
            control = unicodedata.category(char) in {"Cc", "Cf", "Zl", "Zp"}
            _, errors = check_declared(
                IMAGE, filename=f"a{char}b.png", content_type="image/png", size=1, sha256=None
            )
            refused = [e.field for e in errors] == ["filename"]
            assert refused is (control or char in "/\\"), hex(code)

    def test_size_bounds_are_inclusive(self) -> None:
        for size, ok in [(1, True), (10_000_000, True), (10_000_001, False), (0, False)]:
            _, errors = check_declared(
                IMAGE, filename="a.png", content_type="image/png", size=size, sha256=None
            )
            assert (errors == []) is ok

    def test_checksums_in_hex_or_base64(self) -> None:
        digest = hashlib.sha256(b"x").digest()
        b64 = base64.b64encode(digest).decode()
        assert checksum_b64(digest.hex()) == b64
        assert checksum_b64(b64) == b64
        assert checksum_b64("zz" * 32) is None
        assert checksum_b64(base64.b64encode(b"short").decode()) is None


class TestKeys:
    def test_keys_are_server_generated_and_round_trip(self) -> None:
        uid = uuid.uuid4()
        key = object_key("uploads", "alice", uid)
        assert key == f"uploads/{owner_hash('alice')}/{uid}"
        assert "alice" not in key
        assert upload_id_from_key("uploads", key) == uid

    @pytest.mark.parametrize(
        "key",
        [
            "uploads/0123456789abcdef/not-a-uuid",
            "quarantine/uploads/0123456789abcdef/" + str(uuid.UUID(int=1)),
            "other/0123456789abcdef/" + str(uuid.UUID(int=1)),
            thumbnail_key("uploads/0123456789abcdef/" + str(uuid.UUID(int=1)), 256),
            "uploads/short/" + str(uuid.UUID(int=1)),
            "uploads/0123456789abcdef/" + str(uuid.UUID(int=2**128 - 1)).upper(),
        ],
    )
    def test_other_keys_are_not_uploads(self, key: str) -> None:
        assert upload_id_from_key("uploads", key) is None


class TestParts:
    @pytest.mark.parametrize(
        ("size", "part_size", "count"),
        [
            (100 * MiB + 1, 8 * MiB, 13),
            (2000 * MiB, 8 * MiB, 250),
            (100_000 * MiB, 10 * MiB, 10_000),
            (5 * 1024 * 1024 * MiB, 525 * MiB, 9987),
        ],
    )
    def test_part_size_is_the_smallest_whole_mib_that_fits(
        self, size: int, part_size: int, count: int
    ) -> None:
        assert part_layout(size) == (part_size, count)
        assert count <= 10_000
        assert (count - 1) * part_size < size <= count * part_size

    def test_multipart_only_above_the_threshold(self) -> None:
        assert not uses_multipart(IMAGE, 10_000_000)
        assert not uses_multipart(MEDIA, 100 * MiB)
        assert uses_multipart(MEDIA, 100 * MiB + 1)


class TestSettings:
    def test_a_profile_larger_than_the_scanner_can_scan_is_refused(self) -> None:
        huge = UploadPolicy(
            content_types=frozenset({"video/mp4"}),
            max_size=3000 * MiB,
            multipart_threshold=100 * MiB,
        )
        with pytest.raises(ValidationError, match="scanner can fully scan"):
            Settings(profiles={"media": huge, "image": IMAGE})

    def test_defaults_match_the_design(self, monkeypatch: pytest.MonkeyPatch) -> None:
        # The defaults themselves: not the developer's environment, nor a `.env` file.
        for name in list(os.environ):
            if name.startswith("CLEARANCE_"):
                monkeypatch.delenv(name)
        settings = Settings(_env_file=None)
        assert settings.presign_ttl_seconds == 900
        assert settings.profiles["image"].max_size == 10_000_000
        assert settings.profiles["media"].max_size == 2000 * MiB
        assert settings.gateway_port == 8080

    def test_profiles_come_from_the_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(
            "CLEARANCE_PROFILES",
            '{"image": {"content_types": ["image/png"], "max_size": 1000}}',
        )
        assert Settings().profiles["image"].content_types == frozenset({"image/png"})

    @pytest.mark.parametrize("name", ["ph otos", "phötos", "-x", "a" * 65, ""])
    def test_profile_names_must_be_sendable_as_object_metadata(self, name: str) -> None:
        with pytest.raises(ValidationError, match="profile name"):
            Settings(_env_file=None, profiles={"image": IMAGE, name: IMAGE})


class TestProductionSettings:
    def test_development_secrets_are_refused(self) -> None:
        with pytest.raises(ValidationError, match="jwt_secret is the development default"):
            Settings(environment="production", _env_file=None)

    def test_real_secrets_are_accepted_and_open_storage_is_not(self) -> None:
        real = {
            "jwt_secret": "j" * 40,
            "s3_access_key": "prod-key",
            "s3_secret_key": "prod-secret",
            "webhook_token": "hook-token",
        }
        assert Settings(environment="production", _env_file=None, **real).environment == (
            "production"
        )
        with pytest.raises(ValidationError, match="s3_access_key"):
            Settings(environment="production", _env_file=None, **(real | {"s3_access_key": ""}))
        with pytest.raises(ValidationError, match="at least 32"):
            Settings(environment="production", _env_file=None, **(real | {"jwt_secret": "short"}))
