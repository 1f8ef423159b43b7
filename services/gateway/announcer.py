"""`clearance announcer`: the outbox relay and the webhook dispatcher in a process of
their own, for deployments that keep them out of the gateway's request processes
(`CLEARANCE_GATEWAY_ANNOUNCERS=false`).

The same app contexts as in the gateway (`notifier`), on a pool and a LISTEN
connection of their own: woken by every status change's NOTIFY and by the gateways'
create wake-ups (`live.Listener.announce_elsewhere`), polling besides. Any number may
run: claims with `FOR UPDATE SKIP LOCKED` keep them from publishing or POSTing one row
twice at once. SIGTERM finishes the pass under way (`notifier._stop`).
"""

from __future__ import annotations

from aiohttp import web

from services.gateway.app import database_context, healthz, metrics_view
from services.gateway.appkeys import METRICS, SETTINGS
from services.gateway.live import listener_context
from services.gateway.metrics import GatewayMetrics
from services.gateway.notifier import outbox_relay_context, webhooks_context
from shared.settings import Settings


def create_announcer_app(settings: Settings) -> web.Application:
    """The announcers, with `/healthz` and `/metrics` (the outbox and webhook metrics)."""
    app = web.Application()
    app[SETTINGS] = settings
    app[METRICS] = GatewayMetrics()
    app.cleanup_ctx.append(database_context)
    app.cleanup_ctx.append(listener_context)
    app.cleanup_ctx.append(outbox_relay_context)
    app.cleanup_ctx.append(webhooks_context)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_view)
    return app


def serve(settings: Settings, host: str, port: int) -> None:
    web.run_app(create_announcer_app(settings), host=host, port=port, access_log=None, print=None)
