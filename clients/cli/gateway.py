"""A small client of the Clearance gateway's HTTP API (README "API"), as the CLI uses it.

Every call has a timeout and retries on its own (network errors, 5xx, 429) with
back-off; a 4xx is a verdict and comes back as a `GatewayError` carrying the
problem+json document. `follow` reads the upload's Server-Sent Events and
reconnects with `Last-Event-ID` when the stream breaks before a final state.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import ClientError, ClientSession, ClientTimeout

from clients.cli.retry import RetryPolicy, is_retryable_status
from shared.status import FINAL, LANDED

FINAL_STATUSES = FINAL
# Statuses at which the bytes are in storage: a rerun has nothing left to send.
LANDED_STATUSES = LANDED

CALL_TIMEOUT = ClientTimeout(total=30, sock_connect=10)
# The gateway sends a heartbeat comment at least every 15 s (by default); a stream
# silent for much longer than that is dead.
EVENTS_TIMEOUT = ClientTimeout(total=None, sock_connect=10, sock_read=90)


class GatewayError(Exception):
    """The gateway answered with an error (a 4xx, or a 5xx once retries ran out)."""

    def __init__(self, status: int, problem: dict[str, Any], what: str) -> None:
        self.status = status
        self.problem = problem
        self.what = what
        super().__init__(self.describe())

    @property
    def detail(self) -> str:
        return str(self.problem.get("detail") or self.problem.get("title") or "no detail given")

    @property
    def field_errors(self) -> list[tuple[str, str]]:
        errors = self.problem.get("errors") or []
        return [
            (str(e.get("field", "")), str(e.get("message", "")))
            for e in errors
            if isinstance(e, dict)
        ]

    @property
    def upload_status(self) -> str | None:
        value = self.problem.get("upload_status")
        return str(value) if value is not None else None

    def describe(self) -> str:
        """One line for the problem, then one indented line per field error."""
        lines = [f"{self.what}: {self.status} {self.detail}"]
        lines += [f"  {name}: {message}" for name, message in self.field_errors]
        return "\n".join(lines)


class GaveUp(Exception):
    """A request kept failing (network, timeouts, 5xx) through every retry."""


@dataclass(frozen=True, slots=True)
class SignedPart:
    number: int
    url: str
    headers: dict[str, str]
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class StoredPart:
    number: int
    etag: str
    size: int


@dataclass(slots=True)
class SseEvent:
    event: str = "message"
    data: str = ""
    id: str | None = None


@dataclass(slots=True)
class SseParser:
    """Server-Sent Events, line by line (the WHATWG rules the gateway needs)."""

    _event: str = ""
    _data: list[str] = field(default_factory=list)
    _id: str | None = None

    def feed(self, line: str) -> SseEvent | None:
        """Take one line (with or without its newline); return an event when one ends."""
        line = line.rstrip("\r\n")
        if not line:
            if not self._data:
                self._event = ""
                return None
            event = SseEvent(self._event or "message", "\n".join(self._data), self._id)
            self._event, self._data = "", []
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value
        return None


def _problem(body: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(body) if body else {}
    except orjson.JSONDecodeError:
        return {"detail": body[:200].decode(errors="replace").strip() or "no detail given"}
    return doc if isinstance(doc, dict) else {"detail": str(doc)}


def _retry_after(value: str | None) -> float:
    if value and value.strip().isdigit():
        return float(value.strip())
    return 0.0


def parse_time(value: str) -> datetime:
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class Gateway:
    """The gateway's API for one bearer token."""

    def __init__(
        self,
        http: ClientSession,
        base_url: str,
        token: str,
        *,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self._auth = {"Authorization": f"Bearer {token}"}

    async def call(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        ok: Sequence[int] = (200,),
    ) -> dict[str, Any]:
        """One API call, retried on transient failures; the JSON answer or an error."""
        what = f"{method} {path}"
        data = orjson.dumps(body) if body is not None else None
        headers = dict(self._auth)
        if data is not None:
            headers["Content-Type"] = "application/json"
        last = "no attempt made"
        for attempt in range(1, self.retry.attempts + 1):
            wait = 0.0
            try:
                async with self.http.request(
                    method, self.base_url + path, data=data, headers=headers, timeout=CALL_TIMEOUT
                ) as resp:
                    raw = await resp.read()
                    if resp.status in ok:
                        doc = orjson.loads(raw) if raw else {}
                        return doc if isinstance(doc, dict) else {"value": doc}
                    if not is_retryable_status(resp.status):
                        raise GatewayError(resp.status, _problem(raw), what)
                    if attempt == self.retry.attempts:
                        raise GatewayError(resp.status, _problem(raw), what)
                    last = f"{resp.status} {_problem(raw).get('detail', resp.reason)}"
                    wait = _retry_after(resp.headers.get("Retry-After"))
            except (ClientError, TimeoutError) as exc:
                last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            except orjson.JSONDecodeError:
                last = "the answer was not JSON"
            if attempt < self.retry.attempts:
                await asyncio.sleep(
                    min(self.retry.cap_seconds, max(wait, self.retry.delay(attempt)))
                )
        raise GaveUp(f"{what} failed {self.retry.attempts} times; last: {last}")

    async def declare(
        self,
        *,
        filename: str,
        content_type: str,
        size: int,
        profile: str | None,
        sha256: str | None = None,
    ) -> dict[str, Any]:
        """`POST /v1/uploads`: the policy's verdict and, if accepted, how to send."""
        body: dict[str, Any] = {"filename": filename, "content_type": content_type, "size": size}
        if profile:
            body["profile"] = profile
        if sha256:
            body["sha256"] = sha256
        return await self.call("POST", "/v1/uploads", body=body, ok=(201,))

    async def sign_parts(
        self, upload_id: str, numbers: Sequence[int], checksums: dict[int, str]
    ) -> list[SignedPart]:
        """Presigned URLs for a batch of parts; each signs its length and SHA-256."""
        body: dict[str, Any] = {"part_numbers": list(numbers)}
        if checksums:
            body["checksums"] = {str(n): c for n, c in checksums.items()}
        doc = await self.call("POST", f"/v1/uploads/{upload_id}/parts", body=body)
        expires = parse_time(str(doc["expires_at"]))
        return [
            SignedPart(int(p["part_number"]), str(p["url"]), dict(p["headers"]), expires)
            for p in doc["parts"]
        ]

    async def stored_parts(self, upload_id: str) -> dict[int, StoredPart]:
        """The parts storage already holds for a multipart upload."""
        doc = await self.call("GET", f"/v1/uploads/{upload_id}/parts")
        return {
            int(p["part_number"]): StoredPart(
                int(p["part_number"]), str(p["etag"]).strip('"'), int(p["size"])
            )
            for p in doc["parts"]
        }

    async def complete(
        self, upload_id: str, parts: list[tuple[int, str]] | None = None
    ) -> dict[str, Any]:
        """`POST .../complete` (idempotent: an upload that already landed answers 202)."""
        body: dict[str, Any] = {}
        if parts is not None:
            body["parts"] = [{"part_number": n, "etag": etag} for n, etag in parts]
        return await self.call("POST", f"/v1/uploads/{upload_id}/complete", body=body, ok=(202,))

    async def get(self, upload_id: str) -> dict[str, Any]:
        return await self.call("GET", f"/v1/uploads/{upload_id}")

    async def delete(self, upload_id: str) -> None:
        await self.call("DELETE", f"/v1/uploads/{upload_id}", ok=(204,))

    async def follow(self, upload_id: str, last_event_id: int = 0) -> AsyncIterator[dict[str, Any]]:
        """Every `status` event after `last_event_id`, until (and including) a final one.

        A broken stream is reopened with `Last-Event-ID`, so no event is skipped or
        repeated; a stream that closes without a final event (it resumed after the
        last one) ends the iteration once the record confirms a final state.
        """
        path = f"/v1/uploads/{upload_id}/events"
        failures = 0
        last_error = ""
        while True:
            headers = dict(self._auth)
            if last_event_id:
                headers["Last-Event-ID"] = str(last_event_id)
            try:
                async with self.http.get(
                    self.base_url + path, headers=headers, timeout=EVENTS_TIMEOUT
                ) as resp:
                    if resp.status != 200:
                        raw = await resp.read()
                        if not is_retryable_status(resp.status):
                            raise GatewayError(resp.status, _problem(raw), f"GET {path}")
                        last_error = f"{resp.status}"
                    else:
                        parser = SseParser()
                        async for line in resp.content:
                            event = parser.feed(line.decode("utf-8", errors="replace"))
                            if event is None or event.event != "status":
                                continue
                            entry = orjson.loads(event.data)
                            if event.id and event.id.isdigit():
                                last_event_id = int(event.id)
                            failures = 0
                            yield entry
                            if entry.get("status") in FINAL_STATUSES:
                                return
                        record = await self.get(upload_id)
                        if record.get("status") in FINAL_STATUSES:
                            return
                        last_error = "the stream closed early"
            except (ClientError, TimeoutError) as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            failures += 1
            if failures >= self.retry.attempts:
                raise GaveUp(f"GET {path} kept failing; last: {last_error}")
            await asyncio.sleep(self.retry.delay(failures))
