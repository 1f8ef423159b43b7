"""Resume state: which file is "the same file", and state files written atomically."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from clients.cli.resume import (
    EDGE_BYTES,
    StateStore,
    UploadState,
    default_state_dir,
    identify,
)


def write(path: Path, data: bytes, mtime_ns: int = 1_700_000_000_000_000_000) -> Path:
    path.write_bytes(data)
    os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def state_for(path: Path, upload_id: str = "u-1") -> UploadState:
    return UploadState(
        identity=identify(path),
        gateway="http://gw",
        upload_id=upload_id,
        filename=path.name,
        content_type="video/mp4",
        profile="media",
        part_size=8 * 1024 * 1024,
        part_count=3,
    )


class TestIdentity:
    def test_the_same_file_keeps_its_key(self, tmp_path: Path) -> None:
        path = write(tmp_path / "a.bin", os.urandom(3 * EDGE_BYTES))
        assert identify(path) == identify(path)
        assert identify(path).key == identify(str(path)).key

    def test_a_relative_path_is_made_absolute(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        write(tmp_path / "a.bin", b"x")
        monkeypatch.chdir(tmp_path)
        assert identify("a.bin").path == str(tmp_path / "a.bin")

    @pytest.mark.parametrize("where", ["head", "tail"])
    def test_an_edit_at_either_end_makes_another_file(self, tmp_path: Path, where: str) -> None:
        data = bytearray(os.urandom(3 * EDGE_BYTES))
        path = write(tmp_path / "a.bin", bytes(data))
        before = identify(path)
        data[0 if where == "head" else -1] ^= 1
        write(path, bytes(data))  # same size, same mtime
        assert identify(path).key != before.key

    def test_size_and_mtime_count(self, tmp_path: Path) -> None:
        path = write(tmp_path / "a.bin", b"abc")
        before = identify(path)
        write(path, b"abc", mtime_ns=1_700_000_000_000_000_001)
        assert identify(path).key != before.key
        write(path, b"abcd")
        assert identify(path).key != before.key

    def test_another_path_is_another_file(self, tmp_path: Path) -> None:
        a = write(tmp_path / "a.bin", b"abc")
        b = write(tmp_path / "b.bin", b"abc")
        assert identify(a).key != identify(b).key


class TestStateStore:
    def test_save_load_delete(self, tmp_path: Path) -> None:
        path = write(tmp_path / "a.bin", b"abc")
        store = StateStore(tmp_path / "state")
        state = state_for(path)
        saved = store.save(state)
        assert store.load(identify(path)) == state
        assert stat.S_IMODE(saved.stat().st_mode) == 0o600
        assert stat.S_IMODE(saved.parent.stat().st_mode) == 0o700
        assert [p.name for p in saved.parent.iterdir()] == [saved.name]  # no temp files left
        store.delete(identify(path))
        assert store.load(identify(path)) is None
        store.delete(identify(path))  # already gone: fine

    def test_saving_again_replaces_the_state(self, tmp_path: Path) -> None:
        path = write(tmp_path / "a.bin", b"abc")
        store = StateStore(tmp_path)
        store.save(state_for(path, "u-1"))
        store.save(state_for(path, "u-2"))
        loaded = store.load(identify(path))
        assert loaded is not None
        assert loaded.upload_id == "u-2"

    def test_a_changed_file_does_not_find_the_old_state(self, tmp_path: Path) -> None:
        path = write(tmp_path / "a.bin", b"abc")
        store = StateStore(tmp_path / "state")
        store.save(state_for(path))
        write(path, b"abd")
        assert store.load(identify(path)) is None

    @pytest.mark.parametrize(
        "content",
        [b"", b"{", b"[]", b'{"version": 99}', b'{"version": 1, "identity": {}}'],
    )
    def test_a_torn_or_foreign_file_is_ignored(self, tmp_path: Path, content: bytes) -> None:
        path = write(tmp_path / "a.bin", b"abc")
        store = StateStore(tmp_path / "state")
        store.save(state_for(path))
        store.path_for(identify(path)).write_bytes(content)
        assert store.load(identify(path)) is None

    def test_a_state_naming_another_file_is_ignored(self, tmp_path: Path) -> None:
        a = write(tmp_path / "a.bin", b"abc")
        b = write(tmp_path / "b.bin", b"xyz")
        store = StateStore(tmp_path / "state")
        doc = state_for(b).to_json()
        store.path_for(identify(a)).parent.mkdir(parents=True)
        store.path_for(identify(a)).write_text(json.dumps(doc))
        assert store.load(identify(a)) is None

    def test_bad_part_layouts_are_refused(self) -> None:
        base = {
            "version": 1,
            "identity": {
                "path": "/a",
                "size": 1,
                "mtime_ns": 1,
                "head_sha256": "h",
                "tail_sha256": "t",
            },
            "gateway": "g",
            "upload_id": "u",
            "filename": "a",
            "content_type": "video/mp4",
            "profile": "media",
        }
        for layout in [(8, None), (None, 3), (0, 3), (True, 3), ("8", 3)]:
            doc = {**base, "part_size": layout[0], "part_count": layout[1]}
            with pytest.raises(ValueError, match=r"part|integer"):
                UploadState.from_json(doc)
        single = UploadState.from_json({**base, "part_size": None, "part_count": None})
        assert single.part_size is None


def test_the_default_directory_follows_xdg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", "/x/cache")
    assert default_state_dir() == Path("/x/cache/clearance/uploads")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", "/home/u")
    assert default_state_dir() == Path("/home/u/.cache/clearance/uploads")
