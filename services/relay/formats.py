"""Storage notifications in, `ObjectCreated` events (or a reason to ignore) out. No I/O.

Three formats reach the relay:

- the SeaweedFS filer webhook: one event per request, snake_case, `extended`
  values base64 (team notes, seaweedfs §3);
- the AWS S3 event `Records` shape, sent by AWS notification targets and by
  MinIO's webhook (keys URL-encoded with `+` for spaces);
- the filer metadata log as printed by `weed filer.meta.tail`: pretty-printed
  protojson objects one after another, camelCase, 64-bit integers as strings,
  each with its `tsNs` (seaweedfs §4).

A notification that is well-formed but not about a finished upload object
(a directory, a multipart part, a thumbnail, a delete…) is `Ignored` with a
reason; one that cannot be read raises `MalformedNotification`.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import unquote_plus

from shared.events import ObjectCreated
from shared.keys import upload_id_from_key
from shared.settings import Settings

# Where SeaweedFS keeps each bucket in the filer namespace.
BUCKETS_ROOT = "/buckets/"
# SeaweedFS's own bucket of owner records, never an object.
SYSTEM_BUCKET = ".system"
# Multipart parts and upload directories live here until Complete.
MULTIPART_STAGING = ".uploads"
# `extended` key holding the S3 ETag (base64 of the quoted-less ETag text).
SEAWEED_ETAG = "Seaweed-X-Amz-ETag"
# An over-long `weed filer.meta.tail` object means the output is not what we expect.
MAX_META_LOG_OBJECT = 64 * 1024 * 1024

Source = Literal["seaweedfs", "s3"]


class MalformedNotification(ValueError):
    """A notification body that cannot be read; `detail` says what and where."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True)
class Scope:
    """Which objects the relay reports: upload keys in one bucket."""

    bucket: str
    upload_prefix: str

    @classmethod
    def from_settings(cls, settings: Settings) -> Scope:
        """The scope configured for this deployment."""
        return cls(bucket=settings.bucket, upload_prefix=settings.upload_prefix)


@dataclass(frozen=True)
class Ignored:
    """A well-formed notification that is not a finished upload object.

    `code` is short and fixed (a metric label); `detail` names the object.
    """

    code: str
    detail: str


Outcome = ObjectCreated | Ignored


@dataclass(frozen=True)
class MetaLogRecord:
    """One event of the filer metadata log: its log timestamp and what it means."""

    ts_ns: int
    outcome: Outcome


# --- typed access to untrusted JSON -------------------------------------------------


def _load_object(body: bytes | str) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedNotification(f"body is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise MalformedNotification(f"body must be a JSON object, not {type(doc).__name__}")
    return doc


def _object(parent: Mapping[str, Any], name: str, where: str) -> dict[str, Any]:
    value = parent.get(name)
    if not isinstance(value, dict):
        raise MalformedNotification(f"{where}{name} must be an object")
    return value


def _optional_object(parent: Mapping[str, Any], name: str, where: str) -> dict[str, Any]:
    value = parent.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MalformedNotification(f"{where}{name} must be an object")
    return value


def _string(parent: Mapping[str, Any], name: str, where: str) -> str:
    value = parent.get(name)
    if not isinstance(value, str):
        raise MalformedNotification(f"{where}{name} must be a string")
    return value


def _integer(parent: Mapping[str, Any], name: str, where: str, *, default: int | None) -> int:
    """An integer given as a JSON number or (protojson int64) a decimal string."""
    value = parent.get(name, default)
    if isinstance(value, bool) or value is None:
        raise MalformedNotification(f"{where}{name} must be an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value, 10)
        except ValueError:
            pass
    raise MalformedNotification(f"{where}{name} must be an integer, got {value!r:.40}")


def _size(parent: Mapping[str, Any], name: str, where: str, *, default: int | None) -> int:
    size = _integer(parent, name, where, default=default)
    if size < 0:
        raise MalformedNotification(f"{where}{name} must not be negative")
    return size


def _unix_seconds(parent: Mapping[str, Any], name: str) -> datetime | None:
    """A filer time in whole seconds, when present and sensible (directories carry year 1)."""
    value = parent.get(name)
    if isinstance(value, bool) or not isinstance(value, int | str):
        return None
    try:
        seconds = int(value)
    except ValueError:
        return None
    if seconds <= 0:
        return None
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return None


# --- the part every SeaweedFS format shares ----------------------------------------


def _etag_from_entry(extended: Mapping[str, Any], md5_b64: object, where: str) -> str | None:
    """The S3 ETag of a filer entry: the stored S3 ETag, else hex of the content MD5.

    Multipart objects carry no MD5 attribute, only the S3 ETag (`<md5>-<parts>`).
    """
    raw = extended.get(SEAWEED_ETAG)
    if raw is not None:
        if not isinstance(raw, str):
            raise MalformedNotification(f"{where}extended.{SEAWEED_ETAG} must be a string")
        try:
            text = base64.b64decode(raw, validate=True).decode("ascii")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise MalformedNotification(
                f"{where}extended.{SEAWEED_ETAG} is not base64 of an ASCII ETag"
            ) from exc
        return text.strip('"') or None
    if md5_b64 in (None, ""):
        return None
    if not isinstance(md5_b64, str):
        raise MalformedNotification(f"{where}attributes.md5 must be a string")
    try:
        digest = base64.b64decode(md5_b64, validate=True)
    except binascii.Error as exc:
        raise MalformedNotification(f"{where}attributes.md5 is not base64") from exc
    return digest.hex() or None


def _object_key(path: str, scope: Scope) -> str | Ignored:
    """The S3 key of a filer path, or why the path is not an object of ours."""
    bucket_root = f"{BUCKETS_ROOT}{scope.bucket}/"
    if path.startswith(f"{BUCKETS_ROOT}{SYSTEM_BUCKET}/"):
        return Ignored("system-bucket", f"{path} is SeaweedFS's own bookkeeping")
    if not path.startswith(bucket_root):
        return Ignored("outside-bucket", f"{path} is not in bucket {scope.bucket!r}")
    key = path[len(bucket_root) :]
    if MULTIPART_STAGING in key.split("/"):
        return Ignored("multipart-staging", f"{key} is a multipart part or upload directory")
    return key


def _upload_outcome(
    *,
    scope: Scope,
    key: str,
    size: int,
    etag: str | None,
    source: Source,
    occurred_at: datetime | None,
) -> Outcome:
    upload_id = upload_id_from_key(scope.upload_prefix, key)
    if upload_id is None:
        return Ignored("not-an-upload", f"{key} is not an upload key")
    event = ObjectCreated.build(
        upload_id=upload_id, bucket=scope.bucket, key=key, size=size, etag=etag, source=source
    )
    # The event id does not depend on the time; the time says when the object landed,
    # which matters when a replay reports it much later.
    return event.model_copy(update={"occurred_at": occurred_at}) if occurred_at else event


# --- SeaweedFS filer webhook ----------------------------------------------------------


def parse_seaweedfs_webhook(body: bytes | str, scope: Scope) -> Outcome:
    """One SeaweedFS filer webhook request → the `ObjectCreated` it reports, or `Ignored`.

    Accepted: `create`/`update` of a file (not a directory) under
    `/buckets/<bucket>/`, outside the multipart staging area, whose key is an
    upload key. Raises `MalformedNotification` for a body that cannot be read.
    """
    doc = _load_object(body)
    event_type = _string(doc, "event_type", "")
    path = _string(doc, "key", "")
    if event_type not in ("create", "update"):
        return Ignored("event-type", f"{event_type} of {path} does not create an object")
    message = _object(doc, "message", "")
    if message.get("new_entry") is None:
        raise MalformedNotification(f"a {event_type} event needs message.new_entry")
    entry = _object(message, "new_entry", "message.")
    where = "message.new_entry."
    if entry.get("is_directory") is True:
        return Ignored("directory", f"{path} is a directory")
    key = _object_key(path, scope)
    if isinstance(key, Ignored):
        return key
    attributes = _optional_object(entry, "attributes", where)
    return _upload_outcome(
        scope=scope,
        key=key,
        # Default-valued fields are left out: an empty file has no file_size.
        size=_size(attributes, "file_size", f"{where}attributes.", default=0),
        etag=_etag_from_entry(
            _optional_object(entry, "extended", where), attributes.get("md5"), where
        ),
        source="seaweedfs",
        occurred_at=_unix_seconds(attributes, "mtime"),
    )


# --- AWS S3 event records (AWS targets, MinIO webhook) --------------------------------


def _event_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _s3_record(record: object, index: int, scope: Scope) -> Outcome:
    where = f"Records[{index}]."
    if not isinstance(record, dict):
        raise MalformedNotification(f"Records[{index}] must be an object")
    event_name = _string(record, "eventName", where)
    # MinIO prefixes the AWS names with "s3:".
    kind = event_name.removeprefix("s3:")
    s3 = _object(record, "s3", where)
    bucket = _string(_object(s3, "bucket", f"{where}s3."), "name", f"{where}s3.bucket.")
    obj = _object(s3, "object", f"{where}s3.")
    raw_key = _string(obj, "key", f"{where}s3.object.")
    if not kind.startswith("ObjectCreated:"):
        return Ignored("event-type", f"{event_name} of {bucket}/{raw_key} creates no object")
    if bucket != scope.bucket:
        return Ignored("outside-bucket", f"{bucket}/{raw_key} is not in bucket {scope.bucket!r}")
    try:
        # Keys arrive form-encoded: "+" is a space, "%2B" a plus.
        key = unquote_plus(raw_key, errors="strict")
    except UnicodeDecodeError as exc:
        raise MalformedNotification(f"{where}s3.object.key is not URL-encoded UTF-8") from exc
    if MULTIPART_STAGING in key.split("/"):
        return Ignored("multipart-staging", f"{key} is a multipart part or upload directory")
    etag = obj.get("eTag")
    if etag is not None and not isinstance(etag, str):
        raise MalformedNotification(f"{where}s3.object.eTag must be a string")
    return _upload_outcome(
        scope=scope,
        key=key,
        size=_size(obj, "size", f"{where}s3.object.", default=None),
        etag=(etag.strip('"') or None) if etag else None,
        source="s3",
        occurred_at=_event_time(record.get("eventTime")),
    )


def parse_s3_event(body: bytes | str, scope: Scope) -> list[Outcome]:
    """An S3 event notification body → one outcome per record, in order.

    Handles the AWS shape (`Records[].eventName` like `ObjectCreated:Put`) and
    MinIO's (`EventName`, `Key` and the same `Records`, names prefixed `s3:`).
    AWS's `s3:TestEvent` is ignored. Every record is checked before anything is
    returned, so a body is either read whole or refused whole.
    """
    doc = _load_object(body)
    records = doc.get("Records")
    if records is None:
        event = doc.get("Event", doc.get("EventName"))
        if event == "s3:TestEvent":
            return [Ignored("test-event", "S3 sent a test event")]
        raise MalformedNotification("body has no Records array")
    if not isinstance(records, list):
        raise MalformedNotification("Records must be an array")
    return [_s3_record(record, i, scope) for i, record in enumerate(records)]


# --- filer metadata log (`weed filer.meta.tail`) --------------------------------------


def parse_meta_log_event(doc: Mapping[str, Any], scope: Scope) -> MetaLogRecord:
    """One decoded `weed filer.meta.tail` object → its `tsNs` and outcome.

    A delete (no `newEntry`) is ignored; a create, update or rename is judged by
    the entry's new path, like a webhook `create`.
    """
    ts_ns = _integer(doc, "tsNs", "", default=None)
    directory = _string(doc, "directory", "")
    notification = _object(doc, "eventNotification", "")
    entry = notification.get("newEntry")
    if entry is None:
        return MetaLogRecord(ts_ns, Ignored("deleted", f"an entry in {directory} was deleted"))
    where = "eventNotification.newEntry."
    if not isinstance(entry, dict):
        raise MalformedNotification(f"{where[:-1]} must be an object")
    name = _string(entry, "name", where)
    parent = notification.get("newParentPath") or directory
    if not isinstance(parent, str):
        raise MalformedNotification("eventNotification.newParentPath must be a string")
    path = f"{parent.rstrip('/')}/{name}"
    if entry.get("isDirectory") is True:
        return MetaLogRecord(ts_ns, Ignored("directory", f"{path} is a directory"))
    key = _object_key(path, scope)
    if isinstance(key, Ignored):
        return MetaLogRecord(ts_ns, key)
    attributes = _optional_object(entry, "attributes", where)
    outcome = _upload_outcome(
        scope=scope,
        key=key,
        size=_size(attributes, "fileSize", f"{where}attributes.", default=0),
        etag=_etag_from_entry(
            _optional_object(entry, "extended", where), attributes.get("md5"), where
        ),
        source="seaweedfs",
        occurred_at=datetime.fromtimestamp(ts_ns / 1e9, UTC) if ts_ns > 0 else None,
    )
    return MetaLogRecord(ts_ns, outcome)


class MetaLogDecoder:
    """Splits `weed filer.meta.tail` output, fed line by line, into JSON objects.

    The output is not JSON Lines: each object is pretty-printed over many lines
    and closes with a `}` in the first column (nested lines are indented, and a
    JSON string cannot hold a raw newline). A compact one-line object works too.
    Anything else between objects — weed prints connection errors on stdout and
    still exits 0 — raises `MalformedNotification`; the decoder then starts
    afresh at the next object.
    """

    def __init__(self, max_object_bytes: int = MAX_META_LOG_OBJECT) -> None:
        self._lines: list[str] = []
        self._bytes = 0
        self._line_no = 0
        self._start_line = 0
        self._max = max_object_bytes

    def _reset(self) -> None:
        self._lines.clear()
        self._bytes = 0

    def feed(self, line: str) -> dict[str, Any] | None:
        """Take one line of output; return an object when this line completes one."""
        self._line_no += 1
        if not self._lines:
            if not line.strip():
                return None
            if not line.startswith("{"):
                raise MalformedNotification(
                    f"line {self._line_no}: expected a JSON object, got {line.strip()!r:.300}"
                )
            self._start_line = self._line_no
        self._lines.append(line)
        self._bytes += len(line)
        if self._bytes > self._max:
            self._reset()
            raise MalformedNotification(
                f"line {self._start_line}: object larger than {self._max} bytes"
            )
        closing = line.rstrip()
        if not closing.endswith("}") or line[:1].isspace():
            return None
        try:
            doc = json.loads("".join(self._lines))
        except ValueError as exc:
            if closing != "}":
                return None  # a one-line start such as `{"a": "}` : keep reading
            self._reset()
            raise MalformedNotification(
                f"line {self._start_line}: object is not valid JSON: {exc}"
            ) from exc
        self._reset()
        if not isinstance(doc, dict):
            raise MalformedNotification(f"line {self._start_line}: expected a JSON object")
        return doc

    def finish(self) -> None:
        """Call at the end of the output: raises if an object was left unfinished."""
        if self._lines:
            start = self._start_line
            self._reset()
            raise MalformedNotification(f"line {start}: output ended inside an object")
