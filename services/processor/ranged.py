"""A seekable, read-only file over HTTP ranged GETs, with a hard budget of bytes.

Demuxers and PDF parsers jump around: an MP4 written without `faststart` keeps
its index (`moov`) at the end, a PDF starts at its trailer. Downloading the whole
object to describe it would cost its full size for every poster; reading the
ranges the decoder asks for costs a small fraction.

`RangedReader` serves `read`/`readinto`/`seek`/`tell` from aligned blocks it
fetches on demand and keeps a few of (the decoders re-read headers often, PDFium
in 512-byte steps). Sequential reads double the read-ahead up to a bound, a
jump resets it. Every fetched byte counts against `budget`: past it the read
raises `ReadBudgetExceeded`, so a hostile file can't make a job read gigabytes.

The fetch function is injected: `HttpRangeFetcher` does the real ranged GETs on
a presigned URL over one kept-alive connection (pinned to the scanned version
with If-Match); tests pass a function over bytes.
"""

from __future__ import annotations

import http.client
import io
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

# Fetch(first, last) -> exactly the bytes first..last (inclusive).
Fetch = Callable[[int, int], bytes]

BLOCK = 256 * 1024
MAX_READAHEAD_BLOCKS = 16  # 4 MiB per request at most while streaming
CACHED_BLOCKS = 64  # 16 MiB kept at most


class ReadBudgetExceeded(Exception):
    """The job wanted more bytes than its budget allows."""

    def __init__(self, budget: int, wanted: int) -> None:
        super().__init__(
            f"reading it needs more than {budget} bytes from storage "
            f"(the limit per file; {wanted} were asked for)"
        )
        self.budget = budget
        self.wanted = wanted

    def __reduce__(self) -> tuple[Any, ...]:
        return (ReadBudgetExceeded, (self.budget, self.wanted))


class StorageReadError(Exception):
    """A ranged GET failed. `changed` means the object is no longer the scanned version."""

    def __init__(self, message: str, *, changed: bool = False) -> None:
        super().__init__(message)
        self.changed = changed

    def __reduce__(self) -> tuple[Any, ...]:
        # Raised in the pool process and pickled back: keep `changed`.
        return (_storage_read_error, (str(self), self.changed))


def _storage_read_error(message: str, changed: bool) -> StorageReadError:
    return StorageReadError(message, changed=changed)


class RangedReader(io.RawIOBase):
    """A read-only binary file of `size` bytes whose data comes from `fetch`."""

    def __init__(
        self,
        fetch: Fetch,
        size: int,
        *,
        budget: int,
        block: int = BLOCK,
        max_readahead_blocks: int = MAX_READAHEAD_BLOCKS,
        cached_blocks: int = CACHED_BLOCKS,
    ) -> None:
        super().__init__()
        if size < 0 or budget < 0 or block < 1:
            raise ValueError("size, budget and block must be non-negative (block positive)")
        self._fetch = fetch
        self.size = size
        self.budget = budget
        self._block = block
        self._max_readahead = max(1, max_readahead_blocks)
        self._cache_limit = max(1, cached_blocks)
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._pos = 0
        self._readahead = 1
        self._next_sequential = -1  # the block a sequential reader would want next
        self.bytes_fetched = 0
        self.requests = 0
        # The first budget overrun, kept for callers whose library swallows the
        # exception (PDFium only sees a failed read).
        self.failure: BaseException | None = None

    # -- io.RawIOBase ----------------------------------------------------------

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            target = offset
        elif whence == io.SEEK_CUR:
            target = self._pos + offset
        elif whence == io.SEEK_END:
            target = self.size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if target < 0:
            raise OSError(f"negative seek position {target}")
        self._pos = target
        return target

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = self.size - self._pos
        data = self._read_at(self._pos, size)
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        try:
            data = self.read(len(view))
        except (ReadBudgetExceeded, StorageReadError) as exc:
            # Called from C (PDFium) that can't carry the exception: remember it
            # and report a short read, which fails the caller's operation.
            if self.failure is None:
                self.failure = exc
            return 0
        view[: len(data)] = data
        return len(data)

    # -- blocks ----------------------------------------------------------------

    def _read_at(self, pos: int, size: int) -> bytes:
        end = min(pos + size, self.size)
        if pos >= end:
            return b""
        first, last = pos // self._block, (end - 1) // self._block
        self._ensure(first, last)
        parts = [self._cache[index] for index in range(first, last + 1)]
        for index in range(first, last + 1):
            self._cache.move_to_end(index)
        joined = parts[0] if len(parts) == 1 else b"".join(parts)
        offset = pos - first * self._block
        return joined[offset : offset + (end - pos)]

    def _ensure(self, first: int, last: int) -> None:
        """Fetch the missing blocks of first..last, each contiguous run in one request."""
        last_block = (self.size - 1) // self._block
        index = first
        while index <= last:
            if index in self._cache:
                index += 1
                continue
            if index == self._next_sequential:
                self._readahead = min(self._readahead * 2, self._max_readahead)
            else:
                self._readahead = 1
            # What is needed, and while streaming some blocks beyond.
            limit = min(max(last, index + self._readahead - 1), last_block)
            stop = index
            while stop < limit and stop + 1 not in self._cache:
                stop += 1
            self._fetch_blocks(index, stop)
            index = stop + 1
        self._evict(first, last)

    def _fetch_blocks(self, start: int, stop: int) -> None:
        lo = start * self._block
        hi = min((stop + 1) * self._block, self.size) - 1
        wanted = hi - lo + 1
        if self.bytes_fetched + wanted > self.budget:
            exc = ReadBudgetExceeded(self.budget, self.bytes_fetched + wanted)
            if self.failure is None:
                self.failure = exc
            raise exc
        data = self._fetch(lo, hi)
        if len(data) != wanted:
            raise StorageReadError(f"storage sent {len(data)} bytes for a {wanted}-byte range")
        self.bytes_fetched += wanted
        self.requests += 1
        for index in range(start, stop + 1):
            at = (index - start) * self._block
            self._cache[index] = data[at : at + self._block]
        self._next_sequential = stop + 1

    def _evict(self, first: int, last: int) -> None:
        """Drop the least recently used blocks over the limit, never the ones in use."""
        for index in list(self._cache):
            if len(self._cache) <= self._cache_limit:
                return
            if not first <= index <= last:
                del self._cache[index]


class HttpRangeFetcher:
    """Ranged GETs on one presigned URL over a kept-alive connection.

    Built inside the pool process (it holds a socket); `timeout` bounds each
    connect and each read. One reconnect is tried when a kept-alive connection
    turns out to be closed.
    """

    def __init__(self, url: str, *, etag: str | None = None, timeout: float = 30.0) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("a presigned http(s) URL is needed")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._target = parts.path + (f"?{parts.query}" if parts.query else "")
        self._etag = etag
        self._timeout = timeout
        self._conn: http.client.HTTPConnection | None = None
        self.seconds = 0.0  # time spent waiting on storage

    def __call__(self, first: int, last: int) -> bytes:
        started = time.perf_counter()
        try:
            try:
                return self._get(first, last)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()
                return self._get(first, last)
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise StorageReadError(f"ranged GET failed: {exc}") from exc
        finally:
            self.seconds += time.perf_counter() - started

    def _get(self, first: int, last: int) -> bytes:
        conn = self._connection()
        headers = {"Range": f"bytes={first}-{last}"}
        if self._etag:
            headers["If-Match"] = f'"{self._etag}"'
        conn.request("GET", self._target, headers=headers)
        response = conn.getresponse()
        body = response.read()
        if response.status == 412:
            raise StorageReadError("the object changed after it was scanned", changed=True)
        if response.status != 206:
            raise StorageReadError(f"ranged GET answered {response.status} {response.reason}")
        return body

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._conn = cls(self._host, self._port, timeout=self._timeout)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
