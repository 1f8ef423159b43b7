"""`clearance webhooks list|show|replay|secret`: the delivery log, for the operator.

Reads and writes the gateway's database directly (like `clearance migrate`); a replay
wakes every gateway's dispatcher through NOTIFY.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import secrets
import sys
import uuid
from datetime import datetime
from typing import Any

import orjson

from services.gateway import webhooks
from shared.db import connect
from shared.settings import WEBHOOK_SECRET_PREFIX, Settings

SECRET_BYTES = 32


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _json(row: Any) -> bytes:
    return orjson.dumps({k: (str(v) if isinstance(v, uuid.UUID) else v) for k, v in row.items()})


async def _list(settings: Settings, args: argparse.Namespace) -> int:
    upload = uuid.UUID(args.upload) if args.upload else None
    async with connect(settings.database_url) as conn:
        rows = await webhooks.deliveries(conn, state=args.state, upload_id=upload, limit=args.limit)
    if args.json:
        for row in rows:
            sys.stdout.buffer.write(_json(row) + b"\n")
        return 0
    print(
        f"{'ID':>6}  {'STATE':9}  {'TRIES':>5}  {'LAST':>4}  {'MS':>7}  {'EVENT':18}  "
        f"{'ENDPOINT':24}  {'UPLOAD':36}  NEXT / DONE"
    )
    for r in rows:
        done = r["delivered_at"] or r["dead_at"]
        latency = f"{r['latency_ms']:.1f}" if r["latency_ms"] is not None else "-"
        print(
            f"{r['id']:>6}  {r['state']:9}  {r['attempts']:>5}  {r['last_status'] or '-':>4}  "
            f"{latency:>7}  {r['event_type']:18}  {r['endpoint'][:24]:24}  {r['upload_id']}  "
            f"{_when(done) if done else 'next ' + _when(r['next_attempt_at'])}"
        )
    return 0


async def _show(settings: Settings, args: argparse.Namespace) -> int:
    async with connect(settings.database_url) as conn:
        found = await webhooks.deliveries(conn, limit=1, delivery_id=args.id)
        if not found:
            print(f"clearance webhooks: no delivery {args.id}", file=sys.stderr)
            return 1
        row = found[0]
        tried = await webhooks.attempts(conn, args.id)
    sys.stdout.buffer.write(_json(row) + b"\n")
    for a in tried:
        answer = a["status_code"] or "-"
        print(
            f"  attempt {a['attempt']}  {_when(a['started_at'])}  {answer:>4}  "
            f"{a['latency_ms']:8.1f} ms  {a['error'] or ''}"
        )
    return 0


async def _replay(settings: Settings, args: argparse.Namespace) -> int:
    async with connect(settings.database_url) as conn:
        try:
            row = await webhooks.replay(conn, args.id)
        except webhooks.DeliveryBusy as exc:
            print(f"clearance webhooks: {exc}", file=sys.stderr)
            return 1
    if row is None:
        print(f"clearance webhooks: no delivery {args.id}", file=sys.stderr)
        return 1
    print(f"delivery {row['id']} ({row['event_type']} to {row['endpoint']}) queued again")
    return 0


def new_secret() -> str:
    """A Standard Webhooks secret: `whsec_` + base64 of 32 random bytes."""
    return WEBHOOK_SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def run(settings: Settings, args: argparse.Namespace) -> int:
    if args.action == "secret":
        print(new_secret())
        return 0
    action = {"list": _list, "show": _show, "replay": _replay}[args.action]
    return asyncio.run(action(settings, args))
