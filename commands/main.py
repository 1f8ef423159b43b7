"""The `clearance` console script: one subcommand per process kind.

This is the operator's command (services, migrations, tokens, the local stack); the
client commands (`upload`, `status`, `watch`) come from `clients.cli`.

Settings come from the environment (`CLEARANCE_*`) and `.env`, parsed once here and
passed down; invalid settings end the program with a readable message.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable

from pydantic import ValidationError

from clients.cli.upload import add_commands as add_upload_commands
from shared.settings import Settings


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        lines = [
            f"  {'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors()
        ]
        print("clearance: invalid settings (CLEARANCE_* environment or .env):", file=sys.stderr)
        print("\n".join(lines), file=sys.stderr)
        raise SystemExit(2) from None


def _configure_logging(settings: Settings) -> None:
    from shared.logs import configure_logging

    configure_logging(settings.log_level)


def cmd_token(args: argparse.Namespace) -> int:
    from services.gateway.auth import mint_token

    print(mint_token(_settings(), args.subject, ttl_seconds=args.ttl))
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from shared.db import ensure_database, migrate

    settings = _settings()
    _configure_logging(settings)

    async def run() -> list[int]:
        await ensure_database(settings.database_url)
        return await migrate(settings.database_url, target=args.target)

    done = asyncio.run(run())
    print(f"migrations applied: {done}" if done else "schema is up to date")
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    """Everything a deployment needs before its services start: schema, then bucket."""
    from shared.bucket import BucketSetupError, configure_bucket
    from shared.db import ensure_database, migrate

    settings = _settings()
    _configure_logging(settings)

    async def run() -> list[int]:
        await ensure_database(settings.database_url)
        return await migrate(settings.database_url)

    done = asyncio.run(run())
    print(f"migrations applied: {done}" if done else "schema is up to date")
    try:
        configure_bucket(settings)
    except BucketSetupError as exc:
        print(f"clearance init: {exc}", file=sys.stderr)
        return 1
    print(f"bucket {settings.bucket!r} ready")
    return 0


def cmd_gateway(args: argparse.Namespace) -> int:
    import os

    from services.gateway.workers import serve, supervise

    settings = _settings()
    _configure_logging(settings)
    host = args.host or settings.gateway_host
    port = args.port or settings.gateway_port
    workers = args.workers or settings.gateway_workers or os.cpu_count() or 1
    if workers > 1:
        return supervise(workers, host, port)
    _use_uvloop()
    serve(
        settings,
        host,
        port,
        index=args.worker_index,
        reuse_port=args.reuse_port,
        supervisor=args.supervisor,
    )
    return 0


def cmd_announcer(args: argparse.Namespace) -> int:
    from services.gateway.announcer import serve

    settings = _settings()
    _configure_logging(settings)
    _use_uvloop()
    serve(settings, args.host or settings.announcer_host, args.port or settings.announcer_port)
    return 0


def cmd_scanner(args: argparse.Namespace) -> int:
    from services.scanner.worker import build_scanner
    from shared.pipeline import scanner_queue
    from shared.worker import serve

    settings = _settings()
    _configure_logging(settings)
    _use_uvloop()
    asyncio.run(
        serve(
            settings,
            "scanner",
            scanner_queue,
            build_scanner,
            metrics_port=settings.scanner_metrics_port,
        )
    )
    return 0


def cmd_processor(args: argparse.Namespace) -> int:
    import functools

    from services.processor.worker import build_processor, process_pool
    from shared.pipeline import processor_queue
    from shared.worker import serve

    settings = _settings()
    _configure_logging(settings)
    _use_uvloop()
    with process_pool(settings.processor_workers) as pool:
        asyncio.run(
            serve(
                settings,
                "processor",
                processor_queue,
                functools.partial(build_processor, pool=pool),
                metrics_port=settings.processor_metrics_port,
            )
        )
    return 0


def cmd_relay(args: argparse.Namespace) -> int:
    from services.relay.main import run

    settings = _settings()
    _configure_logging(settings)
    _use_uvloop()
    return run(settings)


def cmd_webhooks(args: argparse.Namespace) -> int:
    from commands.webhooks import run

    settings = _settings()
    return run(settings, args)


def cmd_stack(args: argparse.Namespace) -> int:
    from devstack import stack_down, stack_status, stack_up

    settings = _settings()
    if args.action == "up":
        return stack_up(settings, with_services=not args.infra_only)
    if args.action == "down":
        return stack_down(settings)
    return stack_status(settings)


def _use_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # optional speed-up; the stdlib loop works too
        return
    uvloop.install()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clearance", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "stack", help="run the local stack: storage, database, broker, clamd, services"
    )
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument(
        "--infra-only",
        action="store_true",
        help="start storage/db/broker/clamd but no Clearance service",
    )
    p.set_defaults(func=cmd_stack)

    p = sub.add_parser("gateway", help="run the HTTP gateway")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument(
        "--workers",
        type=int,
        help="processes sharing the port (default: CLEARANCE_GATEWAY_WORKERS, else one per CPU)",
    )
    p.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--supervisor", type=int, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_gateway)

    p = sub.add_parser(
        "announcer",
        help="run the outbox relay and webhook dispatcher on their own"
        " (with CLEARANCE_GATEWAY_ANNOUNCERS=false on the gateways)",
    )
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.set_defaults(func=cmd_announcer)

    p = sub.add_parser("relay", help="run the storage-notification relay (webhooks → RabbitMQ)")
    p.set_defaults(func=cmd_relay)

    p = sub.add_parser("scanner", help="run the virus-scanning worker (clamd)")
    p.set_defaults(func=cmd_scanner)

    p = sub.add_parser("processor", help="run the verify/metadata/thumbnail worker")
    p.set_defaults(func=cmd_processor)

    p = sub.add_parser("webhooks", help="the webhook delivery log: list, show, replay; secrets")
    hooks = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = hooks.add_parser("list", help="the newest deliveries, with attempts and last answer")
    q.add_argument("--state", choices=["pending", "delivered", "dead"])
    q.add_argument("--upload", metavar="UPLOAD_ID", help="only this upload's deliveries")
    q.add_argument("--limit", type=int, default=50)
    q.add_argument("--json", action="store_true", help="one JSON object per line")
    q = hooks.add_parser("show", help="one delivery and every attempt (status, latency, error)")
    q.add_argument("id", type=int)
    q = hooks.add_parser("replay", help="send a delivery again now (e.g. a dead one)")
    q.add_argument("id", type=int)
    hooks.add_parser("secret", help="print a new endpoint secret (whsec_…)")
    p.set_defaults(func=cmd_webhooks)

    p = sub.add_parser("token", help="print a bearer token for SUBJECT (local use)")
    p.add_argument("subject")
    p.add_argument("--ttl", type=int, default=3600, help="seconds; negative mints an expired token")
    p.set_defaults(func=cmd_token)

    add_upload_commands(sub)

    p = sub.add_parser(
        "init", help="prepare a deployment: migrate the database, create and configure the bucket"
    )
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("migrate", help="create the database if needed and apply migrations")
    p.add_argument("--target", type=int, default=None, help="migrate up or down to this version")
    p.set_defaults(func=cmd_migrate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        return 130
