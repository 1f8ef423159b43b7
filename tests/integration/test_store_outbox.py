"""The one-statement create (its event included) and the status move (its event in the
same transaction): a change is committed with its outbox row and webhook deliveries, a
refused create writes no event (only the token it spent), and an event that cannot be
written undoes the change.

A database of its own: no gateway of the suite drains this outbox meanwhile.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from prometheus_client import CollectorRegistry, Histogram

from services.gateway import store
from services.gateway.creates import CreateBatcher
from services.gateway.notifications import UploadEvent, event_id, upload_event
from services.gateway.outbox import NotificationOutbox
from shared.db import create_pool, migrate
from shared.settings import Settings, WebhookEndpoint
from shared.status import BEFORE_LANDING, Status
from tests.conftest import TEST_DB

pytestmark = pytest.mark.integration

STORE_DB = f"{TEST_DB}_store"
SECRET = "whsec_" + base64.b64encode(b"store-outbox-test-webhook-secret").decode()


@pytest.fixture(scope="module")
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool[Any]]:
    base = settings.database_url.rsplit("/", 1)[0]
    admin = await asyncpg.connect(f"{base}/postgres")
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{STORE_DB}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{STORE_DB}"')
        await migrate(f"{base}/{STORE_DB}")
        pool = await create_pool(f"{base}/{STORE_DB}")
        try:
            yield pool
        finally:
            await pool.close()
            await admin.execute(f'DROP DATABASE "{STORE_DB}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
def outbox(settings: Settings) -> NotificationOutbox:
    """Every event to `all`, only `upload.ready` to `ready`."""
    return NotificationOutbox(
        settings.model_copy(
            update={
                "webhooks": (
                    WebhookEndpoint(name="all", url="http://127.0.0.1:9/a", secret=SECRET),  # type: ignore[arg-type]
                    WebhookEndpoint(
                        name="ready",
                        url="http://127.0.0.1:9/r",
                        secret=SECRET,  # type: ignore[arg-type]
                        events=("upload.ready",),
                    ),
                )
            }
        )
    )


def pending(owner: str, **changes: Any) -> store.Upload:
    upload_id = uuid.uuid4()
    return store.Upload.pending(
        id=upload_id,
        owner=owner,
        profile="image",
        filename="a.jpg",
        content_type="image/jpeg",
        size=100,
        bucket="b",
        key=f"uploads/{owner}/{upload_id}",
        ttl_seconds=60,
        correlation_id="req-1",
        **changes,
    )


def limits(burst: float) -> store.CreateLimits:
    return store.CreateLimits(
        burst=burst,
        rate=0.001,
        max_pending=10,
    )


async def events_of(pool: asyncpg.Pool[Any], upload_id: uuid.UUID) -> list[UploadEvent]:
    rows = await pool.fetch("SELECT body FROM outbox WHERE upload_id = $1 ORDER BY id", upload_id)
    return [UploadEvent.model_validate_json(r["body"]) for r in rows]


async def deliveries_of(pool: asyncpg.Pool[Any], upload_id: uuid.UUID) -> list[tuple[str, str]]:
    rows = await pool.fetch(
        "SELECT endpoint, event_type FROM webhook_deliveries WHERE upload_id = $1 ORDER BY id",
        upload_id,
    )
    return [(r["endpoint"], r["event_type"]) for r in rows]


async def test_an_admitted_create_writes_its_event_and_a_refused_one_none(
    pool: asyncpg.Pool[Any], outbox: NotificationOutbox
) -> None:
    owner = uuid.uuid4().hex
    # Metadata that spells what the statement fills in: left as it is.
    tricky = {"timeline_entry": '"timeline_entry":{"seq":-1,', "event_id": '{"event_id":"x"'}
    first = pending(owner, metadata={"order": "42"} | tricky)
    async with pool.acquire() as conn:
        admitted = await store.insert_admitted_upload(
            conn, first, actor="gateway", outbox=outbox, limits=limits(1)
        )
        refused = pending(owner)
        spent = await store.insert_admitted_upload(
            conn, refused, actor="gateway", outbox=outbox, limits=limits(1)
        )
    assert admitted.admitted
    assert admitted.entry is not None
    [event] = await events_of(pool, first.id)
    assert (event.type, event.status, event.metadata) == (
        "upload.pending",
        Status.PENDING,
        {"order": "42"} | tricky,
    )
    assert event.timeline_entry.seq == admitted.entry.seq
    # The statement filled the draft in: the event is exactly the one Python builds
    # from the stored entry, under the id `event_id` gives it (column and body alike).
    [stored] = await store.timeline(pool, first.id)
    assert stored.at == first.created_at
    assert event == upload_event(first, stored)
    assert event.event_id == event_id(first.id, stored.seq)
    column = await pool.fetchval("SELECT event_id FROM outbox WHERE upload_id = $1", first.id)
    assert column == event.event_id
    assert await deliveries_of(pool, first.id) == [("all", "upload.pending")]

    assert not spent.took_token
    assert spent.entry is None
    assert await store.get_upload(pool, refused.id) is None
    assert await events_of(pool, refused.id) == []
    assert await deliveries_of(pool, refused.id) == []
    level = await pool.fetchval("SELECT tokens FROM owner_buckets WHERE owner = $1", owner)
    assert level < 1  # the first create took the only token; the refused one found none


async def test_a_move_writes_the_moved_upload_as_its_event_once(
    pool: asyncpg.Pool[Any], outbox: NotificationOutbox
) -> None:
    upload = pending(uuid.uuid4().hex, metadata={"k": "v"})
    async with pool.acquire() as conn:
        await store.insert_upload(conn, upload, actor="gateway", outbox=outbox)
    thumbs = [{"size": 256, "width": 256, "height": 200, "key": f"{upload.key}.t256.webp"}]
    for to, updates in [
        (Status.UPLOADED, {"size": 99}),
        (Status.SCANNING, {}),
        (Status.PROCESSING, {}),
        (Status.READY, {"thumbnails": thumbs, "detected": {"type": "image/jpeg"}}),
    ]:
        moved = await store.transition(
            pool,
            upload.id,
            to=to,
            event_id=f"e-{to.value}",
            actor="t",
            outbox=outbox,
            updates=updates,
        )
        assert moved is not None
        assert moved.entry is not None
        assert moved.upload.status is to
    again = await store.transition(
        pool, upload.id, to=Status.SCANNING, event_id="late", actor="t", outbox=outbox
    )
    assert again is not None
    assert again.entry is None
    assert again.upload.status is Status.READY

    events = await events_of(pool, upload.id)
    assert [e.type for e in events] == [
        "upload.pending",
        "upload.uploaded",
        "upload.scanning",
        "upload.processing",
        "upload.ready",
    ]
    ready = events[-1]
    assert (ready.size, ready.metadata, ready.detected and ready.detected.type) == (
        99,
        {"k": "v"},
        "image/jpeg",
    )
    assert [t.key for t in ready.thumbnails] == [thumbs[0]["key"]]
    seqs = [e.seq for e in await store.timeline(pool, upload.id)]
    assert [e.timeline_entry.seq for e in events] == seqs
    assert ("ready", "upload.ready") in await deliveries_of(pool, upload.id)


class BrokenOutbox:
    async def add(self, conn: Any, upload: store.Upload, entry: store.TimelineEntry) -> None:
        raise RuntimeError("the event could not be written")

    def draft(self, upload: store.Upload, actor: str) -> store.EventDraft:
        raise RuntimeError("the event could not be made")


async def test_a_change_whose_event_cannot_be_written_is_not_committed(
    pool: asyncpg.Pool[Any], outbox: NotificationOutbox
) -> None:
    upload = pending(uuid.uuid4().hex)
    async with pool.acquire() as conn:
        with pytest.raises(RuntimeError):
            await store.insert_admitted_upload(
                conn, upload, actor="gateway", outbox=BrokenOutbox(), limits=limits(5)
            )
        assert await store.get_upload(conn, upload.id) is None
        await store.insert_upload(conn, upload, actor="gateway", outbox=outbox)
    with pytest.raises(RuntimeError):
        await store.transition(
            pool, upload.id, to=Status.UPLOADED, event_id="e", actor="t", outbox=BrokenOutbox()
        )
    still = await store.get_upload(pool, upload.id)
    assert still is not None
    assert still.status is Status.PENDING
    assert [e.status for e in await store.timeline(pool, upload.id)] == [Status.PENDING]
    assert [e.type for e in await events_of(pool, upload.id)] == ["upload.pending"]


async def test_the_open_upload_count_follows_every_create_move_and_delete(
    pool: asyncpg.Pool[Any], outbox: NotificationOutbox
) -> None:
    """The cap on uploads not yet landed reads a count the database keeps (migration 6's
    triggers): after creates (concurrent ones too), landings, aborts, a failed create
    and deletes, it equals counting the owner's rows in `BEFORE_LANDING`."""
    owner = uuid.uuid4().hex
    open_statuses = [s.value for s in BEFORE_LANDING]

    async def kept() -> int:
        n = await pool.fetchval("SELECT n FROM owner_open_uploads WHERE owner = $1", owner)
        return int(n or 0)

    async def counted() -> int:
        n: int = await pool.fetchval(
            "SELECT count(*) FROM uploads WHERE owner = $1 AND status = ANY($2::text[])",
            owner,
            open_statuses,
        )
        return n

    async def create() -> store.Admission:
        async with pool.acquire() as conn:
            return await store.insert_admitted_upload(
                conn, pending(owner), actor="gateway", outbox=outbox, limits=limits(100)
            )

    created = await asyncio.gather(*(create() for _ in range(8)))
    assert all(a.admitted for a in created)
    assert sorted(a.pending for a in created)[0] == 0
    assert await kept() == await counted() == 8
    ids = await pool.fetch("SELECT id FROM uploads WHERE owner = $1 ORDER BY id", owner)
    ids = [r["id"] for r in ids]

    async def move(upload_id: uuid.UUID, to: Status) -> None:
        moved = await store.transition(
            pool, upload_id, to=to, event_id=f"{to.value}-{upload_id}", actor="t", outbox=outbox
        )
        assert moved is not None

    await move(ids[0], Status.UPLOADING)  # still open
    await move(ids[1], Status.UPLOADED)
    await move(ids[1], Status.SCANNING)  # closed to closed
    await move(ids[2], Status.ABORTED)
    await move(ids[2], Status.ABORTED)  # a duplicate moves nothing
    assert await kept() == await counted() == 6
    with pytest.raises(RuntimeError):
        async with pool.acquire() as conn:
            await store.insert_upload(conn, pending(owner), actor="gateway", outbox=BrokenOutbox())
    await store.delete_upload(pool, ids[0])  # open
    await store.delete_upload(pool, ids[1])  # landed
    assert await kept() == await counted() == 5
    admission = await create()
    assert admission.pending == 5


# --- group commit (services/gateway/creates.py) ----------------------------------------


def batcher(
    pool: asyncpg.Pool[Any], outbox: store.Outbox, create_limits: store.CreateLimits
) -> tuple[CreateBatcher, Histogram]:
    sizes = Histogram("batch_size", "test", ["kind"], registry=CollectorRegistry(), buckets=(1, 64))
    return CreateBatcher(pool, outbox, create_limits, sizes), sizes


def statements(sizes: Histogram) -> tuple[float, float]:
    """(statements run, creates they wrote)."""
    samples = [(s.name, s.value) for s in sizes.collect()[0].samples]
    return (
        sum(v for name, v in samples if name == "batch_size_count"),
        sum(v for name, v in samples if name == "batch_size_sum"),
    )


async def test_creates_that_come_together_share_one_statement_each_with_its_own_outcome(
    pool: asyncpg.Pool[Any], outbox: NotificationOutbox
) -> None:
    creates, sizes = batcher(pool, outbox, limits(5))
    full = uuid.uuid4().hex  # an owner at the cap on open uploads: refused, token spent
    for _ in range(10):
        async with pool.acquire() as conn:
            await store.insert_upload(conn, pending(full), actor="gateway", outbox=outbox)
    uploads = [pending(uuid.uuid4().hex, metadata={"n": str(n)}) for n in range(30)]
    uploads.insert(7, pending(full))

    admissions = await asyncio.gather(*(creates.insert_admitted(u) for u in uploads))

    assert statements(sizes) == (1, 31)  # all of them in one statement
    refused = admissions.pop(7)
    assert (refused.took_token, refused.pending, refused.entry) == (True, 10, None)
    assert await store.get_upload(pool, uploads.pop(7).id) is None
    for upload, admission in zip(uploads, admissions, strict=True):
        # Each caller gets its own create's entry and event, nobody else's.
        assert admission.admitted
        assert admission.entry is not None
        assert admission.entry.upload_id == upload.id
        [stored] = await store.timeline(pool, upload.id)
        assert stored == admission.entry
        assert await events_of(pool, upload.id) == [upload_event(upload, stored)]
        assert await deliveries_of(pool, upload.id) == [("all", "upload.pending")]
    await creates.close()


async def test_a_batch_stores_every_column_of_every_create_as_given(
    pool: asyncpg.Pool[Any], outbox: NotificationOutbox
) -> None:
    """The statements read their creates from one JSON text: every field, awkward text,
    large numbers, times with and without microseconds, and absent values survive it."""
    awkward = 'a "quoted" \\ back\tslash, é € 😀 \u2028 </script>'
    single = [
        dataclasses.replace(
            pending(
                uuid.uuid4().hex,
                sha256=base64.b64encode(bytes(32)).decode(),
                metadata={"note": awkward, "n": str(n)},
            ),
            filename=f"{awkward} {n}.jpg",
            size=2**62 + n,
        )
        for n in range(4)
    ]
    single[1] = dataclasses.replace(
        single[1], created_at=single[1].created_at.replace(microsecond=0)
    )
    multipart = [
        dataclasses.replace(
            pending(
                uuid.uuid4().hex,
                multipart_upload_id=f"mpu-{n}",
                part_size=8 * 2**20,
                part_count=1000 + n,
            ),
            profile="media",
        )
        for n in range(3)
    ]
    async with pool.acquire() as conn:
        await store.insert_admitted_uploads(
            conn, single, actor="api", outbox=outbox, limits=limits(5)
        )
        await store.insert_uploads(conn, multipart, actor="companion", outbox=outbox)
    for upload in single + multipart:
        assert await store.get_upload(pool, upload.id) == upload


async def test_a_value_json_cannot_carry_is_a_data_error_as_asyncpg_gives(
    pool: asyncpg.Pool[Any], outbox: NotificationOutbox
) -> None:
    """(The gateway answers a DataError with 400, never 500.)"""
    bad = dataclasses.replace(pending(uuid.uuid4().hex), filename="lone \ud800 surrogate.jpg")
    async with pool.acquire() as conn:
        with pytest.raises(asyncpg.DataError):
            await store.insert_uploads(conn, [bad], actor="api", outbox=outbox)
    assert await store.get_upload(pool, bad.id) is None


async def test_a_cancelled_caller_leaves_its_batch_to_the_others(
    pool: asyncpg.Pool[Any], outbox: NotificationOutbox
) -> None:
    creates, sizes = batcher(pool, outbox, limits(5))
    uploads = [pending(uuid.uuid4().hex) for _ in range(5)]
    calls = [asyncio.ensure_future(creates.insert_admitted(u)) for u in uploads]
    await asyncio.sleep(0)  # the batch is under way
    calls[2].cancel()

    async with asyncio.timeout(10):  # a batch broken by the cancel would leave them hanging
        done = await asyncio.gather(*calls, return_exceptions=True)

    assert isinstance(done[2], asyncio.CancelledError)
    assert statements(sizes) == (1, 5)  # the cancelled one was in the statement all along
    for upload, admission in zip(uploads, done, strict=True):
        if isinstance(admission, store.Admission):
            assert admission.entry is not None
            assert admission.entry.upload_id == upload.id
    # Written with the others (as a cancelled single statement can be), and counted.
    assert await store.get_upload(pool, uploads[2].id) is not None
    # The batcher goes on serving.
    later = await creates.insert_admitted(pending(uuid.uuid4().hex))
    assert later.admitted
    await creates.close()


async def test_two_creates_of_one_owner_in_one_turn_are_admitted_one_after_the_other(
    pool: asyncpg.Pool[Any], outbox: NotificationOutbox
) -> None:
    creates, sizes = batcher(pool, outbox, limits(2))
    owner = uuid.uuid4().hex
    others = [pending(uuid.uuid4().hex) for _ in range(3)]
    mine = [pending(owner) for _ in range(3)]

    admissions = await asyncio.gather(*(creates.insert_admitted(u) for u in [*mine, *others]))

    # One create per owner and statement: the owner's three went in three statements,
    # on the bucket as the one before left it (a burst of 2: the third is refused).
    assert statements(sizes) == (3, 6)
    assert [a.admitted for a in admissions[:3]] == [True, True, False]
    assert [a.level for a in admissions[:3]] == pytest.approx([2, 1, 0], abs=0.01)
    assert [a.pending for a in admissions[:3]] == [0, 1, 2]
    assert all(a.admitted for a in admissions[3:])
    await creates.close()


async def test_a_create_the_database_refuses_fails_alone_not_its_batch(
    pool: asyncpg.Pool[Any], outbox: NotificationOutbox
) -> None:
    creates, sizes = batcher(pool, outbox, limits(5))
    good = [pending(uuid.uuid4().hex) for _ in range(4)]
    bad = dataclasses.replace(pending(uuid.uuid4().hex), size=-1)  # CHECK (size >= 0)

    results = await asyncio.gather(
        *(creates.insert_admitted(u) for u in [*good[:2], bad, *good[2:]]), return_exceptions=True
    )

    assert isinstance(results.pop(2), asyncpg.CheckViolationError)
    assert all(isinstance(r, store.Admission) and r.admitted for r in results)
    for upload in good:
        assert await store.get_upload(pool, upload.id) is not None
    # The failed batch wrote nothing; its creates were then written one by one.
    assert statements(sizes) == (4, 4)
    await creates.close()


async def test_multipart_admissions_and_records_are_batched_too(
    pool: asyncpg.Pool[Any], outbox: NotificationOutbox
) -> None:
    creates, sizes = batcher(pool, outbox, limits(1))
    owners = [uuid.uuid4().hex for _ in range(6)]

    first = await asyncio.gather(*(creates.admit(owner) for owner in owners))
    again = await asyncio.gather(*(creates.admit(owner) for owner in owners[:2]))
    # Records need no bucket: one owner's several go in one statement.
    uploads = [pending(owners[0]) for _ in range(5)]
    entries = await asyncio.gather(*(creates.insert(upload) for upload in uploads))

    assert statements(sizes) == (3, 13)
    assert all(a.took_token and a.entry is None for a in first)
    assert [a.took_token for a in again] == [False, False]  # a burst of 1, spent
    assert [e.upload_id for e in entries] == [u.id for u in uploads]
    for upload, entry in zip(uploads, entries, strict=True):
        assert await store.timeline(pool, upload.id) == [entry]
        assert [e.type for e in await events_of(pool, upload.id)] == ["upload.pending"]
    await creates.close()


async def test_creates_that_come_while_statements_are_in_flight_go_together(
    pool: asyncpg.Pool[Any], outbox: NotificationOutbox
) -> None:
    creates, sizes = batcher(pool, outbox, limits(5))
    # The timeline held: the statements in flight cannot end until it is let go.
    async with pool.acquire() as holder, holder.transaction():
        await holder.execute("LOCK TABLE upload_events IN EXCLUSIVE MODE")
        waiting = []
        for _ in range(20):  # one create per loop turn, as storage answers come back
            waiting.append(asyncio.create_task(creates.insert(pending(uuid.uuid4().hex))))
            await asyncio.sleep(0)
        assert not any(task.done() for task in waiting)

    entries = await asyncio.gather(*waiting)

    assert len({e.upload_id for e in entries}) == 20
    # One statement went out on the first turn; the other 19 waited for it to end and
    # then went together.
    count, written = statements(sizes)
    assert written == 20
    assert count <= 2
    await creates.close()
