"""docs/integration.md's complete example, run as written against the suite's gateway.

The gateway delivers to the suite's webhook receiver, which passes every request on,
headers and body unchanged, to the example's own endpoint: the signature it verifies
is the gateway's.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.settings import Settings
from tests.conftest import WEBHOOK_SECRET
from tests.receiver import WebhookReceiver
from tests.support import make_jpeg

pytestmark = pytest.mark.integration

DOC = Path(__file__).resolve().parents[2] / "docs" / "integration.md"


def complete_example() -> str:
    """The one Python block of the doc's "A complete example" section."""
    text = DOC.read_text()
    section = text.split("## 6. A complete example", 1)[1].split("\n## ", 1)[0]
    [code] = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    return code


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def forwarded(webhook_receiver: WebhookReceiver) -> Iterator[int]:
    port = free_port()
    webhook_receiver.forward_to(f"http://127.0.0.1:{port}/clearance/webhooks")
    try:
        yield port
    finally:
        webhook_receiver.forward_to(None)


async def test_the_complete_example_runs_as_written(
    gateway: str, settings: Settings, workers: None, forwarded: int, tmp_path: Path
) -> None:
    script = tmp_path / "backend.py"
    script.write_text(complete_example())
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(make_jpeg())
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        env=os.environ
        | {
            "CLEARANCE_URL": gateway,
            "CLEARANCE_JWT_SECRET": settings.jwt_secret.get_secret_value(),
            "CLEARANCE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "LISTEN_PORT": str(forwarded),
            "UPLOAD_FILE": str(photo),
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(90):
        out, _ = await process.communicate()
    output = out.decode()
    assert process.returncode == 0, output
    assert "is ready image/jpeg" in output, output
    assert f"downloaded {photo.stat().st_size} bytes" in output, output
