"""Nothing outlives what it belongs to: a processor killed with `kill -9` takes its pool
(forkserver, resource tracker, workers) with it, and stopping a service whose leader
was killed reaps whatever it left in its session."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import ClientSession

from devstack.apps import clearance_script, settings_environment
from devstack.layout import StackLayout
from devstack.probes import wait_until
from devstack.processes import (
    ManagedProcess,
    PidRecord,
    is_ours,
    read_record,
    record_for,
    session_members,
    start_process,
    stop_process,
)
from services.scanner.worker import build_scanner
from shared.amqp.consumer import Consumer
from shared.pipeline import scanner_queue
from shared.settings import Settings
from shared.worker import worker_resources
from tests.support import Uploads, eventually, make_jpeg

pytestmark = pytest.mark.integration


@pytest.fixture
def uploads(http: ClientSession, gateway: str, owner_headers: dict[str, str]) -> Uploads:
    return Uploads(http, gateway, owner_headers)


@pytest.fixture
async def scanner(settings: Settings, gateway: str) -> AsyncIterator[None]:
    async with worker_resources(settings, "test-lifetime-scanner") as (connection, resources):
        handler, dead = await build_scanner(resources)
        consumer = Consumer(
            connection, settings, scanner_queue(settings), handler, on_dead_letter=dead
        )
        await consumer.start()
        try:
            yield
        finally:
            await consumer.drain(5)


@pytest.fixture
def processor(settings: Settings, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`clearance processor` leading a session of its own, as `stack up` starts it."""
    env = os.environ | settings_environment(settings.model_copy(update={"processor_workers": 2}))
    with (tmp_path / "processor.log").open("wb") as log:
        proc = subprocess.Popen(
            [str(clearance_script()), "processor"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    record = record_for(proc.pid)
    assert record is not None
    yield proc
    for pid in session_members(record):
        os.kill(pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


def rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


async def test_a_processor_killed_with_kill_9_leaves_no_process_behind(
    uploads: Uploads, scanner: None, processor: subprocess.Popen[bytes]
) -> None:
    record = record_for(processor.pid)
    assert record is not None
    upload_id = await uploads.send(make_jpeg())
    assert (await uploads.wait_final(upload_id))["status"] == "ready"
    # The pool is up now: the processor, its forkserver and resource tracker, a worker.
    members = session_members(record)
    assert len(members) >= 4, members
    print(f"processor session before kill -9: {len(members)} processes, {rss_mib(members):.0f} MiB")

    processor.send_signal(signal.SIGKILL)
    processor.wait(10)

    async def all_gone() -> bool:
        return not session_members(record)

    await eventually(all_gone, timeout=10, what=lambda: f"the end of {session_members(record)}")


def test_stopping_a_service_whose_leader_was_killed_reaps_what_it_left(tmp_path: Path) -> None:
    layout = StackLayout(tmp_path)
    layout.ensure()
    leaky = ManagedProcess(
        name="leaky",
        argv=(
            sys.executable,
            "-c",
            "import subprocess, time; subprocess.Popen(['sleep', '300']); time.sleep(300)",
        ),
        settle_seconds=0.3,
    )
    assert start_process(leaky, layout) == "started"
    record = read_record(layout.pid_file("leaky"))
    assert record is not None
    assert wait_until(lambda: len(session_members(record)) == 2, 10)

    os.kill(record.pid, signal.SIGKILL)
    assert wait_until(lambda: not is_ours(record), 10)
    left = [pid for pid in session_members(record) if pid != record.pid]
    assert left, "the helper should outlive its killed leader"

    assert stop_process(leaky, layout) == "not running; killed 1 process(es) it left"
    assert session_members(record) == []


def test_a_recycled_leader_pid_is_never_taken_for_ours() -> None:
    # Our own pid, with another start time: what a recycled pid looks like.
    me = record_for(os.getpid())
    assert me is not None
    stale = PidRecord(pid=me.pid, start_ticks=me.start_ticks - 1, argv=me.argv)
    assert session_members(stale) == []
