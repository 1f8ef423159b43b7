"""Run the relay as a process: serve until SIGTERM/SIGINT, then stop gracefully."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from services.relay.app import create_app
from shared.amqp.topology import BrokerUnavailable
from shared.settings import Settings

log = logging.getLogger(__name__)

# In-flight webhooks wait at most a publish timeout (4 s); leave room for that.
SHUTDOWN_TIMEOUT_S = 10.0


async def serve(settings: Settings, *, stop: asyncio.Event | None = None) -> None:
    """Serve the relay on `relay_host:relay_port` until SIGTERM/SIGINT (or `stop` is set).

    Stopping closes the listening socket first (no new notifications), lets
    in-flight requests finish their confirmed publishes, then cancels catch-up
    and closes the broker connection.
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(
        create_app(settings), shutdown_timeout=SHUTDOWN_TIMEOUT_S, handle_signals=False
    )
    try:
        await runner.setup()
        site = web.TCPSite(runner, settings.relay_host, settings.relay_port)
        await site.start()
        log.info("relay listening on http://%s:%d", settings.relay_host, settings.relay_port)
        await stop.wait()
        log.info("relay stopping: finishing in-flight notifications")
    finally:
        # Also after a failed start: closes whatever resources did open.
        await runner.cleanup()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("relay stopped")


def run(settings: Settings) -> int:
    """`clearance relay`: run until told to stop; 0 on a clean stop, 1 if it cannot start."""
    try:
        asyncio.run(serve(settings))
    except BrokerUnavailable as exc:
        log.error("relay cannot start: %s", exc)
        return 1
    except OSError as exc:  # e.g. the port is taken
        log.error("relay cannot listen on %s:%d: %s", settings.relay_host, settings.relay_port, exc)
        return 1
    return 0
