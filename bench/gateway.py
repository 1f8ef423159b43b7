"""Gateway routes per CPU second against stock Uppy Companion, and a bare INSERT floor.

    .venv/bin/python bench/gateway.py [--rounds 3] [--seconds 5] [--connections 32]

Needs PostgreSQL and RabbitMQ (`clearance stack up --infra-only`), `wrk` (Debian's
package: `apt-get install -y wrk`) and node/npm. It brings up everything else itself:

- its own SeaweedFS (`weed mini` on ports of its own, data in a temporary directory);
- two gateways with their own database and queues: 1 worker and 2 workers
  (`clearance gateway --workers N`), and a third, `clearance-1w-split`: 1 worker with
  `CLEARANCE_GATEWAY_ANNOUNCERS=false` and a `clearance announcer` beside it, on a
  database of their own (its CPU is in the system's figure, not the gateway's).
  Creates come from many owners (500 tokens used in turn, as real traffic does) and
  the per-owner limits are set out of reach in the settings (the route is measured,
  not the 429);
- Uppy Companion 6.2.2 + express 4.21.2, installed with npm into `bench/.node/`
  (ignored by git) and configured against the same storage and bucket;
- the floor: a minimal aiohttp + asyncpg handler doing the create's single INSERT;
- the storage floor, `storage`: wrk asking weed itself for the multipart create's one
  storage call (a presigned CreateMultipartUpload), what no gateway can beat on that
  route; measured after all rounds, as it slows weed for the targets after it.

Load comes from wrk (one thread, 32 keep-alive connections, to 127.0.0.1 only, each
run bounded in time), the targets rotating every round so that drift on this shared
2-core machine hits them all alike. Per route and target: req/s, p50/p99, non-2xx
answers (a run with any is invalid), the target's CPU seconds (all its processes, from
/proc) → requests per CPU second, and the whole system's (the target + its PostgreSQL
backends + weed) → requests per system CPU second. Goals: ≥ 3× Companion per gateway
CPU and ≥ 1.5× per system CPU on every Companion route; `/v1/uploads` within 1.5× the
floor's gateway CPU; p99 ≤ 3× p50, and ≤ 25 ms at one worker. Each goal's figure is
printed last; for a route whose p99 misses 25 ms, also the least mean latency this
machine allows it by Little's law (its system CPU per request caps its req/s; wrk's own
CPU is left out, so the true bound is higher still), and its floor's p99, no gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import asyncpg

from devstack.apps import settings_environment
from devstack.layout import StackLayout
from devstack.processes import read_record
from devstack.seaweedfs import SeaweedComponent
from services.gateway.auth import mint_token
from shared.db import drop_database, dsn_name, recreate_database
from shared.pipeline import delete_topology
from shared.s3 import storage_signer
from shared.settings import MiB, Settings

ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = ROOT / "bench" / ".node"
COMPANION = "@uppy/companion@6.2.2"
EXPRESS = "express@4.21.2"
# A database and queues of this run's own: another run (or engineer) is never disturbed.
RUN_ID = uuid.uuid4().hex[:8]
BENCH_DB = f"clearance_bench_gateway_{RUN_ID}"
QUEUE_PREFIX = f"clearance.bench-gateway-{RUN_ID}"
BUCKET = "clearance-bench-gateway"
WEED = {"s3": 18433, "master": 19433, "volume": 19440, "filer": 18988, "admin": 19746}
GATEWAY_PORTS = {1: 18435, 2: 18436}
COMPANION_PORT = 18437
FLOOR_PORT = 18438
P99_GOAL_MS = 25
FLOORS = ("floor", "storage")  # what a route costs without any gateway: not ours
SPLIT_PORT = 18440  # 1 worker, its announcers in a process of their own (own database)
ANNOUNCER_PORT = 18441
UNREACHABLE = 10**9  # per-owner limits, out of reach for a load test


def bench_settings(state_dir: Path) -> Settings:
    base = Settings()
    return base.model_copy(
        update={
            "environment": "test",
            "state_dir": state_dir,
            "database_url": f"{base.database_url.rsplit('/', 1)[0]}/{BENCH_DB}",
            "queue_prefix": QUEUE_PREFIX,
            "amqp_exchange": f"{QUEUE_PREFIX}.events",
            "notifications_exchange": f"{QUEUE_PREFIX}.notifications",
            "bucket": BUCKET,
            "s3_endpoint_url": f"http://127.0.0.1:{WEED['s3']}",
            "weed_s3_port": WEED["s3"],
            "weed_master_port": WEED["master"],
            "weed_volume_port": WEED["volume"],
            "weed_filer_port": WEED["filer"],
            "weed_admin_port": WEED["admin"],
            "relay_port": 18439,  # nothing listens: weed's webhook posts fail fast
            "create_burst": UNREACHABLE,
            "create_rate_per_minute": float(UNREACHABLE),
            "max_pending_uploads": UNREACHABLE,
            "log_level": "WARNING",
            "scanner_metrics_port": None,
            "processor_metrics_port": None,
        }
    )


# -- processes and their CPU ---------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def with_children(pid: int) -> list[int]:
    """A process and its descendants (the gateway's supervisor and its workers)."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except FileNotFoundError:
            continue
        for child in children:
            found += with_children(int(child))
    return found


def wait_http(url: str, deadline: float, *, ok: tuple[int, ...] = (200,)) -> None:
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 - loopback
                if resp.status in ok:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code in ok:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer in time")
        time.sleep(0.2)


def install_companion() -> None:
    NODE_DIR.mkdir(parents=True, exist_ok=True)
    installed = NODE_DIR / "node_modules" / "@uppy" / "companion" / "package.json"
    version = json.loads(installed.read_text())["version"] if installed.exists() else ""
    if version != COMPANION.rsplit("@", 1)[1]:
        print(f"installing {COMPANION} and {EXPRESS} into bench/.node …", flush=True)
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", COMPANION, EXPRESS],
            cwd=NODE_DIR,
            check=True,
        )
    shutil.copy(ROOT / "bench" / "companion_server.mjs", NODE_DIR / "companion_server.mjs")


async def forget(settings: Settings) -> None:
    """Drop this run's database, queues and exchanges."""
    await drop_database(settings.database_url)
    exchanges = [settings.amqp_exchange, settings.notifications_exchange]
    await delete_topology(settings, exchanges=exchanges)


def database_backends(settings: Settings) -> list[int]:
    async def query() -> list[int]:
        conn = await asyncpg.connect(settings.database_url)
        try:
            rows = await conn.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                dsn_name(settings.database_url),
            )
        finally:
            await conn.close()
        return [r["pid"] for r in rows]

    return asyncio.run(query())


# -- the floor: one INSERT behind a minimal handler ------------------------------------


def serve_floor() -> int:
    import uvloop
    from aiohttp import web

    from shared.db import create_pool

    settings = Settings()

    async def pool_ctx(app: web.Application) -> Any:
        app["pool"] = await create_pool(settings.database_url, min_size=1, max_size=10)
        yield
        await app["pool"].close()

    # Owners in turn, as the gateway's load has them (one owner's rows would all
    # update its one open-uploads count).
    owners = [f"floor-{i}" for i in range(500)]
    turn = itertools.count()

    async def insert(request: web.Request) -> web.Response:
        body = await request.json()
        upload_id = uuid.uuid4()
        await request.app["pool"].execute(
            "INSERT INTO uploads (id, owner, profile, filename, content_type, size, bucket,"
            " key, status, correlation_id, expires_at)"
            " VALUES ($1, $2, 'image', $3, $4, $5, $6, $7, 'pending', $8, now())",
            upload_id,
            owners[next(turn) % len(owners)],
            body["filename"],
            body["content_type"],
            body["size"],
            settings.bucket,
            f"floor/{upload_id}",
            str(upload_id),
        )
        return web.json_response({"id": str(upload_id)}, status=201)

    app = web.Application()
    app.cleanup_ctx.append(pool_ctx)
    app.router.add_post("/v1/uploads", insert)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=FLOOR_PORT, access_log=None, print=None)
    return 0


def create_multipart_url(settings: Settings) -> str:
    """A presigned CreateMultipartUpload on the bench's storage, valid for the run: each
    POST to it opens one more multipart upload, as the gateway's create route does."""
    return storage_signer(settings).presign_url(
        "POST", settings.bucket, "bench/film.mp4", expires_in=6 * 3600, query={"uploads": ""}
    )


# -- load -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    name: str
    method: str
    path: str  # with {upload_id} / {key} filled per target
    body: dict[str, Any] | None = None
    targets: tuple[str, ...] = ("clearance-1w", "clearance-2w", "clearance-1w-split", "companion")
    one_owner: bool = False  # the route names one upload: only its owner may call it


ROUTES = [
    Route("GET /s3/params", "GET", "/s3/params?filename=photo.jpg&type=image/jpeg"),
    Route(
        "POST /s3/multipart",
        "POST",
        "/s3/multipart",
        {"filename": "film.mp4", "type": "video/mp4", "metadata": {}},
        ("clearance-1w", "clearance-2w", "clearance-1w-split", "companion", "storage"),
    ),
    Route("sign part", "GET", "/s3/multipart/{upload_id}/1?key={key}", one_owner=True),
    Route(
        "batch sign (5)",
        "GET",
        "/s3/multipart/{upload_id}/batch?key={key}&partNumbers=1,2,3,4,5",
        one_owner=True,
    ),
    Route(
        "POST /v1/uploads single",
        "POST",
        "/v1/uploads",
        {"filename": "photo.jpg", "content_type": "image/jpeg", "size": 1_000_000},
        ("clearance-1w", "clearance-2w", "clearance-1w-split", "floor"),
    ),
    Route(
        "POST /v1/uploads multipart",
        "POST",
        "/v1/uploads",
        {
            "filename": "film.mp4",
            "content_type": "video/mp4",
            "size": 300 * MiB,
            "profile": "media",
        },
        ("clearance-1w", "clearance-2w", "clearance-1w-split"),
    ),
]


@dataclass
class Run:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu: float  # the target's own processes
    system_cpu: float  # + its helpers (an announcer), its PostgreSQL backends + weed
    requests: int


@dataclass
class Target:
    name: str
    port: int
    pids: list[int]
    uses_database: bool
    tokens: list[str] = field(default_factory=list)  # one per owner, used in turn
    settings: Settings | None = None  # its database, when not the run's
    helpers: list[int] = field(default_factory=list)  # counted in the system's CPU only
    multipart: tuple[str, str] = ("", "")  # (upload id, key) for the sign routes
    url: str = ""  # the whole URL, method and no body, for every route (`storage`)
    last: bool = False  # measured after all rounds, not in turn (it would slow the others)


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def wrk(url: str, route: Route, tokens: list[str], args: argparse.Namespace) -> str:
    """One bounded wrk run; each request carries the next owner's token (if any)."""
    script = Path(args.scratch) / "request.lua"
    lines = [f'wrk.method = "{route.method}"']
    if route.body is not None:
        lines.append('wrk.headers["Content-Type"] = "application/json"')
        lines.append(f"wrk.body = [[{json.dumps(route.body)}]]")
    if tokens:
        lines.append("tokens = {" + ",".join(f'"{t}"' for t in tokens) + "}")
        lines.append("n = 0")
        lines.append("request = function()")
        lines.append("  n = n % #tokens + 1")
        lines.append('  wrk.headers["Authorization"] = "Bearer " .. tokens[n]')
        lines.append("  return wrk.format()")
        lines.append("end")
    # The first refusal of a run is shown: a run with any is invalid.
    lines.append("shown = false")
    lines.append("response = function(status, headers, body)")
    lines.append("  if status > 299 and not shown then")
    lines.append("    shown = true")
    lines.append(
        '    io.stderr:write("first refusal: " .. status .. " " .. body:sub(1, 300) .. "\\n")'
    )
    lines.append("  end")
    lines.append("end")
    script.write_text("\n".join(lines) + "\n")
    done = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{args.connections}",
            f"-d{args.seconds}s",
            "--timeout=15s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=args.seconds + 30,
    )
    if done.stderr.strip():
        print(f"  {route.name} on {url.split('/')[2]}: {done.stderr.strip()[:400]}", flush=True)
    return done.stdout


def parse_wrk(out: str) -> tuple[float, float, float, int, int]:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = 0
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(g) for g in m.groups())
    return rps, p50, p99, errors, total


def measure(
    target: Target, route: Route, settings: Settings, weed_pid: int, args: argparse.Namespace
) -> Run:
    upload_id, key = target.multipart
    url = f"http://127.0.0.1:{target.port}" + route.path.format(upload_id=upload_id, key=key)
    if target.url:
        url, route = target.url, replace(route, body=None)
    own = [p for pid in target.pids for p in with_children(pid)]
    database = target.settings or settings
    backends = database_backends(database) if target.uses_database else []
    others = [*target.helpers, weed_pid]
    before = {pid: cpu_seconds(pid) for pid in [*own, *backends, *others]}
    out = wrk(url, route, target.tokens[:1] if route.one_owner else target.tokens, args)
    if target.uses_database:
        backends = sorted(set(backends) | set(database_backends(database)))
    spent = {pid: cpu_seconds(pid) - before.get(pid, 0.0) for pid in [*own, *backends, *others]}
    rps, p50, p99, errors, total = parse_wrk(out)
    if errors:
        print(
            f"  {route.name} on {target.name}: {errors} errors;"
            f" one more: {sample(url, route, target)}"
        )
    cpu = sum(spent[p] for p in own)
    return Run(rps, p50, p99, errors, cpu, sum(spent.values()), total)


def sample(url: str, route: Route, target: Target) -> str:
    """One request like the run's, to show what the errors were."""
    headers = {"Authorization": f"Bearer {target.tokens[0]}"} if target.tokens else {}
    data = None if route.body is None else json.dumps(route.body).encode()
    req = urllib.request.Request(  # noqa: S310 - loopback
        url, data=data, method=route.method, headers={"Content-Type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback
            return f"{resp.status}"
    except urllib.error.HTTPError as exc:
        return f"{exc.code} {exc.read()[:300]!r}"
    except OSError as exc:
        return repr(exc)


# -- setting up -----------------------------------------------------------------------


def request_json(
    method: str, url: str, body: dict[str, Any] | None, headers: dict[str, str]
) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(  # noqa: S310 - loopback
        url, data=data, method=method, headers={"Content-Type": "application/json", **headers}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback
        return json.loads(resp.read())


@contextmanager
def started(argv: list[str], env: dict[str, str], *, cwd: Path = ROOT) -> Iterator[int]:
    proc = subprocess.Popen(argv, env=env, cwd=cwd)
    try:
        yield proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run(args: argparse.Namespace) -> dict[str, dict[str, list[Run]]]:
    state = Path(tempfile.mkdtemp(prefix="clearance-bench-gw-"))
    args.scratch = str(state)
    settings = bench_settings(state)
    layout = StackLayout(root=state)
    layout.ensure()
    weed = SeaweedComponent(settings, layout)
    print("starting storage (own weed), database, gateways, Companion, floor …", flush=True)
    print(weed.up(), flush=True)
    routes = [r for r in ROUTES if not args.only or args.only in r.name]
    results: dict[str, dict[str, list[Run]]] = {r.name: {t: [] for t in r.targets} for r in routes}
    # The split gateway relays nothing itself; its announcer drains its own database
    # (in the run's, it would take the other gateways' rows and their CPU with them).
    split = settings.model_copy(
        update={
            "database_url": f"{settings.database_url}_split",
            "gateway_announcers": False,
        }
    )
    try:
        asyncio.run(recreate_database(settings.database_url))
        asyncio.run(recreate_database(split.database_url))
        install_companion()
        env = {**os.environ, **settings_environment(settings)}
        split_env = {**os.environ, **settings_environment(split)}
        companion_env = {
            **os.environ,
            "COMPANION_PORT": str(COMPANION_PORT),
            "COMPANION_SECRET": uuid.uuid4().hex,
            "COMPANION_FILE_PATH": str(state / "companion"),
            "COMPANION_S3_KEY": settings.s3_access_key,
            "COMPANION_S3_SECRET": settings.s3_secret_key.get_secret_value(),
            "COMPANION_S3_BUCKET": settings.bucket,
            "COMPANION_S3_REGION": settings.s3_region,
            "COMPANION_S3_ENDPOINT": settings.s3_endpoint_url,
            "NODE_ENV": "production",
        }
        clearance = [sys.executable, "-m", "commands", "gateway"]
        with (
            started([*clearance, "--workers=1", f"--port={GATEWAY_PORTS[1]}"], env) as gw1,
            started([*clearance, "--workers=2", f"--port={GATEWAY_PORTS[2]}"], env) as gw2,
            started(["node", "companion_server.mjs"], companion_env, cwd=NODE_DIR) as node,
            started([sys.executable, __file__, "--serve-floor"], env) as floor,
            started([*clearance, "--workers=1", f"--port={SPLIT_PORT}"], split_env) as gw_split,
            started(
                [sys.executable, "-m", "commands", "announcer", f"--port={ANNOUNCER_PORT}"],
                split_env,
            ) as announcer,
        ):
            deadline = time.monotonic() + 60
            for port in (*GATEWAY_PORTS.values(), FLOOR_PORT, SPLIT_PORT, ANNOUNCER_PORT):
                wait_http(f"http://127.0.0.1:{port}/healthz", deadline, ok=(200, 404, 405))
            wait_http(f"http://127.0.0.1:{COMPANION_PORT}/", deadline, ok=(200, 404))
            record = read_record(layout.pid_file("seaweedfs"))
            assert record is not None, "weed left no PID record"
            weed_pid = record.pid
            tokens = [
                mint_token(settings, f"owner-{i}", ttl_seconds=7200) for i in range(args.owners)
            ]
            targets = {
                "clearance-1w": Target("clearance-1w", GATEWAY_PORTS[1], [gw1], True, tokens),
                "clearance-2w": Target("clearance-2w", GATEWAY_PORTS[2], [gw2], True, tokens),
                "companion": Target("companion", COMPANION_PORT, [node], False),
                "floor": Target("floor", FLOOR_PORT, [floor], True),
                # Storage alone opens several times as many multipart uploads a second as
                # any gateway, and weed is slower for a while after: it goes last.
                "storage": Target(
                    "storage",
                    WEED["s3"],
                    [weed_pid],
                    False,
                    url=create_multipart_url(settings),
                    last=True,
                ),
                "clearance-1w-split": Target(
                    "clearance-1w-split",
                    SPLIT_PORT,
                    [gw_split],
                    True,
                    tokens,
                    settings=split,
                    helpers=[announcer],
                ),
            }
            for target in targets.values():
                if target.name in FLOORS:
                    continue
                started_mpu = request_json(
                    "POST",
                    f"http://127.0.0.1:{target.port}/s3/multipart",
                    {"filename": "film.mp4", "type": "video/mp4", "metadata": {}},
                    {"Authorization": f"Bearer {tokens[0]}"} if target.tokens else {},
                )
                target.multipart = (started_mpu["uploadId"], started_mpu["key"])
            print(
                f"wrk, {args.connections} connections, {args.seconds} s per run, "
                f"{args.rounds} rounds, targets rotating ({os.cpu_count()} CPUs, "
                f"load {os.getloadavg()[0]:.1f})",
                flush=True,
            )
            for route in routes:  # warm-up: caches, pools, JIT
                for name in route.targets:
                    if not targets[name].last:
                        warm = argparse.Namespace(**{**vars(args), "seconds": 1})
                        measure(targets[name], route, settings, weed_pid, warm)
            for number in range(args.rounds):
                for route in routes:
                    names = [name for name in route.targets if not targets[name].last]
                    shift = number % len(names)
                    for name in names[shift:] + names[:shift]:
                        result = measure(targets[name], route, settings, weed_pid, args)
                        results[route.name][name].append(result)
                print(f"  round {number + 1} done", flush=True)
            for route in routes:
                for name in [name for name in route.targets if targets[name].last]:
                    for _ in range(args.rounds):
                        result = measure(targets[name], route, settings, weed_pid, args)
                        results[route.name][name].append(result)
    finally:
        print(weed.down(), flush=True)
        asyncio.run(forget(settings))
        asyncio.run(drop_database(split.database_url))
        shutil.rmtree(state, ignore_errors=True)
    return results


# -- report ---------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(results: dict[str, dict[str, list[Run]]], args: argparse.Namespace) -> bool:
    print()
    print(f"median of {args.rounds} rounds; per CPU = requests per CPU second of the target's")
    print("own processes; per sys-CPU = per CPU second of target + its PostgreSQL backends + weed")
    print("(+ its announcer for clearance-1w-split, whose gateway publishes no events itself);")
    print("floor and storage: the route's database or storage work alone, without a gateway")
    header = (
        f"  {'route':<27} {'target':<18} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'p99/p50':>7} {'non-2xx':>7} {'per CPU':>8} {'per sys-CPU':>11}"
    )
    print(header)
    valid = True
    summary: dict[tuple[str, str], tuple[float, float, float]] = {}
    tails: list[tuple[float, str]] = []  # p99 at one worker, by route
    alone: dict[str, tuple[float, str]] = {}  # a route's p99 without a gateway, and whose
    for route, by_target in results.items():
        for name, runs in by_target.items():
            errors = sum(r.errors for r in runs)
            valid &= errors == 0
            rps = median([r.requests_per_s for r in runs])
            per_cpu = median([r.requests / r.cpu for r in runs if r.cpu > 0])
            per_sys = median([r.requests / r.system_cpu for r in runs if r.system_cpu > 0])
            p50 = median([r.p50_ms for r in runs])
            p99 = median([r.p99_ms for r in runs])
            summary[(route, name)] = (rps, per_cpu, per_sys)
            if name == "clearance-1w":
                tails.append((p99, route))
            elif name in FLOORS:
                alone[route] = (p99, name)
            flag = "" if errors == 0 else "  INVALID"
            print(
                f"  {route:<27} {name:<18} {rps:7.0f} {p50:7.2f} {p99:7.2f} {p99 / p50:7.1f} "
                f"{errors:7d} {per_cpu:8.0f} {per_sys:11.0f}{flag}"
            )
    print()
    ratios: list[tuple[float, str]] = []
    system_ratios: list[tuple[float, str]] = []
    floors: list[tuple[float, str]] = []
    for route, by_target in results.items():
        base = "companion" if "companion" in by_target else "floor" if "floor" in by_target else ""
        if not base:
            continue
        for ours in ("clearance-1w", "clearance-2w", "clearance-1w-split"):
            if ours not in by_target:
                continue
            rps, cpu, sys_cpu = summary[(route, ours)]
            b_rps, b_cpu, b_sys = summary[(route, base)]
            print(
                f"  {route:<27} {ours:<18} / {base:<9}  req/s {rps / b_rps:5.2f}   "
                f"per CPU {cpu / b_cpu:5.2f}   per sys-CPU {sys_cpu / b_sys:5.2f}"
            )
            if base == "companion":
                ratios.append((cpu / b_cpu, f"{route} ({ours})"))
                system_ratios.append((sys_cpu / b_sys, f"{route} ({ours})"))
            elif ours == "clearance-1w":
                floors.append((b_cpu / cpu, route))
    print()
    if ratios:
        least, where = min(ratios)
        print(f"  smallest per-CPU ratio vs Companion (goal ≥ 3):       {least:5.2f}  {where}")
        least, where = min(system_ratios)
        print(f"  smallest per-sys-CPU ratio vs Companion (goal ≥ 1.5): {least:5.2f}  {where}")
    for cost, route in floors:
        print(f"  {route}, 1 worker: gateway CPU per request ÷ floor's (goal ≤ 1.5): {cost:.2f}")
    if tails:
        p99, route = max(tails)
        print(f"  highest p99 at 1 worker (goal ≤ {P99_GOAL_MS} ms): {p99:.0f} ms  {route}")
        for p99, route in sorted(tails, reverse=True):
            if p99 > P99_GOAL_MS:
                print(f"    {route}: {little(summary[(route, 'clearance-1w')][2], args)}")
            if route in alone:
                floor_p99, name = alone[route]
                print(
                    f"    {route}: p99 {p99:.0f} ms; {name} alone, no gateway: {floor_p99:.0f} ms"
                )
    if not valid:
        print("  INVALID: some runs had non-2xx answers or socket errors")
    return valid


def little(per_system_cpu: float, args: argparse.Namespace) -> str:
    """The lowest mean latency `args.connections` clients can see on this machine, by
    Little's law (mean latency = clients in the system ÷ throughput): the route's system
    CPU per request (gateway + PostgreSQL + weed, not wrk's) caps its throughput at the
    machine's CPUs ÷ that cost, even with every CPU busy with it alone."""
    cpus = os.cpu_count() or 1
    most = cpus * per_system_cpu
    mean_ms = args.connections / most * 1000
    if mean_ms > P99_GOAL_MS:
        verdict = f"a {P99_GOAL_MS} ms p99 is out of reach here, however flat the tail"
    else:
        verdict = f"a {P99_GOAL_MS} ms p99 needs a p99 within {P99_GOAL_MS / mean_ms:.2f}× it"
    return (
        f"{cpus} CPUs at {per_system_cpu:.0f} req per system-CPU s carry at most {most:.0f}"
        f" req/s: a mean of ≥ {mean_ms:.1f} ms at {args.connections} connections"
        f" (Little's law); {verdict}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--owners", type=int, default=500, help="tokens (owners) used in turn")
    parser.add_argument("--only", help="run the routes whose name contains this")
    parser.add_argument("--serve-floor", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_floor:
        return serve_floor()
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed: apt-get install -y wrk")
    results = run(args)
    return 0 if report(results, args) else 1


if __name__ == "__main__":
    sys.exit(main())
