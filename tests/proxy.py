"""The suite's TCP proxy: aiomisc's `TCPProxy` (as aio-pika's own tests use it) between a
client and a real server, plus the two faults the tests need beyond its delays.

- `drop()`: every open connection is closed (a network blip; clients reconnect).
- `cut()` / `restore()`: the link is gone — connections dropped, new ones refused —
  until restored on the same port.
- `hold()` / `release()`: bytes stop flowing both ways (a hung peer), then resume.

Hand-written proxies remain only where a fault needs the HTTP request itself (the
browser tests' storage link, which breaks chosen parts by their part number) or a
per-connection byte count (the CLI's storage proxy, which cuts one part mid-body).
"""

from __future__ import annotations

import asyncio

from aiomisc.pytest import TCPProxy


class LinkProxy(TCPProxy):
    """`LinkProxy(host, port)`; `await start()`, point the client at `proxy_port`."""

    def __init__(self, target_host: str, target_port: int) -> None:
        super().__init__(target_host, target_port, buffered=False)
        self._flowing = asyncio.Event()
        self._flowing.set()

    async def _handle_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await super()._handle_client(reader, writer)
        for client in self.clients:
            if client.client_writer is writer:
                # A peer resetting its side is what these faults are for: aiomisc's pipe
                # tasks end with that error, and nobody retrieves it (a warning at exit).
                for task in client.tasks:
                    task.add_done_callback(_retrieved)

    async def _gate(self, chunk: bytes) -> bytes:
        await self._flowing.wait()
        return chunk

    async def drop(self) -> None:
        """Close every open connection; new ones are accepted."""
        await self.disconnect_all()

    async def cut(self) -> None:
        """Close every connection and refuse new ones until `restore()`."""
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
        await self.disconnect_all()

    async def restore(self) -> None:
        """Listen again, on the same port."""
        if self.server is None:
            await self.start()

    def hold(self) -> None:
        """Stop passing bytes (the peer seems to hang)."""
        self._flowing.clear()
        self.set_content_processors(self._gate, self._gate)

    def release(self) -> None:
        self._flowing.set()

    async def close(self, timeout: float | None = 10) -> None:  # noqa: ASYNC109
        self.release()
        await super().close(timeout=timeout)


def _retrieved(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()
