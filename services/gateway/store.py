"""The uploads table and its timeline: every SQL statement the gateway runs on them.

`transition()` is the single place where an upload changes status: it locks the row,
applies the state machine, appends a timeline entry keyed by the causing event's id
(a duplicate is a no-op), writes the change's public event to the outbox and NOTIFYs
listeners (SSE, the outbox relay, webhooks), all in the same transaction.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy

from shared.status import Status, can_transition

NOTIFY_CHANNEL = "clearance_upload_events"
# The database being away or restarting, as asyncpg reports it (background loops retry).
DATABASE_ERRORS: tuple[type[Exception], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,
    TimeoutError,
)

if TYPE_CHECKING:
    Conn: TypeAlias = asyncpg.Connection[Any] | PoolConnectionProxy[Any]
    Queryable: TypeAlias = Conn | asyncpg.Pool[Any]

_COLUMNS = (
    "id, owner, profile, filename, content_type, size, sha256, bucket, key, status,"
    " multipart_upload_id, part_size, part_count, detected, thumbnails, reason,"
    " correlation_id, created_at, updated_at, expires_at, metadata"
)


@dataclass(frozen=True, slots=True)
class Upload:
    id: uuid.UUID
    owner: str
    profile: str
    filename: str
    content_type: str
    size: int
    sha256: str | None
    bucket: str
    key: str
    status: Status
    multipart_upload_id: str | None
    part_size: int | None
    part_count: int | None
    detected: dict[str, Any] | None
    thumbnails: list[dict[str, Any]]
    reason: str | None
    correlation_id: str
    created_at: datetime
    updated_at: datetime
    expires_at: datetime
    metadata: dict[str, str]  # the application's own (services/gateway/metadata.py)

    @classmethod
    def pending(
        cls,
        *,
        id: uuid.UUID,
        owner: str,
        profile: str,
        filename: str,
        content_type: str,
        size: int,
        bucket: str,
        key: str,
        ttl_seconds: int,
        correlation_id: str,
        sha256: str | None = None,
        multipart_upload_id: str | None = None,
        part_size: int | None = None,
        part_count: int | None = None,
        metadata: dict[str, str] | None = None,
    ) -> Upload:
        """A new upload, before any byte has landed."""
        now = datetime.now(UTC)
        return cls(
            id=id,
            owner=owner,
            profile=profile,
            filename=filename,
            content_type=content_type,
            size=size,
            sha256=sha256,
            bucket=bucket,
            key=key,
            status=Status.PENDING,
            multipart_upload_id=multipart_upload_id,
            part_size=part_size,
            part_count=part_count,
            detected=None,
            thumbnails=[],
            reason=None,
            correlation_id=correlation_id,
            created_at=now,
            updated_at=now,
            expires_at=now + timedelta(seconds=ttl_seconds),
            metadata=dict(metadata or {}),
        )

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Upload:
        values = dict(row)
        values["status"] = Status(values["status"])
        return cls(**values)


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    seq: int
    upload_id: uuid.UUID
    status: Status
    actor: str
    detail: dict[str, Any]
    at: datetime

    def as_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "status": self.status.value,
            "at": self.at.isoformat(),
            "actor": self.actor,
            "detail": self.detail,
        }


class Outbox(Protocol):
    """Writes the public event of a change, inside the change's transaction."""

    async def add(self, conn: Conn, upload: Upload, entry: TimelineEntry) -> None: ...


async def insert_upload(conn: Conn, upload: Upload, *, actor: str, outbox: Outbox) -> TimelineEntry:
    """Record a new upload, its first timeline entry and its event atomically."""
    async with conn.transaction():
        await conn.execute(
            f"INSERT INTO uploads ({_COLUMNS}) VALUES"  # noqa: S608 - constant column list
            " ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19,$20,$21)",
            upload.id,
            upload.owner,
            upload.profile,
            upload.filename,
            upload.content_type,
            upload.size,
            upload.sha256,
            upload.bucket,
            upload.key,
            upload.status.value,
            upload.multipart_upload_id,
            upload.part_size,
            upload.part_count,
            upload.detected,
            upload.thumbnails,
            upload.reason,
            upload.correlation_id,
            upload.created_at,
            upload.updated_at,
            upload.expires_at,
            upload.metadata,
        )
        entry = await _append(conn, upload.id, upload.status, f"created:{upload.id}", actor, {})
        await outbox.add(conn, upload, entry)
        return entry


async def get_upload(
    conn: Queryable, upload_id: uuid.UUID, *, owner: str | None = None
) -> Upload | None:
    """One upload; with `owner`, only if it belongs to them."""
    if owner is None:
        row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM uploads WHERE id = $1", upload_id)  # noqa: S608
    else:
        row = await conn.fetchrow(
            f"SELECT {_COLUMNS} FROM uploads WHERE id = $1 AND owner = $2",  # noqa: S608
            upload_id,
            owner,
        )
    return Upload.from_row(row) if row else None


def encode_cursor(created_at: datetime, upload_id: uuid.UUID) -> str:
    raw = orjson.dumps([created_at.isoformat(), str(upload_id)])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """Raises ValueError for anything that is not a cursor we issued."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, uid = orjson.loads(raw)
        when = datetime.fromisoformat(created)
        if when.tzinfo is None:
            raise ValueError("naive timestamp")
        return when, uuid.UUID(uid)
    except (ValueError, TypeError, orjson.JSONDecodeError) as exc:
        raise ValueError("not a valid cursor") from exc


async def list_uploads(
    pool: asyncpg.Pool[Any],
    owner: str,
    *,
    status: Status | None,
    limit: int,
    after: tuple[datetime, uuid.UUID] | None,
) -> tuple[list[Upload], str | None]:
    """The owner's uploads, newest first, keyset-paged; returns (page, next cursor)."""
    conds = ["owner = $1"]
    args: list[Any] = [owner]
    if status is not None:
        args.append(status.value)
        conds.append(f"status = ${len(args)}")
    if after is not None:
        args.extend(after)
        conds.append(f"(created_at, id) < (${len(args) - 1}, ${len(args)})")
    args.append(limit + 1)
    rows = await pool.fetch(
        f"SELECT {_COLUMNS} FROM uploads WHERE {' AND '.join(conds)}"  # noqa: S608 - fixed fragments
        f" ORDER BY created_at DESC, id DESC LIMIT ${len(args)}",
        *args,
    )
    items = [Upload.from_row(r) for r in rows[:limit]]
    more = len(rows) > limit
    return items, (encode_cursor(items[-1].created_at, items[-1].id) if more and items else None)


async def timeline(
    conn: Queryable, upload_id: uuid.UUID, *, after_seq: int = 0
) -> list[TimelineEntry]:
    rows = await conn.fetch(
        "SELECT seq, upload_id, status, actor, detail, at FROM upload_events"
        " WHERE upload_id = $1 AND seq > $2 ORDER BY seq",
        upload_id,
        after_seq,
    )
    return [_entry(r) for r in rows]


def _entry(row: asyncpg.Record) -> TimelineEntry:
    return TimelineEntry(
        seq=row["seq"],
        upload_id=row["upload_id"],
        status=Status(row["status"]),
        actor=row["actor"],
        detail=row["detail"],
        at=row["at"],
    )


async def _append(
    conn: Conn,
    upload_id: uuid.UUID,
    status: Status,
    event_id: str,
    actor: str,
    detail: dict[str, Any],
) -> TimelineEntry:
    row = await conn.fetchrow(
        "INSERT INTO upload_events (upload_id, status, event_id, actor, detail)"
        " VALUES ($1, $2, $3, $4, $5) RETURNING seq, upload_id, status, actor, detail, at",
        upload_id,
        status.value,
        event_id,
        actor,
        detail,
    )
    assert row is not None
    await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, f"{upload_id}:{row['seq']}")
    return _entry(row)


@dataclass(frozen=True, slots=True)
class TransitionResult:
    upload: Upload
    entry: TimelineEntry | None  # None when nothing changed (duplicate, late or backward)


async def transition(
    pool: asyncpg.Pool[Any],
    upload_id: uuid.UUID,
    *,
    to: Status,
    event_id: str,
    actor: str,
    outbox: Outbox,
    detail: dict[str, Any] | None = None,
    updates: dict[str, Any] | None = None,
) -> TransitionResult | None:
    """Move an upload forward if the state machine allows it; None if it doesn't exist.

    `updates` sets extra columns (e.g. detected, thumbnails, reason) with the move.
    The move's event goes to `outbox` in the same transaction: committed together or
    not at all.
    """
    allowed_columns = {
        "detected",
        "thumbnails",
        "reason",
        "multipart_upload_id",
        "expires_at",
        "size",  # uploads that declared none (Uppy's POST policy) get the landed size
    }
    updates = updates or {}
    if not set(updates) <= allowed_columns:
        raise ValueError(f"cannot update {set(updates) - allowed_columns}")
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            f"SELECT {_COLUMNS} FROM uploads WHERE id = $1 FOR UPDATE",  # noqa: S608
            upload_id,
        )
        if row is None:
            return None
        upload = Upload.from_row(row)
        if not can_transition(upload.status, to):
            return TransitionResult(upload, None)
        sets = ["status = $2", "updated_at = now()"]
        args: list[Any] = [upload_id, to.value]
        for column, value in updates.items():
            args.append(value)
            sets.append(f"{column} = ${len(args)}")
        row = await conn.fetchrow(
            f"UPDATE uploads SET {', '.join(sets)} WHERE id = $1 RETURNING {_COLUMNS}",  # noqa: S608
            *args,
        )
        assert row is not None
        moved = Upload.from_row(row)
        entry = await _append(conn, upload_id, to, event_id, actor, detail or {})
        await outbox.add(conn, moved, entry)
        return TransitionResult(moved, entry)


async def delete_upload(pool: asyncpg.Pool[Any], upload_id: uuid.UUID) -> None:
    await pool.execute("DELETE FROM uploads WHERE id = $1", upload_id)
