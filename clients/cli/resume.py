"""Resume state: one small JSON file per source file, so a rerun continues an upload.

A file is recognised by its absolute path, size, modification time and the SHA-256
of its first and last MiB: if any of them changed, it is another file and the
upload starts over. The state names the upload and the gateway that holds it, and
the part layout the gateway chose; which parts storage already holds is asked
again on every run (`GET /v1/uploads/{id}/parts`), never remembered.

State files are written atomically (temporary file, fsync, rename) and deleted once
the upload has landed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

STATE_VERSION = 1
EDGE_BYTES = 1024 * 1024  # how much of each end of the file goes into its identity


@dataclass(frozen=True, slots=True)
class FileIdentity:
    """What makes a source file "the same file" across runs."""

    path: str
    size: int
    mtime_ns: int
    head_sha256: str
    tail_sha256: str

    @property
    def key(self) -> str:
        """The state file's name (without `.json`)."""
        joined = "\0".join(
            [self.path, str(self.size), str(self.mtime_ns), self.head_sha256, self.tail_sha256]
        )
        return hashlib.sha256(joined.encode()).hexdigest()[:40]


def identify(path: str | os.PathLike[str]) -> FileIdentity:
    """Fingerprint a file (blocking: reads up to 2 MiB; run it in a thread)."""
    absolute = os.path.abspath(path)
    with open(absolute, "rb") as f:
        st = os.fstat(f.fileno())
        head = os.pread(f.fileno(), EDGE_BYTES, 0)
        tail_start = max(0, st.st_size - EDGE_BYTES)
        tail = os.pread(f.fileno(), EDGE_BYTES, tail_start)
    return FileIdentity(
        path=absolute,
        size=st.st_size,
        mtime_ns=st.st_mtime_ns,
        head_sha256=hashlib.sha256(head).hexdigest(),
        tail_sha256=hashlib.sha256(tail).hexdigest(),
    )


@dataclass(frozen=True, slots=True)
class UploadState:
    """An upload in progress for one source file, as remembered between runs."""

    identity: FileIdentity
    gateway: str
    upload_id: str
    filename: str
    content_type: str
    profile: str
    part_size: int | None  # None: a single-PUT upload
    part_count: int | None

    def to_json(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> UploadState:
        """Parse a state document; ValueError if it is not one this version wrote."""
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            raise ValueError("not a state file of this version")
        try:
            identity = FileIdentity(**data["identity"])
            state = cls(
                identity=identity,
                gateway=str(data["gateway"]),
                upload_id=str(data["upload_id"]),
                filename=str(data["filename"]),
                content_type=str(data["content_type"]),
                profile=str(data["profile"]),
                part_size=_optional_int(data["part_size"]),
                part_count=_optional_int(data["part_count"]),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"incomplete state file: {exc}") from None
        if (state.part_size is None) != (state.part_count is None):
            raise ValueError("part_size and part_count go together")
        return state


def _optional_int(value: object) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise TypeError(f"expected a positive integer, got {value!r}")
    return value


def default_state_dir() -> Path:
    """`$XDG_CACHE_HOME/clearance/uploads`, else `~/.cache/clearance/uploads`."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "clearance" / "uploads"


class StateStore:
    """The state files of one directory (blocking file I/O; each call is small)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path_for(self, identity: FileIdentity) -> Path:
        return self.directory / f"{identity.key}.json"

    def load(self, identity: FileIdentity) -> UploadState | None:
        """The state for exactly this file, or None (absent, unreadable or another file's)."""
        try:
            raw = self.path_for(identity).read_bytes()
        except FileNotFoundError:
            return None
        try:
            state = UploadState.from_json(json.loads(raw))
        except ValueError:
            # A torn or foreign file is as good as none: the upload starts over.
            return None
        return state if state.identity == identity else None

    def save(self, state: UploadState) -> Path:
        """Write the state atomically: readers see the old or the new file, never half."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        target = self.path_for(state.identity)
        temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        data = json.dumps(state.to_json(), indent=1, sort_keys=True).encode()
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
            raise
        return target

    def delete(self, identity: FileIdentity) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path_for(identity).unlink()
