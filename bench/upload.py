"""Large-file upload throughput: the CLI's direct multipart vs boto3 vs proxy servers.

Run with the local stack up (`clearance stack up --infra-only`):

    .venv/bin/python bench/upload.py [--size-mib 512] [--rounds 3] [--parallel 4]

In one run, against the same local SeaweedFS, it sends the same file (an MP4
header + random bytes, in the page cache) four ways, the order rotating each round:

- **clearance**: the CLI's transfer code, in this process, through a real gateway
  (a subprocess on port 18290 with its own database and queues): declare, parts
  read in threads, signed in batches with their SHA-256, sent straight to storage
  in parallel, complete;
- **boto3**: `upload_file` (TransferManager, default config) with SSE-S3, which
  the bucket policy requires;
- **proxy**: the client streams the file to an aiohttp server written only for
  this benchmark (a subprocess on port 18291) that forwards the body to storage
  as a multipart upload (aiobotocore, 8 MiB parts), one part at a time (naive)
  and, to be fair to proxies, with 4 parts in flight (pipelined).

It prints MB/s (10^6 bytes per second, median of the rounds), the ratios (goals:
clearance ≥ 95% of boto3 and ≥ 2× the proxy), the CPU seconds per GiB each
process spent (this client, the proxy, the gateway, storage: read from /proc, so
it is fairly robust to other load on the machine) and the resident memory of the
gateway (goal: flat, it never touches the bytes) and of the proxy, sampled from
/proc every 20 ms during each transfer. Everything it stored is deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import boto3
from aiohttp import ClientSession, ClientTimeout, TCPConnector, web
from boto3.s3.transfer import TransferConfig

from clients.cli.gateway import Gateway
from clients.cli.transfer import FileUpload, TransferContext
from devstack.apps import settings_environment
from devstack.processes import listening_pid
from services.gateway.auth import mint_token
from shared.db import drop_database, recreate_database
from shared.s3 import s3_client
from shared.settings import MiB, Settings

GATEWAY_PORT = 18290
PROXY_PORT = 18291
BENCH_DB = "clearance_bench_upload"
PREFIX = "bench-upload"
PROXY_PART = 8 * MiB
SAMPLE_SECONDS = 0.02
ROOT = Path(__file__).resolve().parent.parent


def bench_settings() -> Settings:
    base = Settings()
    return base.model_copy(
        update={
            "database_url": f"{base.database_url.rsplit('/', 1)[0]}/{BENCH_DB}",
            "queue_prefix": "clearance.bench-upload",
            "amqp_exchange": "clearance.bench-upload.events",
            "gateway_port": GATEWAY_PORT,
            "public_url": f"http://127.0.0.1:{GATEWAY_PORT}",
            "scanner_metrics_port": None,
            "processor_metrics_port": None,
            "log_level": "WARNING",
        }
    )


def make_file(directory: str, size: int) -> str:
    path = os.path.join(directory, "bench.mp4")
    header = b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41"
    with open(path, "wb") as f:
        f.write(header)
        left = size - len(header)
        while left:
            n = min(left, 16 * MiB)
            f.write(os.urandom(n))
            left -= n
    return path


# -- what a transfer costs: wall time, CPU of each process, peak memory -------


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Cost:
    seconds: float
    cpu: dict[str, float]  # CPU seconds per process
    rss_before: dict[str, int]
    rss_peak: dict[str, int]


class Meter:
    """Measures one transfer: wall time, CPU per process, resident memory sampled
    from /proc every 20 ms in a thread (peak vs before)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self.cost = Cost(0.0, {}, {}, {})

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self._peak()

    def _peak(self) -> None:
        for name, pid in self.pids.items():
            self.cost.rss_peak[name] = max(self.cost.rss_peak[name], rss_bytes(pid))

    def __enter__(self) -> Meter:
        self.cost.rss_before = {name: rss_bytes(pid) for name, pid in self.pids.items()}
        self.cost.rss_peak = dict(self.cost.rss_before)
        self._cpu = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self._thread.start()
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cost.seconds = time.perf_counter() - self._started
        self._stop.set()
        self._thread.join()
        self._peak()
        self.cost.cpu = {
            name: cpu_seconds(pid) - self._cpu[name] for name, pid in self.pids.items()
        }


# -- the proxy baseline -------------------------------------------------------


def proxy_app(settings: Settings) -> web.Application:
    """PUT /{key}: stream the body to storage as a multipart upload."""

    async def storage(app: web.Application) -> AsyncIterator[None]:
        async with s3_client(settings) as s3:
            app["s3"] = s3
            yield

    async def put(request: web.Request) -> web.Response:
        s3 = request.app["s3"]
        key = request.match_info["key"]
        created = await s3.create_multipart_upload(
            Bucket=settings.bucket, Key=key, ServerSideEncryption="AES256"
        )
        upload_id = created["UploadId"]
        slots = asyncio.Semaphore(int(request.query.get("in_flight", "1")))
        etags: dict[int, str] = {}

        async def send(number: int, body: bytes) -> None:
            try:
                answer = await s3.upload_part(
                    Bucket=settings.bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=body,
                )
                etags[number] = answer["ETag"]
            finally:
                slots.release()

        async with asyncio.TaskGroup() as group:
            number = 0
            while True:
                await slots.acquire()
                try:
                    body = await request.content.readexactly(PROXY_PART)
                except asyncio.IncompleteReadError as short:
                    body = short.partial  # the last part
                if not body:
                    slots.release()
                    break
                number += 1
                group.create_task(send(number, body))
        await s3.complete_multipart_upload(
            Bucket=settings.bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etags[n]} for n in sorted(etags)]},
        )
        return web.json_response({"key": key, "parts": number})

    app = web.Application(client_max_size=8 * 1024**3)
    app.cleanup_ctx.append(storage)
    app.router.add_put("/{key:.+}", put)
    return app


def serve_proxy() -> int:
    web.run_app(
        proxy_app(bench_settings()), host="127.0.0.1", port=PROXY_PORT, print=None, access_log=None
    )
    return 0


# -- the three ways -----------------------------------------------------------


async def via_clearance(
    http: ClientSession, gateway: str, token: str, path: str, parallel: int, ids: list[str]
) -> None:
    ctx = TransferContext(
        http=http,
        gateway=Gateway(http, gateway, token),
        states=None,
        parallel=parallel,
        notify=lambda _message: None,
    )
    result = await FileUpload(ctx, path, content_type="video/mp4", profile="media").run()
    assert result.status == "uploaded", result
    ids.append(result.upload_id)


def via_boto3(settings: Settings, path: str, key: str) -> None:
    client = boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key,
        aws_secret_access_key=settings.s3_secret_key.get_secret_value(),
    )
    client.upload_file(
        path,
        settings.bucket,
        key,
        ExtraArgs={"ServerSideEncryption": "AES256"},
        Config=TransferConfig(),
    )


async def via_proxy(http: ClientSession, path: str, key: str, in_flight: int) -> None:
    size = await asyncio.to_thread(os.path.getsize, path)

    async def body() -> AsyncIterator[bytes]:
        fd = await asyncio.to_thread(os.open, path, os.O_RDONLY)
        try:
            for offset in range(0, size, MiB):
                yield await asyncio.to_thread(os.pread, fd, MiB, offset)
        finally:
            os.close(fd)

    async with http.put(
        f"http://127.0.0.1:{PROXY_PORT}/{key}?in_flight={in_flight}",
        data=body(),
        headers={"Content-Length": str(size)},
        timeout=ClientTimeout(total=600),
    ) as resp:
        assert resp.status == 200, await resp.text()


async def wait_http(http: ClientSession, url: str, deadline: float) -> None:
    while True:
        try:
            async with http.get(url) as resp:
                if resp.status < 500:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{url} did not answer; is the stack up (clearance stack up)?")
        await asyncio.sleep(0.1)


WAYS = {
    "clearance": "clearance CLI, direct to storage",
    "boto3": "boto3 upload_file (TransferManager defaults)",
    "proxy": "naive proxy (streams the body, one part at a time)",
    "proxy4": "pipelined proxy (4 parts in flight)",
}


async def run(
    args: argparse.Namespace,
    settings: Settings,
    gateway_proc: subprocess.Popen[bytes],
    proxy_proc: subprocess.Popen[bytes],
) -> int:
    size = args.size_mib * MiB
    gateway = settings.public_url
    token = mint_token(settings, "bench-upload", ttl_seconds=3600)
    pids = {"client": os.getpid(), "gateway": gateway_proc.pid, "proxy": proxy_proc.pid}
    storage_pid = await asyncio.to_thread(listening_pid, settings.weed_s3_port)
    if storage_pid is not None:
        pids["storage"] = storage_pid
    costs: dict[str, list[Cost]] = {name: [] for name in WAYS}
    with tempfile.TemporaryDirectory(prefix="clearance-bench-") as tmp:
        path = await asyncio.to_thread(make_file, tmp, size)
        connector = TCPConnector(limit=args.parallel * 2 + 8, limit_per_host=0)
        async with ClientSession(connector=connector) as http, s3_client(settings) as s3:
            deadline = time.monotonic() + 30
            await wait_http(http, f"{gateway}/readyz", deadline)
            await wait_http(http, f"http://127.0.0.1:{PROXY_PORT}/", deadline)
            api = Gateway(http, gateway, token)

            async def send(way: str, key: str) -> str:
                """Send the file one way; the key it was stored under."""
                if way == "clearance":
                    ids: list[str] = []
                    await via_clearance(http, gateway, token, path, args.parallel, ids)
                    return str((await api.get(ids[0]))["key"])
                if way == "boto3":
                    await asyncio.to_thread(via_boto3, settings, path, key)
                else:
                    await via_proxy(http, path, key, 4 if way == "proxy4" else 1)
                return key

            print(
                f"uploading a {args.size_mib} MiB file {args.rounds}× each way, order rotating "
                f"(local SeaweedFS, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f})…",
                flush=True,
            )
            names = list(WAYS)
            for round_number in range(args.rounds):
                shift = round_number % len(names)
                stored: list[str] = []
                try:
                    for way in names[shift:] + names[:shift]:
                        with Meter(pids) as meter:
                            stored.append(await send(way, f"{PREFIX}/{way}-{uuid.uuid4().hex}"))
                        costs[way].append(meter.cost)
                finally:
                    # Keep the disk from filling: nothing stored here is needed afterwards.
                    await s3.delete_objects(
                        Bucket=settings.bucket,
                        Delete={"Objects": [{"Key": k} for k in stored], "Quiet": True},
                    )
                print(
                    f"  round {round_number + 1}: "
                    + "  ".join(f"{w} {size / c[-1].seconds / 1e6:.1f}" for w, c in costs.items())
                    + " MB/s",
                    flush=True,
                )
    report(args, size, costs)
    return 0


def report(args: argparse.Namespace, size: int, costs: dict[str, list[Cost]]) -> None:
    speed = {w: size / statistics.median(c.seconds for c in cs) / 1e6 for w, cs in costs.items()}
    gib = size / 1024**3

    def cpu(way: str, process: str) -> float:
        return statistics.median(c.cpu.get(process, 0.0) for c in costs[way]) / gib

    print()
    print(f"{args.size_mib} MiB, median of {args.rounds} rounds (CPU: seconds per GiB sent)")
    print(f"  {'':<52} {'MB/s':>7}   {'client':>6} {'proxy':>6} {'gatew.':>6} {'storage':>7}")
    for way, label in WAYS.items():
        if way == "clearance":
            label = f"{label} ({args.parallel} parts in flight)"
        print(
            f"  {label:<52} {speed[way]:7.1f}   {cpu(way, 'client'):6.2f} {cpu(way, 'proxy'):6.2f}"
            f" {cpu(way, 'gateway'):6.2f} {cpu(way, 'storage'):7.2f}"
        )
    print(
        f"  clearance / boto3 = {speed['clearance'] / speed['boto3']:.2f} (goal ≥ 0.95)   "
        f"clearance / naive proxy = {speed['clearance'] / speed['proxy']:.2f}× (goal ≥ 2)   "
        f"clearance / pipelined proxy = {speed['clearance'] / speed['proxy4']:.2f}×"
    )
    before = statistics.median(c.rss_before["gateway"] for c in costs["clearance"])
    peak = max(c.rss_peak["gateway"] - c.rss_before["gateway"] for c in costs["clearance"])
    print(
        f"  gateway RSS: {before / MiB:.1f} MiB before a direct upload, at most "
        f"{peak / MiB:+.1f} MiB during one (goal: flat; it never touches the bytes)"
    )
    for way in ("proxy", "proxy4"):
        grew = max(c.rss_peak["proxy"] - c.rss_before["proxy"] for c in costs[way])
        print(f"  proxy RSS during the {way} uploads: up to {grew / MiB:+.1f} MiB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--serve-proxy", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_proxy:
        return serve_proxy()
    if args.size_mib <= 100:
        parser.error("--size-mib must be above 100 (the multipart threshold)")
    settings = bench_settings()
    asyncio.run(recreate_database(settings.database_url))
    env = {**os.environ, **settings_environment(settings)}
    gateway_proc = subprocess.Popen(
        [sys.executable, "-m", "commands", "gateway", "--workers=1"], env=env, cwd=ROOT
    )
    proxy_proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--serve-proxy"], env=env, cwd=ROOT
    )
    try:
        try:
            import uvloop
        except ImportError:  # optional; the CLI uses it when installed
            return asyncio.run(run(args, settings, gateway_proc, proxy_proc))
        return uvloop.run(run(args, settings, gateway_proc, proxy_proc))
    finally:
        for proc in (gateway_proc, proxy_proc):
            proc.terminate()
        for proc in (gateway_proc, proxy_proc):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        asyncio.run(drop_database(settings.database_url))


if __name__ == "__main__":
    sys.exit(main())
