"""The workers' health endpoint: green only while the broker connection is up."""

from __future__ import annotations

import asyncio
import socket

from aiohttp import ClientSession

from shared.worker import health_server


class FakeConnection:
    """What `health_server` reads of an aio-pika robust connection."""

    def __init__(self) -> None:
        self.connected = asyncio.Event()
        self.is_closed = False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_healthz_follows_the_broker_connection_and_metrics_are_served() -> None:
    connection = FakeConnection()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    async with health_server(connection, "127.0.0.1", port), ClientSession() as http:
        async with http.get(f"{base}/healthz") as resp:
            assert resp.status == 503
            assert (await resp.json())["broker"] == "disconnected"
        connection.connected.set()
        async with http.get(f"{base}/healthz") as resp:
            assert resp.status == 200
            assert await resp.json() == {"status": "ok", "broker": "connected"}
        async with http.get(f"{base}/metrics") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            assert "python_info" in await resp.text()
        connection.is_closed = True
        async with http.get(f"{base}/healthz") as resp:
            assert resp.status == 503


async def test_no_port_no_server() -> None:
    async with health_server(FakeConnection(), "127.0.0.1", None):
        pass
