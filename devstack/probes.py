"""Readiness probes: cheap, bounded checks that a component answers its protocol."""

from __future__ import annotations

import ipaddress
import socket
import struct
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

PROBE_TIMEOUT_S = 1.0


class Probe(Protocol):
    """Something that can tell whether a component answers."""

    @property
    def address(self) -> str:
        """Where the component listens, for humans."""
        ...

    def check(self) -> bool:
        """Return True when the component answers; never raises, never blocks long."""
        ...


@dataclass(frozen=True)
class TcpProbe:
    """Up when a TCP connection is accepted."""

    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def check(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=PROBE_TIMEOUT_S):
                return True
        except OSError:
            return False


@dataclass(frozen=True)
class HttpProbe:
    """Up when the URL gives any HTTP answer (a 403 from S3 counts: it is alive)."""

    url: str

    @property
    def address(self) -> str:
        return self.url

    def status(self) -> int | None:
        """The HTTP status of a GET, or None when nothing answers."""
        request = urllib.request.Request(self.url, method="GET")  # noqa: S310 - our own URL
        try:
            with urllib.request.urlopen(request, timeout=PROBE_TIMEOUT_S) as response:  # noqa: S310
                return int(response.status)
        except urllib.error.HTTPError as exc:
            exc.close()
            return int(exc.code)
        except (OSError, urllib.error.URLError):
            return None

    def check(self) -> bool:
        return self.status() is not None


@dataclass(frozen=True)
class PostgresProbe:
    """Up when the server answers an SSLRequest ('S' or 'N'), i.e. speaks PostgreSQL."""

    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def check(self) -> bool:
        ssl_request = struct.pack("!ii", 8, 80877103)
        try:
            with socket.create_connection((self.host, self.port), timeout=PROBE_TIMEOUT_S) as s:
                s.sendall(ssl_request)
                return s.recv(1) in (b"S", b"N")
        except OSError:
            return False


@dataclass(frozen=True)
class AmqpProbe:
    """Up when the broker answers the AMQP 0-9-1 header with a Connection.Start frame."""

    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def check(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=PROBE_TIMEOUT_S) as s:
                s.sendall(b"AMQP\x00\x00\x09\x01")
                frame = _recv_exactly(s, 7)
        except OSError:
            return False
        # Frame type 1 (method) on channel 0: the broker is past its boot.
        return len(frame) == 7 and frame[0] == 1 and frame[1:3] == b"\x00\x00"


@dataclass(frozen=True)
class ClamdProbe:
    """Up when clamd answers PING with PONG."""

    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def check(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=PROBE_TIMEOUT_S) as s:
                s.sendall(b"zPING\0")
                return _recv_exactly(s, 5) == b"PONG\0"
        except OSError:
            return False


def is_loopback(host: str) -> bool:
    """True for hosts that can only be this machine (where we may start a server)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def wait_until(
    ready: Callable[[], bool],
    timeout: float,
    *,
    still_worth_waiting: Callable[[], bool] | None = None,
) -> bool:
    """Poll `ready` with a short back-off until it holds or `timeout` seconds pass.

    `still_worth_waiting` lets the caller stop early, e.g. when the process it
    started has already exited.
    """
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        if ready():
            return True
        if still_worth_waiting is not None and not still_worth_waiting():
            return False
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)
