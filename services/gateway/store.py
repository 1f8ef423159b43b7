"""The uploads table and its timeline: every SQL statement the gateway runs on them.

`transition()` is the single place where an upload changes status: it locks the row,
applies the state machine, appends a timeline entry keyed by the causing event's id
(a duplicate is a no-op), writes the change's public event to the outbox and NOTIFYs
listeners (SSE, the outbox relay, webhooks), all in the same transaction. The move,
the entry and the NOTIFY are one statement, the outbox's rows a second one: four round
trips with BEGIN and COMMIT. The event is built in Python from the row the statement
returns (`notifications`), so its shape has one definition.

A create is one statement and one round trip, its owner's limits, its event and its
webhook deliveries included, shared with the creates that arrive with it (the
statements take arrays: `creates.CreateBatcher`), and sends no NOTIFY (no stream can
wait on an upload that did not exist; the creating process wakes its own announcers).
Everything in the new upload's event is known before the write but for the two values
the database assigns, the first entry's `seq` and the event id made from it, which the
statement fills into the Python-built body (`EventDraft`).
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Sequence
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
_UPLOAD_FIELDS = tuple(c.strip() for c in _COLUMNS.split(","))


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
    def from_row(cls, row: asyncpg.Record | dict[str, Any]) -> Upload:
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


# In a draft's body, the first entry's seq (the database fills in the real one).
DRAFT_SEQ = -1


@dataclass(frozen=True, slots=True)
class EventDraft:
    """A new upload's event before its write: the body is the event's JSON with
    `event_id` first and `"timeline_entry":{"seq":DRAFT_SEQ,` in it."""

    routing_key: str
    body: str
    subscribers: list[str]  # the webhook endpoints that want it


class Outbox(Protocol):
    """Writes the public event of a change, inside the change's transaction."""

    async def add(self, conn: Conn, upload: Upload, entry: TimelineEntry) -> None: ...

    def draft(self, upload: Upload, actor: str) -> EventDraft:
        """The event of creating `upload` (its first entry's `at` is `created_at`)."""
        ...


# The type of each of `_COLUMNS`, as the create statements read them from their JSON.
_COLUMN_TYPES = (
    "uuid", "text", "text", "text", "text", "bigint", "text", "text", "text", "text", "text",
    "bigint", "integer", "jsonb", "jsonb", "text", "text", "timestamptz", "timestamptz",
    "timestamptz", "jsonb",
)  # fmt: skip
# The first timeline entry, from the inserted row (`row`); $2 is the actor. No NOTIFY:
# nobody can be streaming an upload that did not exist, and the creating process wakes
# its own outbox relay and webhook dispatcher (`UploadService.create`); another replica
# finds the rows by polling should this one end first.
_FIRST_ENTRY = """
entry AS (
    INSERT INTO upload_events (upload_id, status, event_id, actor, detail, at)
    SELECT id, status, 'created:' || id::text, $2::text, '{}'::jsonb, created_at FROM row
    RETURNING seq, upload_id, status, actor, detail, at
)"""
_ENTRY_COLUMNS = "e.seq, e.upload_id, e.status, e.actor, e.detail, e.at"


def _first_event(routing_key: str, body: str, subscribers: str, join: str = "") -> str:
    """CTEs writing the new upload's event (an `EventDraft`, placeholders given) to the
    outbox and to each subscribed webhook endpoint, once `entry` has its seq. The id is
    `notifications.event_id(upload_id, seq)`: `shared.events.deterministic_id`'s SHA-256.
    `join` brings in the relation `body` is read from, if it is not a placeholder."""
    event_id = (
        "left(encode(sha256(convert_to('upload-event' || chr(31) || e.upload_id::text"
        " || chr(31) || e.seq::text, 'UTF8')), 'hex'), 32)"
    )
    seq = f'"timeline_entry":{{"seq":{DRAFT_SEQ},'
    return f"""
queued AS (
    INSERT INTO outbox (event_id, upload_id, routing_key, correlation_id, body)
    SELECT ev.id, e.upload_id, {routing_key}::text, r.correlation_id,
        regexp_replace(
            replace({body}::text, '{seq}', '"timeline_entry":{{"seq":' || e.seq::text || ','),
            '^[{{]"event_id":"[^"]*"', '{{"event_id":"' || ev.id || '"')
    FROM entry AS e JOIN row AS r ON r.id = e.upload_id {join}
    CROSS JOIN LATERAL (SELECT {event_id} AS id) AS ev
    RETURNING event_id, upload_id, body
),
delivered AS (
    INSERT INTO webhook_deliveries (endpoint, event_id, event_type, upload_id, body)
    SELECT unnest({subscribers}::text[]), q.event_id, {routing_key}::text, q.upload_id, q.body
    FROM queued AS q
)"""  # noqa: S608 - constant fragments


def _admission(burst: str, rate: str, cap: str) -> str:
    """CTEs for the create limits of the owners in `input` (one row each; placeholders
    given): take a token from each owner's bucket that has one (`take` has a row for
    them) and read how many of their uploads still wait for their bytes (`open`, from
    `owner_open_uploads`, kept by triggers: migration 6). Every CTE sees the same
    snapshot, so `level` is the bucket before taking and `open` the count before this.
    The buckets are taken in owner order: two statements never wait on each other's."""
    level = (
        f"LEAST({burst}::float8,"
        f" b.tokens + EXTRACT(EPOCH FROM now() - b.updated_at) * {rate}::float8)"
    )
    return f"""
take AS (
    INSERT INTO owner_buckets AS b (owner, tokens, updated_at)
    SELECT owner, {burst}::float8 - 1, now() FROM input ORDER BY owner
    ON CONFLICT (owner) DO UPDATE SET tokens = {level} - 1, updated_at = now()
    WHERE {level} >= 1
    RETURNING owner, tokens
),
level AS (SELECT b.owner, {level} AS tokens FROM owner_buckets AS b JOIN input USING (owner)),
open AS (
    SELECT i.owner, coalesce(o.n, 0) AS n
    FROM input AS i LEFT JOIN owner_open_uploads AS o USING (owner)
),
admitted AS (
    SELECT i.* FROM input AS i JOIN take USING (owner) JOIN open USING (owner)
    WHERE open.n < {cap}::bigint
)"""  # noqa: S608


# Every create statement takes a batch of creates (`creates.CreateBatcher`; a lone one
# is a batch of one) and answers one row per create, in their order. The creates come
# as one JSON array of objects ($1: each upload's columns, its event body and its place
# `n`), then the actor ($2) and the event's routing key and subscribed endpoints ($3,
# $4: one event type per batch). One JSON text rather than a typed array per column:
# asyncpg took ~85 us of the gateway's CPU to encode 22 arrays for a lone create and
# ~30 us per create in a batch of eight; orjson's text takes ~10 us and ~4 us.
# `tests/integration/test_store_outbox.py` holds every column to what was given.
_INPUT = f"""
input AS (
    SELECT * FROM json_to_recordset($1::text::json) AS i(
        {", ".join(f"{c} {t}" for c, t in zip(_UPLOAD_FIELDS, _COLUMN_TYPES, strict=True))},
        body text, n integer)
)"""  # noqa: S608 - constant fragments
_FROM_INPUT = ", ".join(f"a.{column}" for column in _UPLOAD_FIELDS)
_EVENT = _first_event("$3", "i.body", "$4", "JOIN input AS i ON i.id = e.upload_id")


def _insert_rows(source: str) -> str:
    return f"""
row AS (
    INSERT INTO uploads ({_COLUMNS}) SELECT {_FROM_INPUT} FROM {source} AS a ORDER BY a.owner
    RETURNING id, status, correlation_id, created_at
)"""  # noqa: S608 - constant fragments


# Rows, first entries and events (a multipart create, admitted before storage opened it).
_INSERT = f"""
WITH {_INPUT},{_insert_rows("input")},{_FIRST_ENTRY},{_EVENT}
SELECT {_ENTRY_COLUMNS}, (SELECT count(*) FROM queued) AS queued
FROM input AS i LEFT JOIN entry AS e ON e.upload_id = i.id
ORDER BY i.n
"""  # noqa: S608 - constant fragments
# The same for creates of distinct owners, each only if its owner's limits ($5-$7)
# admit it (the token is taken either way, as a refused request still spent it;
# nothing else is written for a refused one).
_INSERT_ADMITTED = f"""
WITH {_INPUT},{_admission("$5", "$6", "$7")},{_insert_rows("admitted")},{_FIRST_ENTRY},{_EVENT}
SELECT {_ENTRY_COLUMNS}, t.owner IS NOT NULL AS took, o.n AS pending, l.tokens AS level,
    (SELECT count(*) FROM queued) AS queued
FROM input AS i LEFT JOIN take AS t USING (owner) LEFT JOIN open AS o USING (owner)
    LEFT JOIN level AS l USING (owner) LEFT JOIN entry AS e ON e.upload_id = i.id
ORDER BY i.n
"""  # noqa: S608 - constant fragments
# Only the limits of distinct owners ($1), for multipart creates before storage is asked
# to open them: a refused create costs storage nothing.
_ADMIT = f"""
WITH input AS (SELECT * FROM unnest($1::text[]) WITH ORDINALITY AS i(owner, n)),
{_admission("$2", "$3", "$4")}
SELECT t.owner IS NOT NULL AS took, o.n AS pending, l.tokens AS level
FROM input AS i LEFT JOIN take AS t USING (owner) LEFT JOIN open AS o USING (owner)
    LEFT JOIN level AS l USING (owner)
ORDER BY i.n
"""  # noqa: S608 - constant fragments


@dataclass(frozen=True, slots=True)
class CreateLimits:
    """An owner's create rate (a token bucket) and cap on uploads not yet landed."""

    burst: float
    rate: float  # tokens per second
    max_pending: int  # uploads in `shared.status.BEFORE_LANDING` (migration 6 counts them)


@dataclass(frozen=True, slots=True)
class Admission:
    """What the owner's limits said about one create."""

    took_token: bool
    pending: int  # uploads of the owner not yet landed, before this one
    level: float  # tokens in the bucket before this create
    entry: TimelineEntry | None  # the new upload's first entry; None if nothing was written

    @property
    def admitted(self) -> bool:
        return self.took_token and self.entry is not None


def _create_row(upload: Upload, body: str, n: int) -> dict[str, Any]:
    """One create of a statement's JSON input: the upload's columns, its event, its place."""
    row = {column: getattr(upload, column) for column in _UPLOAD_FIELDS}  # status: its value
    row["body"] = body
    row["n"] = n
    return row


def _limit_args(limits: CreateLimits) -> tuple[Any, ...]:
    return (limits.burst, limits.rate, limits.max_pending)


def _create_args(outbox: Outbox, uploads: Sequence[Upload], actor: str) -> list[Any]:
    """$1-$4 of the create statements."""
    try:
        drafts = [outbox.draft(upload, actor) for upload in uploads]
        rows = [
            _create_row(upload, draft.body, n)
            for n, (upload, draft) in enumerate(zip(uploads, drafts, strict=True), 1)
        ]
        # As text, cast in the statement: the pool's json codec would encode a str again.
        creates = orjson.dumps(rows, option=orjson.OPT_UTC_Z).decode()
    except orjson.JSONEncodeError as exc:  # e.g. a lone surrogate: what asyncpg would say
        raise asyncpg.DataError(f"invalid input for a create: {exc}") from None
    first = drafts[0]
    if any(
        d.routing_key != first.routing_key or d.subscribers != first.subscribers for d in drafts
    ):
        raise ValueError("the creates of one statement announce one event type")
    return [creates, actor, first.routing_key, first.subscribers]


def _distinct_owners(owners: Sequence[str]) -> None:
    if len(set(owners)) != len(owners):
        raise ValueError("one create per owner in a statement (its bucket is taken once)")


def _admission_of(row: asyncpg.Record, limits: CreateLimits) -> Admission:
    return Admission(
        took_token=row["took"],
        pending=row["pending"],
        level=float(row["level"] if row["level"] is not None else limits.burst),
        entry=_entry(row) if "seq" in row and row["seq"] is not None else None,
    )


async def insert_upload(
    conn: Queryable, upload: Upload, *, actor: str, outbox: Outbox
) -> TimelineEntry:
    """Record a new upload, its first timeline entry and its event: one statement, so
    all of it or nothing."""
    [entry] = await insert_uploads(conn, [upload], actor=actor, outbox=outbox)
    return entry


async def insert_uploads(
    conn: Queryable, uploads: Sequence[Upload], *, actor: str, outbox: Outbox
) -> list[TimelineEntry]:
    """`insert_upload` for several uploads in one statement; their entries, in order."""
    rows = await conn.fetch(_INSERT, *_create_args(outbox, uploads, actor))
    assert len(rows) == len(uploads)
    assert rows[0]["queued"] == len(uploads), "a create's event was not written"
    return [_entry(row) for row in rows]


async def insert_admitted_upload(
    conn: Conn, upload: Upload, *, actor: str, outbox: Outbox, limits: CreateLimits
) -> Admission:
    """`insert_upload` if the owner's create limits admit it, in the same statement.

    It commits either way: a refused create still spent its token.
    """
    [admission] = await insert_admitted_uploads(
        conn, [upload], actor=actor, outbox=outbox, limits=limits
    )
    return admission


async def insert_admitted_uploads(
    conn: Conn,
    uploads: Sequence[Upload],
    *,
    actor: str,
    outbox: Outbox,
    limits: CreateLimits,
) -> list[Admission]:
    """`insert_admitted_upload` for creates of distinct owners, in one statement: one
    round trip and one commit for all of them (`creates.CreateBatcher`). Each is
    admitted or refused on its own owner's limits; one admission per upload, in order."""
    _distinct_owners([upload.owner for upload in uploads])
    rows = await conn.fetch(
        _INSERT_ADMITTED, *_create_args(outbox, uploads, actor), *_limit_args(limits)
    )
    assert len(rows) == len(uploads)
    admissions = [_admission_of(row, limits) for row in rows]
    written = sum(a.entry is not None for a in admissions)
    assert rows[0]["queued"] == written, "a create's event was not written"
    return admissions


async def admit_owners(
    conn: Queryable, owners: Sequence[str], limits: CreateLimits
) -> list[Admission]:
    """Only the create limits of distinct owners (a token is taken from each bucket that
    has one), in one statement; one admission each, in order."""
    _distinct_owners(owners)
    rows = await conn.fetch(_ADMIT, list(owners), *_limit_args(limits))
    return [_admission_of(row, limits) for row in rows]


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


@dataclass(frozen=True, slots=True)
class TransitionResult:
    upload: Upload
    entry: TimelineEntry | None  # None when nothing changed (duplicate, late or backward)


# A move in one statement: the UPDATE takes the row lock and (re)checks, after any
# wait, that the current status may move to the target; the entry and its NOTIFY
# follow from the moved row. {sets} are fixed column fragments; $3 lists the statuses
# the state machine allows the move from.
_MOVE = """
WITH moved AS (
    UPDATE uploads SET status = $2, updated_at = now(){sets}
    WHERE id = $1 AND status = ANY($3::text[])
    RETURNING {columns}
),
entry AS (
    INSERT INTO upload_events (upload_id, status, event_id, actor, detail)
    SELECT id, status, $4::text, $5::text, $6::jsonb FROM moved
    RETURNING seq, at
),
notify AS (
    SELECT pg_notify('{channel}', $1::text || ':' || seq::text) FROM entry
)
SELECT m.*, e.seq AS entry_seq, e.at AS entry_at, (SELECT count(*) FROM notify) AS notified
FROM moved AS m, entry AS e
"""
_ALLOWED_COLUMNS = frozenset(
    {
        "detected",
        "thumbnails",
        "reason",
        "multipart_upload_id",
        "expires_at",
        "size",  # uploads that declared none (Uppy's POST policy) get the landed size
    }
)


def _moves_from(to: Status) -> list[str]:
    """The statuses the state machine allows a move to `to` from."""
    return [s.value for s in Status if can_transition(s, to)]


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
    not at all. The move itself (row lock, state check, update, timeline entry, NOTIFY)
    is one statement; when nothing moved, a second one reads the upload as it stands.
    """
    updates = updates or {}
    if not set(updates) <= _ALLOWED_COLUMNS:
        raise ValueError(f"cannot update {set(updates) - _ALLOWED_COLUMNS}")
    args: list[Any] = [upload_id, to.value, _moves_from(to), event_id, actor, detail or {}]
    sets = ""
    for column, value in sorted(updates.items()):
        args.append(value)
        sets += f", {column} = ${len(args)}"
    query = _MOVE.format(sets=sets, columns=_COLUMNS, channel=NOTIFY_CHANNEL)
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(query, *args)
        if row is None:
            current = await get_upload(conn, upload_id)
            return None if current is None else TransitionResult(current, None)
        upload = Upload.from_row({name: row[name] for name in _UPLOAD_FIELDS})
        entry = TimelineEntry(
            seq=row["entry_seq"],
            upload_id=upload_id,
            status=to,
            actor=actor,
            detail=detail or {},
            at=row["entry_at"],
        )
        await outbox.add(conn, upload, entry)
        return TransitionResult(upload, entry)


async def delete_upload(pool: asyncpg.Pool[Any], upload_id: uuid.UUID) -> None:
    await pool.execute("DELETE FROM uploads WHERE id = $1", upload_id)
