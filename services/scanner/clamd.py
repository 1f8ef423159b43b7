"""A small asyncio client for clamd's INSTREAM protocol.

One scan is one TCP connection: `zINSTREAM\\0`, then chunks framed as a 4-byte
big-endian length plus data, then a zero length; clamd answers one
NUL-terminated line. Only one chunk is in flight at a time (each send waits
until the kernel has taken it), so memory stays bounded whatever the size.

It uses the event loop's socket operations (`sock_sendall`/`sock_recv`)
rather than streams: when clamd refuses an over-long stream it answers
"INSTREAM size limit exceeded. ERROR" and closes, and our next send fails.
An asyncio transport stops reading on a failed write, so clamd's answer —
already in the kernel's receive queue — was lost in 1-4% of such scans
(measured); a plain socket can still read it after the send failed.

Three outcomes, never confused:

- `ScanResult`: clamd scanned every byte; `clean` says whether it found anything.
- `ScanIncomplete`: clamd could not scan every byte (a size limit, or a
  `Heuristics.Limits.Exceeded.*` verdict). Retrying gives the same answer, so
  the upload must end `failed` with this reason, never `clean`.
- `ClamdUnavailable`: no verdict this time (refused, timed out, connection
  lost, clamd-side error). Transient: the caller retries.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final

from shared.settings import Settings

_LENGTH: Final = struct.Struct(">I")
_END_OF_STREAM: Final = _LENGTH.pack(0)
# clamd's replies are one short line; anything longer is not clamd.
_MAX_REPLY: Final = 64 * 1024
# Connecting to a healthy local clamd takes microseconds; don't wait the full
# scan timeout on a dead host.
_DEFAULT_CONNECT_TIMEOUT_S: Final = 10.0
# `AlertExceedsMax yes` names everything clamd skipped for a limit like this.
_LIMITS_EXCEEDED: Final = "Heuristics.Limits.Exceeded"
_SIZE_LIMIT_ERROR: Final = "size limit exceeded"


class ClamdError(Exception):
    """Base class of everything this client raises about clamd."""


class ScanIncomplete(ClamdError):
    """clamd could not scan the whole stream; the object must never count as clean.

    Raised for clamd's `INSTREAM size limit exceeded`, for a
    `Heuristics.Limits.Exceeded.*` verdict, and by the client itself before
    sending more than `max_bytes`. Permanent: the same bytes give the same answer.
    """

    def __init__(self, reason: str, *, sent_bytes: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.sent_bytes = sent_bytes


class ClamdUnavailable(ClamdError):
    """No verdict this time: clamd refused, timed out, dropped or failed the scan.

    Transient; the caller retries (with back-off, up to its attempt limit).
    """


@dataclass(frozen=True)
class ScanResult:
    """clamd's verdict on a stream it scanned completely."""

    clean: bool
    # The signature's name as clamd reports it, e.g. "Eicar-Test-Signature.UNOFFICIAL".
    signature: str | None
    scanned_bytes: int
    duration_s: float


class ClamdClient:
    """Talks to one clamd over TCP; holds no connection between calls."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout: float,
        max_bytes: int,
        chunk_size: int = 1 << 20,
        connect_timeout: float | None = None,
    ) -> None:
        """`timeout` bounds a whole call (connect, send, verdict); `max_bytes` is
        the most the client will send for one scan (clamd's StreamMaxLength)."""
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        if not 0 < chunk_size <= 0xFFFFFFFF:
            raise ValueError("chunk_size must fit clamd's 32-bit length prefix")
        self._host = host
        self._port = port
        self._timeout = timeout
        self._connect_timeout = min(timeout, connect_timeout or _DEFAULT_CONNECT_TIMEOUT_S)
        self._max_bytes = max_bytes
        self._chunk_size = chunk_size

    @classmethod
    def from_settings(cls, settings: Settings) -> ClamdClient:
        """A client for the clamd and the limits named in `settings`."""
        return cls(
            settings.clamd_host,
            settings.clamd_port,
            timeout=settings.clamd_timeout_seconds,
            max_bytes=settings.clamd_max_bytes,
        )

    @property
    def max_bytes(self) -> int:
        """The largest stream this client will send."""
        return self._max_bytes

    async def ping(self) -> bool:
        """True if clamd answers PONG; False if it is unreachable or answers otherwise."""
        try:
            return await self._command(b"zPING\0") == "PONG"
        except ClamdUnavailable:
            return False

    async def version(self) -> str:
        """clamd's version line, e.g. `ClamAV 1.4.6/27000/...`."""
        return await self._command(b"zVERSION\0")

    async def scan_stream(self, chunks: AsyncIterator[bytes]) -> ScanResult:
        """Stream `chunks` into clamd and return its verdict.

        Raises `ScanIncomplete` when the stream could not be fully scanned and
        `ClamdUnavailable` when clamd gave no verdict. Exceptions raised by
        `chunks` itself propagate unchanged.
        """
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._timeout):
                with await self._connect() as sock:
                    sent, reply = await self._instream(sock, chunks)
        except TimeoutError as exc:
            raise ClamdUnavailable(
                f"clamd at {self._host}:{self._port} gave no verdict within {self._timeout:g} s"
            ) from exc
        return _verdict(reply, sent, time.perf_counter() - started)

    async def _instream(self, sock: socket.socket, chunks: AsyncIterator[bytes]) -> tuple[int, str]:
        # clamd may answer (and hang up) while we are still sending, so its reply
        # is read alongside the sending, not after it.
        reply_task = asyncio.create_task(_read_reply(sock))
        try:
            sent, send_error = await self._send_stream(sock, chunks, reply_task)
            try:
                reply = await reply_task
            except OSError as exc:
                cause = send_error or exc
                raise ClamdUnavailable(f"clamd dropped the connection: {cause!r}") from cause
        finally:
            await _cancel(reply_task)
        return sent, reply

    async def _send_stream(
        self,
        sock: socket.socket,
        chunks: AsyncIterator[bytes],
        reply_task: asyncio.Task[str],
    ) -> tuple[int, OSError | None]:
        """Send the command, the framed chunks and the terminator.

        Returns the payload bytes sent and the socket error that stopped the
        sending, if any. Stops early, without error, once clamd has answered.
        """
        sent = 0
        if error := await _send(sock, b"zINSTREAM\0"):
            return sent, error
        # Errors raised by `chunks` (the object's source) propagate untouched.
        async for chunk in chunks:
            if not chunk:
                continue  # an empty frame would end the stream early
            if sent + len(chunk) > self._max_bytes:
                raise ScanIncomplete(
                    f"stream is larger than the scanner's limit of {self._max_bytes} "
                    "bytes; refused before sending it",
                    sent_bytes=sent,
                )
            view = memoryview(chunk)
            for start in range(0, len(view), self._chunk_size):
                piece = view[start : start + self._chunk_size]
                if error := await _send(sock, _LENGTH.pack(len(piece)), piece):
                    return sent, error
                sent += len(piece)
                if reply_task.done():
                    return sent, None  # clamd answered early (an error); stop feeding it
        return sent, await _send(sock, _END_OF_STREAM)

    async def _command(self, command: bytes) -> str:
        try:
            async with asyncio.timeout(self._timeout):
                with await self._connect() as sock:
                    if error := await _send(sock, command):
                        raise ClamdUnavailable(f"clamd dropped the connection: {error!r}")
                    try:
                        reply = await _read_reply(sock)
                    except OSError as exc:
                        raise ClamdUnavailable(f"clamd dropped the connection: {exc!r}") from exc
        except TimeoutError as exc:
            raise ClamdUnavailable(
                f"clamd at {self._host}:{self._port} did not answer within {self._timeout:g} s"
            ) from exc
        if not reply:
            raise ClamdUnavailable("clamd closed the connection without answering")
        return reply

    async def _connect(self) -> socket.socket:
        """A connected non-blocking socket; the caller closes it."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                addresses = await loop.getaddrinfo(self._host, self._port, type=socket.SOCK_STREAM)
                errors: list[OSError] = []
                for family, kind, proto, _, address in addresses:
                    sock = socket.socket(family, kind, proto)
                    try:
                        sock.setblocking(False)
                        # The terminator and commands are tiny; don't let Nagle hold them.
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        await loop.sock_connect(sock, address)
                    except BaseException as exc:
                        sock.close()
                        if not isinstance(exc, OSError):
                            raise
                        errors.append(exc)
                        continue
                    return sock
                if len(errors) == 1:
                    raise errors[0]
                raise OSError(f"no address of {self._host!r} answered: {errors!r}")
        except (OSError, TimeoutError) as exc:
            raise ClamdUnavailable(
                f"cannot connect to clamd at {self._host}:{self._port}: {exc!r}"
            ) from exc


async def _send(sock: socket.socket, *parts: bytes | memoryview) -> OSError | None:
    """Hand `parts` to the kernel; return the error if clamd hung up (EPIPE/ECONNRESET)."""
    loop = asyncio.get_running_loop()
    try:
        for part in parts:
            await loop.sock_sendall(sock, part)
    except OSError as exc:
        return exc
    return None


async def _read_reply(sock: socket.socket) -> str:
    """Read one reply: up to NUL, or up to EOF for the newline-ended timeout message."""
    loop = asyncio.get_running_loop()
    buffer = bytearray()
    while True:
        data = await loop.sock_recv(sock, 4096)
        if not data:
            break
        buffer += data
        end = buffer.find(b"\0")
        if end >= 0:
            del buffer[end:]
            break
        if len(buffer) > _MAX_REPLY:
            raise ClamdUnavailable("clamd's reply is implausibly long; is this clamd?")
    return buffer.decode("utf-8", "replace").strip()


def _verdict(reply: str, sent: int, duration_s: float) -> ScanResult:
    if not reply:
        raise ClamdUnavailable("clamd closed the connection without a verdict")
    if reply == "stream: OK":
        return ScanResult(clean=True, signature=None, scanned_bytes=sent, duration_s=duration_s)
    if reply.startswith("stream: ") and reply.endswith(" FOUND"):
        signature = reply.removeprefix("stream: ").removesuffix(" FOUND")
        if signature.startswith(_LIMITS_EXCEEDED):
            # Not a detection: clamd stopped at a limit. ClamAV reports these only
            # when no real signature matched what it did scan, so "infected" would
            # be false and "clean" unproven.
            raise ScanIncomplete(f"clamd could not scan everything ({signature})", sent_bytes=sent)
        return ScanResult(
            clean=False, signature=signature, scanned_bytes=sent, duration_s=duration_s
        )
    if _SIZE_LIMIT_ERROR in reply:
        raise ScanIncomplete(f"clamd refused the stream: {reply}", sent_bytes=sent)
    # Any other ERROR (temporary file, memory, read timeout) is about clamd's
    # state, not the bytes: a retry may succeed.
    raise ClamdUnavailable(f"clamd failed the scan: {reply}")


async def _cancel(task: asyncio.Task[str]) -> None:
    if task.done():
        if not task.cancelled():
            task.exception()  # mark it retrieved; the caller already has the outcome
        return
    task.cancel()
    await asyncio.wait([task])
