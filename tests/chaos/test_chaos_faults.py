"""Faults against a batch of concurrent uploads: every upload ends in its right final
state, each is scanned once and processed once, no timeline entry is doubled, and a
killed process leaves nothing behind. Figures go to docs/reliability.md (`make chaos`).

The tests share one stack and run in order; each starts its own batch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from itertools import count

import aio_pika
import pytest
from aiohttp import ClientSession

from devstack.processes import session_members
from shared.pipeline import all_queues
from shared.status import Status
from tests.chaos.harness import (
    CHAOS_DB,
    ChaosStack,
    Client,
    Links,
    Observer,
    Report,
    Upload,
    Verdict,
    batch_files,
    cancelled_on_exit,
    check,
    start_batch,
    until,
    wait_settled,
)

pytestmark = [pytest.mark.integration, pytest.mark.chaos, pytest.mark.timeout(300)]

UPLOADS = 30
INFECTED = 5
# Faults start once this many uploads of the batch have landed: the rest are in flight.
MID_BATCH = 8
BROKER_CUT_S = 10.0
STORAGE_DOWN_S = 3.0
GATEWAY_DOWN_S = 2.0

_seeds = count(1)

Fault = Callable[[list[Upload], list[asyncio.Task[None]]], Awaitable[float | None]]


async def mid_batch(observer: Observer, uploads: list[Upload]) -> None:
    async def landed() -> bool:
        return await observer.count_at_least(uploads, Status.UPLOADED) >= MID_BATCH

    await until(landed, timeout=60, what=f"{MID_BATCH} uploads landing")


async def run_fault(
    name: str,
    *,
    client: Client,
    observer: Observer,
    report: Report,
    fault: Fault,
    complete: bool = True,
    before: Callable[[], Awaitable[object]] | None = None,
) -> Verdict:
    """One batch through one fault: returns (and reports) what it left."""
    if before is not None:
        await before()
    uploads = batch_files(UPLOADS, INFECTED, seed=next(_seeds))
    started = time.monotonic()
    tasks = start_batch(client, uploads, complete=complete)
    async with cancelled_on_exit(tasks):
        healed = await fault(uploads, tasks)
        await wait_settled(observer, uploads, tasks)
    settled = time.monotonic()
    recovery = None if healed is None else max(0.0, settled - healed)
    verdict = await observer.verdict(name, uploads, recovery)
    verdict.batch_s = settled - started
    report.verdicts.append(verdict)
    check(verdict, uploads, await observer.statuses(uploads))
    return verdict


async def restart_killed(stack: ChaosStack, name: str, notes: list[str]) -> float:
    """Bring the killed process back with `stack up`; the others keep running as they were."""
    others = stack.pids(but=name)
    healed = time.monotonic()
    output = await stack.up()
    restarted = {n for n, pid in stack.pids(but=name).items() if others[n] != pid}
    assert restarted <= {name}, f"stack up restarted {restarted} as well:\n{output}"
    notes.append(f"{name} back after {time.monotonic() - healed:.1f} s")
    return healed


# --- the stack itself ----------------------------------------------------------------------


async def test_stack_up_on_the_running_stack_restarts_nothing(
    chaos_stack: ChaosStack, report: Report
) -> None:
    before = chaos_stack.pids()
    # Another process, another hash seed: the fingerprints must still match.
    output = await chaos_stack.up()
    assert chaos_stack.pids() == before, output
    assert output.count("already running") >= len(before), output
    report.facts.append(
        f"`clearance stack up` on the running, unchanged stack: 0 of {len(before)} "
        "processes restarted (same pids)."
    )


async def worker_counters(http: ClientSession, stack: ChaosStack) -> dict[str, float]:
    """The work counters the scanner and the processor expose on their metrics ports."""
    found: dict[str, float] = {}
    for port in (stack.settings.scanner_metrics_port, stack.settings.processor_metrics_port):
        async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
            text = await resp.text()
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name in WORK_COUNTERS:
                found[name] = float(value)
    return found


WORK_COUNTERS = (
    "clearance_scans_total",
    "clearance_scan_duplicates_total",
    "clearance_processings_total",
    "clearance_processing_duplicates_total",
)


async def test_no_fault(
    chaos_stack: ChaosStack,
    client: Client,
    observer: Observer,
    report: Report,
    http: ClientSession,
) -> None:
    async def nothing(uploads: list[Upload], tasks: list[asyncio.Task[None]]) -> None:
        return None

    before = await worker_counters(http, chaos_stack)
    # The relay's notification and the client's `complete` both report every landing.
    await run_fault(
        "none (relay and `complete` both report each landing)",
        client=client,
        observer=observer,
        report=report,
        fault=nothing,
    )
    after = await worker_counters(http, chaos_stack)
    delta = {name: int(after[name] - before.get(name, 0)) for name in WORK_COUNTERS}
    # Counted by the live worker processes themselves (no fault: none was restarted).
    assert delta["clearance_scans_total"] == UPLOADS
    assert delta["clearance_processings_total"] == UPLOADS - INFECTED
    report.facts.append(
        f"No fault, from the workers' own counters: {delta['clearance_scans_total']} scans and "
        f"{delta['clearance_processings_total']} processings for {UPLOADS} uploads; "
        f"{delta['clearance_scan_duplicates_total']} duplicate deliveries at the scanner "
        f"and {delta['clearance_processing_duplicates_total']} at the processor answered "
        "from the ledger."
    )


# --- processes killed ----------------------------------------------------------------------


# How long each killed service stays down before `stack up` brings it back, and how
# its row is labelled.
KILLED = {
    "scanner": (0.0, "scanner killed (`kill -9`) mid-batch"),
    "processor": (0.0, "processor killed (`kill -9`) mid-batch"),
    "gateway": (GATEWAY_DOWN_S, f"gateway killed (`kill -9`), down {GATEWAY_DOWN_S:g} s"),
}


@pytest.mark.parametrize("service", list(KILLED))
async def test_a_service_killed_with_kill_9_mid_batch(
    service: str, chaos_stack: ChaosStack, client: Client, observer: Observer, report: Report
) -> None:
    down, label = KILLED[service]
    notes: list[str] = []
    left: list[int] = []

    async def kill(uploads: list[Upload], tasks: list[asyncio.Task[None]]) -> float:
        await mid_batch(observer, uploads)
        # Everything in its session must end with it: the processor's pool, the
        # gateway's `--workers` (one left behind would keep answering on the port).
        members = session_members(chaos_stack.record(service))
        notes.append(f"{len(members)} processes in its session when killed")
        record = await chaos_stack.kill(service)

        async def emptied() -> bool:
            return not session_members(record)

        await until(emptied, timeout=10, what=f"the killed {service}'s processes ending")
        left.extend(session_members(record))
        if down:
            await asyncio.sleep(down)
        return await restart_killed(chaos_stack, service, notes)

    verdict = await run_fault(label, client=client, observer=observer, report=report, fault=kill)
    verdict.leftover_processes = len(left)
    report.facts.append(f"{service} `kill -9`: " + "; ".join(notes) + "; 0 left after it.")


async def test_storage_killed_and_restarted_mid_batch(
    chaos_stack: ChaosStack, client: Client, observer: Observer, report: Report
) -> None:
    notes: list[str] = []

    async def kill(uploads: list[Upload], tasks: list[asyncio.Task[None]]) -> float:
        await mid_batch(observer, uploads)
        await chaos_stack.kill("seaweedfs")
        await asyncio.sleep(STORAGE_DOWN_S)
        return await restart_killed(chaos_stack, "seaweedfs", notes)

    await run_fault(
        f"storage (own SeaweedFS) killed (`kill -9`), down {STORAGE_DOWN_S:g} s",
        client=client,
        observer=observer,
        report=report,
        fault=kill,
    )


# --- the relay away ------------------------------------------------------------------------


@pytest.mark.parametrize("complete", [True, False], ids=["clients-complete", "no-complete"])
async def test_the_relay_down_while_a_batch_lands(
    complete: bool, chaos_stack: ChaosStack, client: Client, observer: Observer, report: Report
) -> None:
    notes: list[str] = []

    async def stop_relay() -> None:
        await chaos_stack.kill("relay")

    async def later(uploads: list[Upload], tasks: list[asyncio.Task[None]]) -> float:
        # Every object lands while the relay is away: their webhooks are lost for good.
        await asyncio.gather(*tasks)
        return await restart_killed(chaos_stack, "relay", notes)

    how = "clients call `complete`" if complete else "no `complete`: only the filer log knows"
    await run_fault(
        f"relay down while the batch lands ({how})",
        client=client,
        observer=observer,
        report=report,
        fault=later,
        complete=complete,
        before=stop_relay,
    )


# --- links ---------------------------------------------------------------------------------


async def consumers_back(
    broker_admin: aio_pika.abc.AbstractConnection, settings_prefix: str
) -> bool:
    channel = await broker_admin.channel()
    try:
        for spec in all_queues_of(settings_prefix):
            queue = await channel.declare_queue(spec, passive=True)
            if not queue.declaration_result.consumer_count:
                return False
        return True
    finally:
        await channel.close()


def all_queues_of(prefix: str) -> list[str]:
    return [f"{prefix}.recorder", f"{prefix}.scanner", f"{prefix}.processor"]


async def test_the_broker_link_cut_mid_batch(
    chaos_stack: ChaosStack,
    client: Client,
    observer: Observer,
    report: Report,
    links: Links,
    broker_admin: aio_pika.abc.AbstractConnection,
) -> None:
    prefix = chaos_stack.settings.queue_prefix
    assert [q.name for q in all_queues(chaos_stack.settings)] == all_queues_of(prefix)
    back: list[float] = []

    async def cut(uploads: list[Upload], tasks: list[asyncio.Task[None]]) -> float:
        await mid_batch(observer, uploads)
        await links.broker.cut()
        await asyncio.sleep(BROKER_CUT_S)
        await links.broker.restore()
        healed = time.monotonic()
        back.append(
            await until(
                lambda: consumers_back(broker_admin, prefix),
                timeout=30,
                interval=0.02,
                what="every consumer reconnecting",
            )
        )
        return healed

    await run_fault(
        f"broker link cut (proxy) for {BROKER_CUT_S:g} s",
        client=client,
        observer=observer,
        report=report,
        fault=cut,
    )
    report.facts.append(
        f"Broker link restored: every consumer (recorder, scanner, processor) was consuming "
        f"again after {back[0]:.2f} s."
    )
    assert back[0] < 2.0


async def test_database_connections_terminated_mid_batch(
    chaos_stack: ChaosStack, client: Client, observer: Observer, report: Report
) -> None:
    terminated: list[int] = []

    async def terminate(uploads: list[Upload], tasks: list[asyncio.Task[None]]) -> float:
        await mid_batch(observer, uploads)
        for _ in range(10):
            # The stack's own database: every connection but the observer's is the stack's.
            terminated.append(
                await observer.conn.fetchval(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))"
                    " FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                    CHAOS_DB,
                )
            )
            await asyncio.sleep(0.3)
        return time.monotonic()

    await run_fault(
        "database connections terminated (10 times, 0.3 s apart)",
        client=client,
        observer=observer,
        report=report,
        fault=terminate,
    )
    report.facts.append(
        f"Database fault: {sum(terminated)} connections of the stack terminated mid-batch."
    )
    assert sum(terminated) > 0


# --- at the end ----------------------------------------------------------------------------


async def test_stack_down_leaves_no_process_behind(chaos_stack: ChaosStack, report: Report) -> None:
    await chaos_stack.down()

    async def nothing_left() -> bool:
        return not chaos_stack.leftovers()

    await until(nothing_left, timeout=20, what=f"the end of {chaos_stack.leftovers()}")
    report.facts.append(
        "`clearance stack down` after the run: 0 processes of the chaos stack left "
        "(none with its state directory in its command line or environment)."
    )
