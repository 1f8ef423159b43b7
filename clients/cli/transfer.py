"""Sending one file straight to storage through the gateway's presigned URLs.

Small files go in one presigned PUT (its SHA-256 declared up front, so storage
verifies it). Large ones go in parts, the layout chosen by the gateway:

- parts are read with `os.pread` in a thread (the event loop never waits on the
  disk), hashed there, and held in memory only until they are sent: `parallel`
  parts in flight plus `lookahead` parts read, hashed and signed ahead (so a
  sender never waits for a signature), across every file of the run;
- URLs are signed in batches: parts that ask while a signing request is out are
  signed together by the next one; each URL signs its part's length and SHA-256,
  so storage refuses a corrupted part;
- each part is retried alone, with back-off, on network errors and 5xx; a 403
  (the URL expired) gets the part a fresh URL;
- a resumed upload asks storage which parts it holds and skips those whose size
  and ETag (the MD5 of the local bytes) match.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import itertools
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from aiohttp import ClientError, ClientSession, ClientTimeout
from aiohttp.abc import AbstractStreamWriter
from aiohttp.payload import Payload

from clients.cli.gateway import (
    FINAL_STATUSES,
    LANDED_STATUSES,
    Gateway,
    GatewayError,
    GaveUp,
    SignedPart,
    StoredPart,
)
from clients.cli.progress import FileProgress
from clients.cli.resume import FileIdentity, StateStore, UploadState, identify
from clients.cli.retry import RetryPolicy, is_retryable_status

MiB = 1024 * 1024
WRITE_CHUNK = 256 * 1024  # granularity of progress callbacks and rate limiting
READ_CHUNK = 1 * MiB  # reads from disk when a single PUT streams the file
SIGN_BATCH = 100  # part numbers per signing request
RESIGN_MARGIN = timedelta(seconds=60)  # a URL this close to expiry is renewed first
MAX_RESIGNS = 3  # 403s in a row on fresh URLs: storage refuses for another reason
STALL_SECONDS = 60.0  # one chunk not accepted by the socket for this long: dead link
STORAGE_TIMEOUT = ClientTimeout(total=None, sock_connect=15, sock_read=120)

Progress = Callable[[int], None]
T = TypeVar("T")


class Refused(Exception):
    """The gateway refused to declare the file (its policy, or a bad request)."""

    def __init__(self, error: GatewayError) -> None:
        self.error = error
        super().__init__(error.describe())


class StorageRefused(Exception):
    """Storage answered a request with an error that trying again can't fix."""


class FileChanged(Exception):
    """The source file changed while it was being sent."""


class SharedFile:
    """A read-only descriptor shared by reads in threads.

    It is closed once its owner *and* every read still running in a thread have let
    go: a cancelled transfer can't close the descriptor under a read (which could
    then read another file that reused the number).
    """

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDONLY)
        self._users = 1
        self._lock = threading.Lock()

    def _acquire(self) -> None:
        with self._lock:
            if self._users == 0:
                raise ValueError("the file is closed")
            self._users += 1

    def _release(self) -> None:
        with self._lock:
            self._users -= 1
            last = self._users == 0
        if last:
            os.close(self.fd)

    def read(self, job: Callable[[int], T]) -> asyncio.Future[T]:
        """Run `job(fd)` in the default executor."""
        self._acquire()

        def run() -> T:
            try:
                return job(self.fd)
            finally:
                self._release()

        return asyncio.get_running_loop().run_in_executor(None, run)

    def close(self) -> None:
        self._release()


@dataclass(frozen=True, slots=True)
class Part:
    number: int
    offset: int
    size: int


def plan_parts(size: int, part_size: int) -> list[Part]:
    """The parts of a `size`-byte file cut in `part_size` pieces (the last may be shorter)."""
    if size < 1 or part_size < 1:
        raise ValueError("size and part_size must be positive")
    return [
        Part(number=i + 1, offset=offset, size=min(part_size, size - offset))
        for i, offset in enumerate(range(0, size, part_size))
    ]


class RateLimiter:
    """Caps the bytes per second of everything that shares it (`--limit-rate`)."""

    def __init__(self, bytes_per_second: float, clock: Callable[[], float] = time.monotonic):
        if bytes_per_second <= 0:
            raise ValueError("the rate must be positive")
        self.rate = bytes_per_second
        self._clock = clock
        self._next = clock()

    def reserve(self, n: int) -> float:
        """Book `n` bytes; the seconds to wait before sending them."""
        now = self._clock()
        start = max(now, self._next)
        self._next = start + n / self.rate
        return start - now

    async def acquire(self, n: int) -> None:
        delay = self.reserve(n)
        if delay > 0:
            await asyncio.sleep(delay)


class _CountingPayload(Payload):
    """A request body sent in chunks; counts and reports every chunk it hands over."""

    def __init__(self, size: int, progress: Progress, limiter: RateLimiter | None) -> None:
        super().__init__(b"", content_type="application/octet-stream")
        self._size = size
        self.length = size
        self._progress = progress
        self._limiter = limiter
        self.written = 0

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        raise TypeError("a file body has no text form")

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    def _begin(self) -> None:
        # One payload per try: a consumed payload stops aiohttp from silently sending it
        # again on a reused connection, so every retry is ours, counted and backed off.
        if self._consumed:
            raise RuntimeError("a part payload is sent once; build a new one to retry")
        self._consumed = True

    async def _send(self, writer: AbstractStreamWriter, chunk: memoryview | bytes) -> None:
        if self._limiter is not None:
            await self._limiter.acquire(len(chunk))
        # A socket that accepts nothing for this long is dead; fail the try instead of
        # waiting forever (aiohttp's read timeout only starts after the body is sent).
        async with asyncio.timeout(STALL_SECONDS):
            await writer.write(chunk)
        self.written += len(chunk)
        self._progress(len(chunk))


class PartPayload(_CountingPayload):
    """One part, already in memory (it was read once to hash it)."""

    def __init__(self, data: bytes, progress: Progress, limiter: RateLimiter | None) -> None:
        super().__init__(len(data), progress, limiter)
        self._view = memoryview(data)

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        self._begin()
        end = len(self._view) if content_length is None else min(content_length, len(self._view))
        for start in range(0, end, WRITE_CHUNK):
            await self._send(writer, self._view[start : min(end, start + WRITE_CHUNK)])


class FilePayload(_CountingPayload):
    """A whole file streamed from disk; the next chunk is read while this one is sent."""

    def __init__(
        self, source: SharedFile, size: int, progress: Progress, limiter: RateLimiter | None
    ) -> None:
        super().__init__(size, progress, limiter)
        self._source = source

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        self._begin()
        size = self.length if content_length is None else min(content_length, self.length)

        def read(offset: int) -> asyncio.Future[bytes]:
            length = min(READ_CHUNK, size - offset)
            return self._source.read(lambda fd: os.pread(fd, length, offset))

        offset = 0
        pending = read(0) if size else None
        while pending is not None:
            chunk = await pending
            if not chunk:
                raise FileChanged("the file got shorter while it was being sent")
            offset += len(chunk)
            pending = read(offset) if offset < size else None
            view = memoryview(chunk)
            for start in range(0, len(view), WRITE_CHUNK):
                await self._send(writer, view[start : start + WRITE_CHUNK])


async def put_to_storage(
    http: ClientSession, url: str, headers: dict[str, str], payload: _CountingPayload
) -> tuple[int, str, bytes]:
    """One presigned PUT: (status, ETag without quotes, body of an error answer)."""
    async with http.put(
        url,
        data=payload,
        headers=headers,
        skip_auto_headers=("Content-Type",),  # only what was signed (and given) is sent
        timeout=STORAGE_TIMEOUT,
    ) as resp:
        body = await resp.read()
        return resp.status, resp.headers.get("ETag", "").strip('"'), body


def _storage_code(body: bytes) -> str:
    """The `<Code>` of an S3 error document (empty if there is none)."""
    start = body.find(b"<Code>")
    end = body.find(b"</Code>", start)
    if start < 0 or end < 0:
        return ""
    return body[start + 6 : end].decode(errors="replace")


# 400s that mean the bytes were damaged on the way (send them again).
_DAMAGED = frozenset(
    {"BadDigest", "XAmzContentChecksumMismatch", "InvalidDigest", "IncompleteBody"}
)


@dataclass(slots=True)
class TransferContext:
    """What every file of one run shares: connections, limits, where state lives."""

    http: ClientSession
    gateway: Gateway
    states: StateStore | None
    parallel: int = 4
    # Parts read, hashed and signed ahead, waiting for a sender: the next part starts
    # the moment one finishes, with no signing round trip in between.
    lookahead: int = 2
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    limiter: RateLimiter | None = None
    notify: Callable[[str], None] = print
    slots: asyncio.Semaphore = field(init=False)  # requests in flight to storage
    staging: asyncio.Semaphore = field(init=False)  # parts in memory, not yet sending

    def __post_init__(self) -> None:
        if not 1 <= self.parallel <= 64:
            raise ValueError("parallel must be between 1 and 64")
        if not 1 <= self.lookahead <= 64:
            raise ValueError("lookahead must be between 1 and 64")
        # Together they bound memory: at most (parallel + lookahead) parts at a time.
        self.slots = asyncio.Semaphore(self.parallel)
        self.staging = asyncio.Semaphore(self.lookahead)


@dataclass(slots=True)
class SendResult:
    """What happened to one file (also printed by `--json`)."""

    path: str
    filename: str
    upload_id: str
    status: str
    size: int
    part_count: int = 0  # 0: a single PUT
    sent_parts: list[int] = field(default_factory=list)
    reused_parts: list[int] = field(default_factory=list)
    bytes_sent: int = 0
    retries: int = 0  # failed tries of a PUT that were tried again
    resumed: bool = False
    seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "filename": self.filename,
            "id": self.upload_id,
            "status": self.status,
            "size": self.size,
            "part_count": self.part_count,
            "parts_sent": len(self.sent_parts),
            "parts_reused": len(self.reused_parts),
            "sent_parts": sorted(self.sent_parts),
            "reused_parts": sorted(self.reused_parts),
            "bytes_sent": self.bytes_sent,
            "retries": self.retries,
            "resumed": self.resumed,
            "seconds": round(self.seconds, 3),
        }


class PartSigner:
    """Presigned part URLs, fetched in batches and renewed before they expire.

    At most one signing request is out at a time; parts asking meanwhile wait and
    are signed together by the next request, so the number of round trips falls
    as the gateway gets slower.
    """

    def __init__(self, gateway: Gateway, upload_id: str) -> None:
        self._gateway = gateway
        self._upload_id = upload_id
        self._cache: dict[int, SignedPart] = {}
        self._wanted: dict[int, tuple[str, asyncio.Future[SignedPart]]] = {}
        self._task: asyncio.Task[None] | None = None
        self.requests = 0

    async def url(self, number: int, checksum: str, *, renew: bool = False) -> SignedPart:
        cached = self._cache.get(number)
        now = datetime.now(UTC)
        if cached is not None and not renew and cached.expires_at - now > RESIGN_MARGIN:
            return cached
        future: asyncio.Future[SignedPart] = asyncio.get_running_loop().create_future()
        self._wanted[number] = (checksum, future)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._sign_pending(), name="sign-parts")
        signed = await future
        self._cache[number] = signed
        return signed

    def forget(self, number: int) -> None:
        self._cache.pop(number, None)

    async def _sign_pending(self) -> None:
        while self._wanted:
            batch = dict(itertools.islice(self._wanted.items(), SIGN_BATCH))
            for number in batch:
                del self._wanted[number]
            self.requests += 1
            try:
                signed = await self._gateway.sign_parts(
                    self._upload_id, list(batch), {n: c for n, (c, _) in batch.items()}
                )
            except asyncio.CancelledError:
                for _, future in batch.values():
                    future.cancel()
                raise
            except (GatewayError, GaveUp) as exc:
                for _, future in batch.values():
                    if not future.done():
                        future.set_exception(exc)
                continue
            by_number = {s.number: s for s in signed}
            for number, (_, future) in batch.items():
                if future.done():
                    continue
                if number in by_number:
                    future.set_result(by_number[number])
                else:
                    future.set_exception(GaveUp(f"the gateway did not sign part {number}"))

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for _, future in self._wanted.values():
            future.cancel()
        self._wanted.clear()


@dataclass(frozen=True, slots=True)
class ReadyPart:
    """A part read, hashed and signed, waiting for a free sender."""

    data: bytes
    checksum: str
    signed: SignedPart


def _read_part(fd: int, part: Part) -> bytes:
    """One part's bytes; runs in a thread."""
    data = os.pread(fd, part.size, part.offset)
    if len(data) != part.size:
        raise FileChanged("the file got shorter while it was being sent")
    return data


def _sha256_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def _read_and_hash(fd: int, part: Part) -> tuple[bytes, str]:
    """(bytes, base64 SHA-256) of one part; runs in a thread (hashlib releases the GIL)."""
    data = _read_part(fd, part)
    return data, _sha256_b64(data)


def _read_and_md5(fd: int, part: Part) -> tuple[bytes, str]:
    """(bytes, hex MD5: the ETag storage gives a part) of one part; runs in a thread."""
    data = _read_part(fd, part)
    return data, hashlib.md5(data, usedforsecurity=False).hexdigest()


def _file_sha256(fd: int, size: int) -> str:
    """Base64 SHA-256 of a whole file, read in chunks; runs in a thread."""
    digest = hashlib.sha256()
    offset = 0
    while offset < size:
        chunk = os.pread(fd, min(4 * MiB, size - offset), offset)
        if not chunk:
            raise FileChanged("the file got shorter while it was being read")
        digest.update(chunk)
        offset += len(chunk)
    return base64.b64encode(digest.digest()).decode()


class FileUpload:
    """One file's trip: declare or resume, send, complete."""

    def __init__(
        self,
        ctx: TransferContext,
        path: str,
        *,
        content_type: str,
        profile: str,
        filename: str | None = None,
        progress: FileProgress | None = None,
    ) -> None:
        self.ctx = ctx
        self.path = path
        self.content_type = content_type
        self.profile = profile
        self.filename = filename or os.path.basename(path)
        self.progress = progress
        self._identity: FileIdentity | None = None

    def _advance(self, n: int) -> None:
        if self.progress is not None:
            self.progress.advance(n)

    def _stage(self, stage: str) -> None:
        if self.progress is not None:
            self.progress.stage = stage

    async def run(self) -> SendResult:
        """Send the file (continuing a previous run's upload when there is one)."""
        started = time.monotonic()
        identity = self._identity = await asyncio.to_thread(identify, self.path)
        source = SharedFile(identity.path)
        try:
            result = await self._resume(identity, source)
            if result is None:
                result = await self._fresh(identity, source)
        finally:
            source.close()
        result.seconds = time.monotonic() - started
        return result

    # -- resume ---------------------------------------------------------------

    async def _resume(self, identity: FileIdentity, source: SharedFile) -> SendResult | None:
        states = self.ctx.states
        state = await asyncio.to_thread(states.load, identity) if states else None
        if state is None or state.gateway != self.ctx.gateway.base_url:
            return None
        try:
            record = await self.ctx.gateway.get(state.upload_id)
        except GatewayError as exc:
            if exc.status in (404, 410):
                await self._start_over(state, "the gateway no longer knows it")
                return None
            raise
        status = str(record.get("status"))
        result = SendResult(
            path=identity.path,
            filename=state.filename,
            upload_id=state.upload_id,
            status=status,
            size=identity.size,
            part_count=state.part_count or 0,
            resumed=True,
        )
        if status in LANDED_STATUSES:
            # A previous run sent everything but died before forgetting the state.
            await self._forget(identity)
            self.ctx.notify(f"{self.filename}: already sent as {state.upload_id} ({status})")
            return result
        if status in FINAL_STATUSES:
            await self._start_over(state, f"it is {status}")
            return None
        if state.part_size is None or state.part_count is None:
            # A single PUT can't be continued; maybe it landed and only `complete` is missing.
            try:
                done = await self.ctx.gateway.complete(state.upload_id)
            except GatewayError as exc:
                if exc.status == 409 and exc.upload_status is None:
                    await self._start_over(state, "its bytes never arrived")
                    return None
                raise
            result.status = str(done.get("status", "uploaded"))
            await self._forget(identity)
            return result
        plan = record.get("multipart") or {}
        if (
            record.get("size") != identity.size
            or plan.get("part_size") != state.part_size
            or plan.get("part_count") != state.part_count
        ):
            await self._start_over(state, "its layout does not match the file")
            return None
        try:
            stored = await self.ctx.gateway.stored_parts(state.upload_id)
        except GatewayError as exc:
            if exc.status in (404, 409, 410):
                await self._start_over(state, "storage no longer holds its parts")
                return None
            raise
        self.ctx.notify(
            f"{self.filename}: resuming upload {state.upload_id} "
            f"({len(stored)} of {state.part_count} parts already in storage)"
        )
        await self._send_parts(result, source, state.part_size, stored)
        await self._forget(identity)
        return result

    async def _start_over(self, state: UploadState, why: str) -> None:
        self.ctx.notify(f"{self.filename}: starting over (upload {state.upload_id}: {why})")
        with contextlib.suppress(GatewayError, GaveUp):
            # Best effort: abort what storage may still hold; the reconciler would too.
            await self.ctx.gateway.delete(state.upload_id)
        await self._forget(state.identity)

    async def _forget(self, identity: FileIdentity) -> None:
        if self.ctx.states is not None:
            await asyncio.to_thread(self.ctx.states.delete, identity)

    # -- fresh upload ---------------------------------------------------------

    async def _fresh(self, identity: FileIdentity, source: SharedFile) -> SendResult:
        self._stage("declaring")
        sha256 = None
        # Small files are declared with their checksum, so storage verifies the single
        # PUT; the gateway says which path a size takes, so hash whatever is small.
        if identity.size <= SINGLE_PUT_HASH_LIMIT:
            sha256 = await source.read(lambda fd: _file_sha256(fd, identity.size))
        try:
            created = await self.ctx.gateway.declare(
                filename=self.filename,
                content_type=self.content_type,
                size=identity.size,
                profile=self.profile,
                sha256=sha256,
            )
        except GatewayError as exc:
            if exc.status in (401, 403) or exc.status >= 500:
                raise
            raise Refused(exc) from None
        upload_id = str(created["id"])
        multipart = created.get("multipart")
        state = UploadState(
            identity=identity,
            gateway=self.ctx.gateway.base_url,
            upload_id=upload_id,
            filename=self.filename,
            content_type=self.content_type,
            profile=self.profile,
            part_size=int(multipart["part_size"]) if multipart else None,
            part_count=int(multipart["part_count"]) if multipart else None,
        )
        if self.ctx.states is not None:
            await asyncio.to_thread(self.ctx.states.save, state)
        result = SendResult(
            path=identity.path,
            filename=self.filename,
            upload_id=upload_id,
            status=str(created.get("status", "pending")),
            size=identity.size,
            part_count=state.part_count or 0,
        )
        if multipart:
            await self._send_parts(result, source, int(multipart["part_size"]), {})
        else:
            await self._send_single(result, source, created["upload"])
        await self._forget(identity)
        return result

    # -- single PUT -----------------------------------------------------------

    async def _send_single(
        self, result: SendResult, source: SharedFile, upload: dict[str, Any]
    ) -> None:
        self._stage("sending")
        retry = self.ctx.retry
        last = ""
        async with self.ctx.slots:
            for attempt in range(1, retry.attempts + 1):
                payload = FilePayload(source, result.size, self._advance, self.ctx.limiter)
                try:
                    status, _, body = await put_to_storage(
                        self.ctx.http, upload["url"], dict(upload["headers"]), payload
                    )
                except (ClientError, TimeoutError) as exc:
                    status, body, last = 0, b"", f"{type(exc).__name__}: {exc}"
                result.bytes_sent += payload.written
                if status == 200:
                    break
                self._advance(-payload.written)
                if status:
                    code = _storage_code(body)
                    last = f"storage answered {status} {code}".strip()
                    if not (is_retryable_status(status) or code in _DAMAGED):
                        raise StorageRefused(f"{self.filename}: {last}")
                if attempt == retry.attempts:
                    raise GaveUp(f"{self.filename}: sending failed {attempt} times; last: {last}")
                result.retries += 1
                await asyncio.sleep(retry.delay(attempt))
        await self._check_unchanged(source)
        self._stage("completing")
        done = await self._complete(result.upload_id, None)
        result.status = str(done.get("status", "uploaded"))

    # -- multipart ------------------------------------------------------------

    async def _send_parts(
        self, result: SendResult, source: SharedFile, part_size: int, stored: dict[int, StoredPart]
    ) -> None:
        parts = plan_parts(result.size, part_size)
        if result.part_count and len(parts) != result.part_count:
            raise GaveUp(
                f"the gateway planned {result.part_count} parts but {len(parts)} fit the file"
            )
        result.part_count = len(parts)
        signer = PartSigner(self.ctx.gateway, result.upload_id)
        etags: dict[int, str] = {}
        queue = deque(parts)
        self._stage("verifying" if stored else "sending")

        async def worker() -> None:
            while queue:
                part = queue.popleft()
                async with self.ctx.staging:
                    ready = await self._prepare_part(
                        result, source, part, stored.get(part.number), signer
                    )
                    if isinstance(ready, str):
                        etags[part.number] = ready  # storage holds these very bytes
                        continue
                    await self.ctx.slots.acquire()
                try:
                    etags[part.number] = await self._put_part(result, part, ready, signer)
                finally:
                    self.ctx.slots.release()

        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(min(self.ctx.parallel + self.ctx.lookahead, len(parts))):
                    group.create_task(worker())
        except BaseExceptionGroup as group_error:
            raise _first_cause(group_error) from None
        finally:
            await signer.close()
        await self._check_unchanged(source)
        self._stage("completing")
        done = await self._complete(result.upload_id, sorted(etags.items()))
        result.status = str(done.get("status", "uploaded"))

    async def _prepare_part(
        self,
        result: SendResult,
        source: SharedFile,
        part: Part,
        stored: StoredPart | None,
        signer: PartSigner,
    ) -> str | ReadyPart:
        """Read and hash a part and get its URL; or, if storage already holds exactly
        these bytes, their ETag."""
        if stored is not None and stored.size == part.size:
            # Storage holds this part: keep it if it is these very bytes.
            data, md5 = await source.read(lambda fd: _read_and_md5(fd, part))
            if stored.etag == md5:
                result.reused_parts.append(part.number)
                if self.progress is not None:
                    self.progress.skip(part.size)
                return stored.etag
            checksum = await asyncio.to_thread(_sha256_b64, data)
        else:
            data, checksum = await source.read(lambda fd: _read_and_hash(fd, part))
        return ReadyPart(data, checksum, await signer.url(part.number, checksum))

    async def _put_part(
        self, result: SendResult, part: Part, ready: ReadyPart, signer: PartSigner
    ) -> str:
        """Send one part, retrying it alone; its ETag."""
        self._stage("sending")
        retry = self.ctx.retry
        signed: SignedPart | None = ready.signed
        resigns = 0
        last = ""
        for attempt in range(1, retry.attempts + 1):
            if signed is None:
                signed = await signer.url(part.number, ready.checksum)
            payload = PartPayload(ready.data, self._advance, self.ctx.limiter)
            try:
                status, etag, body = await put_to_storage(
                    self.ctx.http, signed.url, signed.headers, payload
                )
            except (ClientError, TimeoutError) as exc:
                status, etag, body = 0, "", b""
                last = f"{type(exc).__name__}: {exc}"
            result.bytes_sent += payload.written
            if status == 200 and etag:
                result.sent_parts.append(part.number)
                return etag
            self._advance(-payload.written)
            signed = None  # the next try asks the signer (cached unless expired or renewed)
            code = _storage_code(body)
            if status:
                last = f"storage answered {status} {code}".strip()
            if status == 403 and resigns < MAX_RESIGNS:
                # Most likely the URL expired (a long back-off, a suspended laptop).
                resigns += 1
                signer.forget(part.number)
                result.retries += 1
                continue
            if status and not (is_retryable_status(status) or code in _DAMAGED):
                raise StorageRefused(f"part {part.number}: {last}")
            if attempt < retry.attempts:
                result.retries += 1
                await asyncio.sleep(retry.delay(attempt))
        raise GaveUp(f"part {part.number} failed {retry.attempts} times; last: {last}")

    # -- both -----------------------------------------------------------------

    async def _complete(
        self, upload_id: str, parts: list[tuple[int, str]] | None
    ) -> dict[str, Any]:
        return await self.ctx.gateway.complete(upload_id, parts)

    async def _check_unchanged(self, source: SharedFile) -> None:
        """Refuse to complete an upload whose file was written to while it was sent."""
        identity = self._identity
        assert identity is not None
        st = await source.read(os.fstat)
        if st.st_size != identity.size or st.st_mtime_ns != identity.mtime_ns:
            raise FileChanged(f"{self.filename} changed while it was being sent; send it again")


# Declaring a file this small with its SHA-256 costs one quick read; larger files go
# in parts, each with its own checksum.
SINGLE_PUT_HASH_LIMIT = 100 * MiB


def _first_cause(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first real failure inside a task group (not the cancellations it caused)."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first_cause(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return group.exceptions[0]
