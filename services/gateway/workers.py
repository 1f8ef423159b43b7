"""Several gateway processes on one port (SO_REUSEPORT), so the gateway uses every core.

`clearance gateway --workers N` starts N processes of the same gateway, each binding
the port with SO_REUSEPORT; the kernel spreads connections over them. Worker 0 alone
runs the status recorder (one consumer keeps each upload's events in queue order) and
the reconciler (each pass takes an advisory lock anyway; one is enough). Every worker
runs the outbox relay and the webhook dispatcher, as every replica does (their claims
skip each other's rows). The supervisor
forwards SIGTERM/SIGINT to every worker and waits for them; when one worker ends on its
own, it stops the others and exits with that worker's code, so whatever supervises the
gateway (the local stack, compose, systemd) restarts it whole. A supervisor killed with
`kill -9` takes its workers with it (`shared.lifeline`): none is left holding the port.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import subprocess
import sys
import time
from types import FrameType

from aiohttp import web

from services.gateway.app import create_app
from shared.lifeline import die_with
from shared.settings import Settings

log = logging.getLogger(__name__)

STOP_SECONDS = 15.0
POLL_SECONDS = 0.2


def freeze_after_start(app: web.Application) -> None:
    """Leave everything built at start-up out of the garbage collector's passes.

    Start-up (botocore's models, pydantic's validators, the routes) leaves hundreds of
    thousands of long-lived objects; a full collection walking them all stalls the
    event loop for tens of milliseconds, which is most of the gateway's tail latency.
    """

    async def freeze(_app: web.Application) -> None:
        gc.collect()
        gc.freeze()

    app.on_startup.append(freeze)


def serve(
    settings: Settings,
    host: str,
    port: int,
    *,
    index: int,
    reuse_port: bool,
    supervisor: int | None = None,
) -> None:
    """Run one gateway process until SIGTERM/SIGINT (or until `supervisor` ends)."""
    if supervisor is not None:
        die_with(supervisor)
    app = create_app(settings, with_recorder=index == 0, with_reconciler=index == 0)
    freeze_after_start(app)
    web.run_app(
        app,
        host=host,
        port=port,
        reuse_port=reuse_port or None,
        access_log=None,
        print=None,
        shutdown_timeout=10,
    )


def supervise(workers: int, host: str, port: int) -> int:
    """Start `workers` gateway processes on one port; return when they have all ended."""
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "commands",
                "gateway",
                f"--host={host}",
                f"--port={port}",
                "--workers=1",
                f"--worker-index={index}",
                "--reuse-port",
                f"--supervisor={os.getpid()}",
            ]
        )
        for index in range(workers)
    ]
    stopping = False

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    code = 0
    while any(proc.poll() is None for proc in procs):
        ended = [p for p in procs if p.poll() is not None]
        if ended and not stopping:
            code = ended[0].returncode or 1
            log.error("gateway worker %d exited (%s); stopping the others", ended[0].pid, code)
            stop(signal.SIGTERM, None)
        time.sleep(POLL_SECONDS)
    deadline = time.monotonic() + STOP_SECONDS
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
    if not stopping:
        code = code or max((p.returncode or 0) for p in procs)
    return code
