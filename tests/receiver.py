"""A webhook receiver for the suite: a real aiohttp server that records every POST.

It stands for an application's endpoint. Rules per upload owner (known before the
upload exists, unlike its id) make it answer badly on purpose:

- `fail(owner, times, status)`: the first `times` requests answer `status`;
- `drop(owner)` / `restore(owner)`: requests are cut off without an answer (the
  receiver seems down) until restored;
- `forward_to(url)`: everything else is passed on, headers and body unchanged, to
  another server (the docs' example application), whose answer is returned.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer

FORWARDED = ("content-type", "webhook-id", "webhook-timestamp", "webhook-signature")


@dataclass(frozen=True)
class Received:
    at: float  # time.time() when it arrived
    headers: dict[str, str]
    body: bytes
    answer: int | None  # None: cut off without an answer

    @property
    def event(self) -> dict[str, Any]:
        parsed: dict[str, Any] = orjson.loads(self.body)
        return parsed


class WebhookReceiver:
    def __init__(self) -> None:
        self.log: list[Received] = []
        self._failures: dict[str, list[int]] = defaultdict(list)
        self._dropped: set[str] = set()
        self._forward: str | None = None
        self._http: ClientSession | None = None
        app = web.Application()
        app.router.add_post("/hooks/app", self._handle)
        self.server = TestServer(app, host="127.0.0.1")

    @property
    def url(self) -> str:
        return str(self.server.make_url("/hooks/app"))

    async def start(self) -> None:
        await self.server.start_server()
        self._http = ClientSession()

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
        await self.server.close()

    def fail(self, owner: str, times: int, status: int = 500) -> None:
        self._failures[owner].extend([status] * times)

    def drop(self, owner: str) -> None:
        self._dropped.add(owner)

    def restore(self, owner: str) -> None:
        self._dropped.discard(owner)

    def forward_to(self, url: str | None) -> None:
        self._forward = url

    def of_upload(self, upload_id: str, *, answered: bool = False) -> list[Received]:
        """Requests about one upload, in arrival order (only the 2xx ones if `answered`)."""
        return [
            r
            for r in self.log
            if r.event["upload_id"] == upload_id
            and (not answered or (r.answer is not None and 200 <= r.answer < 300))
        ]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        owner = orjson.loads(body).get("owner", "")
        answer: int | None
        if owner in self._dropped:
            answer = None
        elif self._failures.get(owner):
            answer = self._failures[owner].pop(0)
        elif self._forward is not None:
            assert self._http is not None
            async with self._http.post(
                self._forward, data=body, headers={k: headers[k] for k in FORWARDED}
            ) as resp:
                answer = resp.status
        else:
            answer = 204
        self.log.append(Received(time.time(), headers, body, answer))
        if answer is None:
            assert request.transport is not None
            request.transport.close()  # no answer at all: the receiver seems down
            raise web.HTTPServiceUnavailable  # never reaches the client
        return web.Response(status=answer)
