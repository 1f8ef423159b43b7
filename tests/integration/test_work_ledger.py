"""The work ledger on the real PostgreSQL: concurrent duplicates do the work once, a
crashed holder's claim is taken over when its lease runs out, a live one's never is,
a failed run frees its claim at once, and terminated connections change nothing."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from shared.db import create_pool
from shared.events import ScanClean
from shared.ledger import ObjectVersion, Outcome, WorkLedger

pytestmark = pytest.mark.integration

STAGE = "scan"


@pytest.fixture
async def pool(database: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database, min_size=1, max_size=4)
    try:
        yield pool
    finally:
        await pool.close()


def version() -> ObjectVersion:
    return ObjectVersion("ledger-test", f"uploads/{uuid.uuid4()}", uuid.uuid4().hex)


def verdict(v: ObjectVersion) -> ScanClean:
    upload_id = uuid.uuid4()
    return ScanClean(
        event_id=f"clean-{v.etag}",
        upload_id=upload_id,
        correlation_id=str(upload_id),
        bucket=v.bucket,
        key=v.key,
        size=1,
        etag=v.etag,
        duration_ms=1,
    )


class CountingWork:
    """A piece of work that takes `seconds` and counts how often it ran."""

    def __init__(self, v: ObjectVersion, seconds: float = 0.0, fail: bool = False) -> None:
        self.v, self.seconds, self.fail, self.runs = v, seconds, fail, 0

    async def __call__(self) -> list[ScanClean]:
        self.runs += 1
        await asyncio.sleep(self.seconds)
        if self.fail:
            raise RuntimeError("the work failed")
        return [verdict(self.v)]


async def claim_row(pool: asyncpg.Pool, v: ObjectVersion) -> asyncpg.Record:
    row = await pool.fetchrow(
        "SELECT runs, cardinality(finished) AS finished, done_at IS NOT NULL AS done"
        " FROM work_claims WHERE stage = $1 AND bucket = $2 AND key = $3 AND etag = $4",
        STAGE,
        v.bucket,
        v.key,
        v.etag,
    )
    assert row is not None
    return row


async def test_concurrent_duplicates_do_the_work_once(pool: asyncpg.Pool) -> None:
    # Two workers (ledgers with their own holder ids), ten copies of one event at once.
    workers = [WorkLedger(pool, lease_seconds=5) for _ in range(2)]
    v = version()
    work = CountingWork(v, seconds=0.3)
    outcomes: list[Outcome] = await asyncio.gather(
        *(workers[i % 2].once(STAGE, v, work) for i in range(10))
    )
    assert work.runs == 1
    assert sorted(o.duplicate for o in outcomes) == [False] + [True] * 9
    assert {o.events for o in outcomes} == {outcomes[0].events}
    assert outcomes[0].events[0].event_id == f"clean-{v.etag}"
    row = await claim_row(pool, v)
    assert (row["runs"], row["finished"], row["done"]) == (1, 1, True)


async def test_a_duplicate_in_the_holders_own_process_goes_on_as_soon_as_it_is_done(
    pool: asyncpg.Pool,
) -> None:
    ledger = WorkLedger(pool, lease_seconds=5)
    v = version()
    work = CountingWork(v, seconds=1.0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    first = asyncio.create_task(ledger.once(STAGE, v, work))
    await asyncio.sleep(0.05)
    duplicate = await ledger.once(STAGE, v, work)
    # Polling alone would look again only at ~1.5 s (0.1, 0.2, 0.4, 0.8 s apart).
    assert loop.time() - started < 1.35
    assert duplicate.duplicate
    assert not (await first).duplicate
    assert work.runs == 1


async def test_a_crashed_holders_claim_is_taken_over_when_its_lease_runs_out(
    pool: asyncpg.Pool,
) -> None:
    v = version()
    # What a worker killed mid-work leaves: a claim nobody renews.
    await pool.execute(
        "INSERT INTO work_claims (stage, bucket, key, etag, holder, claim_id, lease_until)"
        " VALUES ($1, $2, $3, $4, 'killed-worker', $5, now() + interval '1 second')",
        STAGE,
        v.bucket,
        v.key,
        v.etag,
        uuid.uuid4(),
    )
    work = CountingWork(v)
    loop = asyncio.get_running_loop()
    started = loop.time()
    outcome = await WorkLedger(pool, lease_seconds=5).once(STAGE, v, work)
    waited = loop.time() - started
    assert work.runs == 1
    assert not outcome.duplicate
    assert outcome.rerun
    assert 0.5 < waited < 4, waited  # it waited for the lease, not much longer
    row = await claim_row(pool, v)
    assert (row["runs"], row["finished"]) == (2, 1)


async def test_a_live_holder_keeps_its_claim_past_the_lease_by_renewing(
    pool: asyncpg.Pool,
) -> None:
    holder = WorkLedger(pool, lease_seconds=0.6)
    renewal = asyncio.create_task(holder.renew_forever())
    try:
        v = version()
        work = CountingWork(v, seconds=2.0)  # over three leases
        first = asyncio.create_task(holder.once(STAGE, v, work))
        await asyncio.sleep(0.3)
        duplicate = await WorkLedger(pool, lease_seconds=0.6).once(STAGE, v, work)
        assert duplicate.duplicate
        assert not (await first).duplicate
        assert work.runs == 1
    finally:
        renewal.cancel()
        await asyncio.gather(renewal, return_exceptions=True)


async def test_a_failed_run_frees_its_claim_for_the_retry(pool: asyncpg.Pool) -> None:
    ledger = WorkLedger(pool, lease_seconds=60)
    v = version()
    with pytest.raises(RuntimeError, match="the work failed"):
        await ledger.once(STAGE, v, CountingWork(v, fail=True))
    retry = CountingWork(v)
    loop = asyncio.get_running_loop()
    started = loop.time()
    outcome = await ledger.once(STAGE, v, retry)
    assert loop.time() - started < 1  # no wait for a 60 s lease
    assert retry.runs == 1
    assert outcome.rerun
    row = await claim_row(pool, v)
    assert (row["runs"], row["finished"]) == (2, 1)


async def test_terminated_connections_neither_lose_nor_repeat_work(
    pool: asyncpg.Pool, database: str
) -> None:
    ledger = WorkLedger(pool, lease_seconds=5)
    versions = [version() for _ in range(40)]
    works = [CountingWork(v, seconds=0.05) for v in versions]
    admin = await asyncpg.connect(database)

    async def terminate_the_pools_connections() -> int:
        # Every other connection to the suite's own database is this session's.
        terminated = 0
        for _ in range(5):
            await asyncio.sleep(0.1)
            terminated += await admin.fetchval(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        return terminated

    try:
        # Each version claimed twice at once, while the connections keep being killed.
        results = await asyncio.gather(
            terminate_the_pools_connections(),
            *(ledger.once(STAGE, v, w) for v, w in zip(versions, works, strict=True)),
            *(ledger.once(STAGE, v, w) for v, w in zip(versions, works, strict=True)),
        )
    finally:
        await admin.close()
    terminated, *outcomes = results
    assert terminated > 0
    assert all(isinstance(o, Outcome) for o in outcomes)
    assert [w.runs for w in works] == [1] * len(works)
    # The checks below on fresh connections: the pool may still hold terminated ones.
    await pool.expire_connections()
    for v in versions:
        row = await claim_row(pool, v)
        assert (row["runs"], row["finished"], row["done"]) == (1, 1, True)


async def test_finished_records_are_pruned_after_the_retention(pool: asyncpg.Pool) -> None:
    ledger = WorkLedger(pool, lease_seconds=5, retention_seconds=3600)
    old, recent, running = version(), version(), version()
    for v in (old, recent):
        await ledger.once(STAGE, v, CountingWork(v))
    await pool.execute(
        "UPDATE work_claims SET done_at = now() - interval '2 hours' WHERE stage = $1 AND key = $2",
        STAGE,
        old.key,
    )
    # A claim still being worked on is never pruned, however old.
    await pool.execute(
        "INSERT INTO work_claims (stage, bucket, key, etag, holder, claim_id, lease_until,"
        " claimed_at) VALUES ($1, $2, $3, $4, 'busy', $5, now() + interval '1 hour',"
        " now() - interval '3 hours')",
        STAGE,
        running.bucket,
        running.key,
        running.etag,
        uuid.uuid4(),
    )
    assert await ledger.prune() >= 1
    keys = {
        r["key"]
        for r in await pool.fetch(
            "SELECT key FROM work_claims WHERE key = ANY($1::text[])",
            [old.key, recent.key, running.key],
        )
    }
    assert keys == {recent.key, running.key}
    # What was pruned is done again on a late duplicate (its upload is long final).
    again = CountingWork(old)
    assert not (await ledger.once(STAGE, old, again)).duplicate
    assert again.runs == 1
