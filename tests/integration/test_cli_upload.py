"""`clearance upload`, `status` and `watch` against the real stack.

The commands run in this process where that is enough (their exit code and output
are what a user sees); the kill-and-resume test runs the real CLI as a subprocess
and kills it with SIGKILL halfway through a multipart upload.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from clients.cli.resume import StateStore, UploadState, identify
from clients.cli.upload import (
    ExitCode,
    Target,
    add_commands,
    prepare_upload,
    status_command,
    upload_files,
    watch_command,
)
from devstack.apps import settings_environment
from services.gateway.app import create_app
from shared.settings import MiB, Settings
from tests.support import make_jpeg, tiny_mp4

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
# A real, playable MP4: the processor decodes what follows the header now.
MP4_HEADER = tiny_mp4()


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="clearance")
    add_commands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(list(argv))


class Cli:
    """Runs the commands in this process, as `clearance …` would."""

    def __init__(self, gateway: str, token: str, state_dir: Path) -> None:
        self.gateway, self.token, self.state_dir = gateway, token, state_dir

    async def upload(self, *argv: str) -> int:
        args = parse(
            "upload",
            *argv,
            "--gateway",
            self.gateway,
            "--token",
            self.token,
            "--state-dir",
            str(self.state_dir),
            "--progress",
            "off",
        )
        return await upload_files(args, prepare_upload(args))

    async def status(self, upload_id: str, *argv: str) -> int:
        args = parse("status", upload_id, *argv)
        return await status_command(args, Target(self.gateway, self.token))

    async def watch(self, upload_id: str) -> int:
        return await watch_command(parse("watch", upload_id), Target(self.gateway, self.token))


@pytest.fixture
def subject() -> str:
    return f"cli-{os.urandom(4).hex()}"


@pytest.fixture
def cli(gateway: str, token: Callable[..., str], subject: str, tmp_path: Path) -> Cli:
    return Cli(gateway, token(subject), tmp_path / "state")


def json_lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


async def list_uploads(http: ClientSession, gateway: str, token: str) -> list[dict[str, Any]]:
    async with http.get(
        f"{gateway}/v1/uploads", headers={"Authorization": f"Bearer {token}"}
    ) as resp:
        assert resp.status == 200
        items: list[dict[str, Any]] = (await resp.json())["items"]
    return items


async def test_a_small_jpeg_goes_to_ready_and_the_state_is_forgotten(
    cli: Cli, workers: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "photo.jpg"
    path.write_bytes(make_jpeg())
    code = await cli.upload(str(path), "--wait", "--json")
    out, err = capsys.readouterr()
    assert code == ExitCode.OK, out + err
    [result] = json_lines(out)
    assert result["status"] == "ready"
    assert result["exit_code"] == 0
    assert result["part_count"] == 0  # a single PUT
    assert result["bytes_sent"] == path.stat().st_size
    for stage in ("pending", "uploaded", "scanning", "processing", "ready"):
        assert f"photo.jpg: {stage} (" in err
    assert not list(cli.state_dir.glob("*.json"))

    # `status` prints the record; `watch` replays the stages of a final upload and exits.
    assert await cli.status(result["id"]) == ExitCode.OK
    out, _ = capsys.readouterr()
    assert out.startswith(f"{result['id']}  ready  photo.jpg  image/jpeg")
    assert "timeline: pending" in out
    assert await cli.watch(result["id"]) == ExitCode.OK
    out, _ = capsys.readouterr()
    assert out.splitlines()[-1].startswith("ready (+")


async def test_an_11_mb_jpeg_is_refused_before_any_byte_is_sent(
    cli: Cli,
    tmp_path: Path,
    http: ClientSession,
    gateway: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "huge.jpg"
    path.write_bytes(make_jpeg()[:-2] + os.urandom(11_000_000))
    code = await cli.upload(str(path), "--profile", "image")
    err = capsys.readouterr().err
    assert code == ExitCode.REFUSED
    assert "huge.jpg: refused by the gateway, nothing was sent" in err
    assert "does not meet the upload policy" in err
    assert "size: must be at most 10000000 bytes" in err
    # Nothing was declared, so nothing could have been sent.
    assert await list_uploads(http, gateway, cli.token) == []
    assert not list(cli.state_dir.glob("*.json"))


async def test_several_files_go_their_own_ways(
    cli: Cli, tmp_path: Path, http: ClientSession, gateway: str, capsys: pytest.CaptureFixture[str]
) -> None:
    huge, photo = tmp_path / "huge.jpg", tmp_path / "photo.jpg"
    huge.write_bytes(make_jpeg()[:-2] + os.urandom(11_000_000))
    photo.write_bytes(make_jpeg())
    code = await cli.upload(str(huge), str(photo), "--profile", "image", "--json")
    out = capsys.readouterr().out
    assert code == ExitCode.REFUSED  # the first file that did not succeed decides
    results = {Path(r["path"]).name: r for r in json_lines(out)}
    assert results["huge.jpg"]["exit_code"] == ExitCode.REFUSED
    assert results["photo.jpg"]["status"] == "uploaded"
    listed = await list_uploads(http, gateway, cli.token)
    assert [u["filename"] for u in listed] == ["photo.jpg"]


async def test_bad_tokens_and_files_get_their_own_exit_codes(
    cli: Cli, token: Callable[..., str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "photo.jpg"
    path.write_bytes(make_jpeg())
    expired = Cli(cli.gateway, token(ttl=-60), cli.state_dir)
    assert await expired.upload(str(path)) == ExitCode.AUTH
    assert "token has expired" in capsys.readouterr().err
    missing = str(tmp_path / "missing.jpg")
    args = parse("upload", missing, "--gateway", cli.gateway, "--token", cli.token)
    assert args.func(args) == ExitCode.USAGE
    assert f"clearance upload: {missing}: No such file" in capsys.readouterr().err
    args = parse("upload", str(path), "--gateway", cli.gateway, "--token", "")
    assert args.func(args) == ExitCode.USAGE
    assert "no token: pass --token or set CLEARANCE_TOKEN" in capsys.readouterr().err


async def test_a_state_naming_an_aborted_upload_starts_over(
    cli: Cli,
    tmp_path: Path,
    http: ClientSession,
    gateway: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "photo.jpg"
    path.write_bytes(make_jpeg())
    headers = {"Authorization": f"Bearer {cli.token}"}
    body = {"filename": "photo.jpg", "content_type": "image/jpeg", "size": path.stat().st_size}
    async with http.post(f"{gateway}/v1/uploads", json=body, headers=headers) as resp:
        stale = (await resp.json())["id"]
    async with http.delete(f"{gateway}/v1/uploads/{stale}", headers=headers) as resp:
        assert resp.status == 204
    StateStore(cli.state_dir).save(
        UploadState(
            identity=identify(path),
            gateway=gateway,
            upload_id=stale,
            filename="photo.jpg",
            content_type="image/jpeg",
            profile="image",
            part_size=None,
            part_count=None,
        )
    )
    code = await cli.upload(str(path), "--json")
    out, err = capsys.readouterr()
    assert code == ExitCode.OK, out + err
    assert f"starting over (upload {stale}: it is aborted)" in err
    [result] = json_lines(out)
    assert result["id"] != stale
    assert result["status"] == "uploaded"
    assert not list(cli.state_dir.glob("*.json"))


async def run_cli(*argv: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "commands",
        "upload",
        *argv,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def stored_parts(http: ClientSession, gateway: str, token: str, upload_id: str) -> set[int]:
    async with http.get(
        f"{gateway}/v1/uploads/{upload_id}/parts", headers={"Authorization": f"Bearer {token}"}
    ) as resp:
        assert resp.status == 200, await resp.text()
        return {p["part_number"] for p in (await resp.json())["parts"]}


@pytest.mark.timeout(180)
async def test_a_killed_upload_resumes_and_sends_only_the_missing_parts(
    cli: Cli,
    workers: None,
    settings: Settings,
    tmp_path: Path,
    http: ClientSession,
    gateway: str,
) -> None:
    size = 120 * MiB
    path = tmp_path / "clip.mp4"
    with path.open("wb") as f:
        f.write(MP4_HEADER)
        f.write(os.urandom(size - len(MP4_HEADER)))
    digest = await asyncio.to_thread(lambda: hashlib.sha256(path.read_bytes()).hexdigest())
    env = {**os.environ, **settings_environment(settings), "CLEARANCE_TOKEN": cli.token}
    common = ["--gateway", gateway, "--state-dir", str(cli.state_dir), "--progress", "off"]

    # First run: slowed down so it can be killed halfway (15 parts of 8 MiB).
    first = await run_cli(str(path), "--parallel", "2", "--limit-rate", "24M", *common, env=env)
    try:
        deadline = time.monotonic() + 30
        while not list(cli.state_dir.glob("*.json")):
            assert first.returncode is None, "the CLI ended before declaring"
            assert time.monotonic() < deadline, "no state file appeared"
            await asyncio.sleep(0.05)
        [state_file] = cli.state_dir.glob("*.json")
        upload_id = json.loads(state_file.read_text())["upload_id"]
        while len(await stored_parts(http, gateway, cli.token, upload_id)) < 7:
            assert first.returncode is None, "the CLI finished before it could be killed"
            assert time.monotonic() < deadline, "parts are not arriving"
            await asyncio.sleep(0.05)
    finally:
        if first.returncode is None:
            first.send_signal(signal.SIGKILL)
        await first.communicate()
    assert first.returncode == -signal.SIGKILL
    held = await stored_parts(http, gateway, cli.token, upload_id)
    assert 7 <= len(held) < 15

    # Second run: the same command, at full speed, waiting for the pipeline.
    second = await run_cli(str(path), "--wait", "--json", *common, env=env)
    out, err = await asyncio.wait_for(second.communicate(), timeout=150)
    assert second.returncode == 0, err.decode()
    [result] = json_lines(out.decode())
    assert result["id"] == upload_id
    assert result["resumed"] is True
    assert result["status"] == "ready"
    assert result["part_count"] == 15
    # Only the missing parts went over the wire; what storage held was verified and kept.
    assert set(result["reused_parts"]) >= held
    assert set(result["sent_parts"]).isdisjoint(held)
    assert sorted(result["sent_parts"] + result["reused_parts"]) == list(range(1, 16))
    assert result["bytes_sent"] == sum(
        8 * MiB if n < 15 else size - 14 * 8 * MiB for n in result["sent_parts"]
    )
    assert result["bytes_sent"] <= size - len(held) * 8 * MiB
    assert f"resuming upload {upload_id}" in err.decode()
    # The object storage assembled is byte for byte the file.
    async with http.get(
        f"{gateway}/v1/uploads/{upload_id}", headers={"Authorization": f"Bearer {cli.token}"}
    ) as resp:
        record = await resp.json()
    assert record["detected"]["sha256"] == digest
    assert not list(cli.state_dir.glob("*.json"))


class StorageProxy:
    """Forwards TCP to storage, with one fault: it cuts the first connection that
    carries `cut_after` request bytes (a network failure in the middle of a part), or
    holds the first connection for `hold_first` seconds (a URL expires on the way)."""

    def __init__(self, port: int, *, cut_after: int | None = None, hold_first: float = 0.0) -> None:
        self.port, self.cut_after, self.hold_first = port, cut_after, hold_first
        self.cuts = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.connections == 1 and self.hold_first:
            await asyncio.sleep(self.hold_first)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        pipes = [self._pipe(reader, up_writer, writer), self._pipe(up_reader, writer, up_writer)]
        for pipe in pipes:
            task = asyncio.create_task(pipe)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(
        self, reader: asyncio.StreamReader, sink: asyncio.StreamWriter, other: asyncio.StreamWriter
    ) -> None:
        carried = 0
        upstream = sink.get_extra_info("peername")[1] == self.port
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                carried += len(data)
                cut = self.cut_after is not None and carried > self.cut_after
                if upstream and cut and self.cuts == 0:
                    self.cuts += 1
                    break
                sink.write(data)
                await sink.drain()
        sink.transport.abort()
        other.transport.abort()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def upload_through(
    proxy: StorageProxy, settings: Settings, token: str, tmp_path: Path, **changes: Any
) -> int:
    """Upload a 101 MiB file (13 parts) through a gateway that signs URLs for `proxy`
    (the signed host is the one the client dials)."""
    changes["s3_public_endpoint_url"] = await proxy.start()
    server = TestServer(
        create_app(settings.model_copy(update=changes), with_broker=False, with_reconciler=False)
    )
    await server.start_server()
    try:
        path = tmp_path / "clip.mp4"
        path.write_bytes(MP4_HEADER + os.urandom(101 * MiB - len(MP4_HEADER)))
        cli = Cli(str(server.make_url("")).rstrip("/"), token, tmp_path / "state")
        return await cli.upload(str(path), "--json")
    finally:
        await server.close()
        await proxy.close()


async def test_a_part_cut_off_mid_way_is_retried_alone(
    settings: Settings,
    token: Callable[..., str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    proxy = StorageProxy(settings.weed_s3_port, cut_after=3 * MiB)
    code = await upload_through(proxy, settings, token(), tmp_path)
    out, err = capsys.readouterr()
    assert code == ExitCode.OK, out + err
    assert proxy.cuts == 1
    [result] = json_lines(out)
    assert result["status"] == "uploaded"
    assert result["retries"] == 1
    # Every part was stored exactly once; only the cut part's bytes went twice.
    assert result["sent_parts"] == list(range(1, 14))
    assert 101 * MiB < result["bytes_sent"] <= 109 * MiB


async def test_a_part_whose_url_expired_on_the_way_gets_a_fresh_one(
    settings: Settings,
    token: Callable[..., str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # URLs live 5 s and the first connection reaches storage 6 s late: storage says 403.
    # (Long enough that a fresh URL is not outlived on a busy machine.)
    proxy = StorageProxy(settings.weed_s3_port, hold_first=6.0)
    code = await upload_through(proxy, settings, token(), tmp_path, presign_ttl_seconds=5)
    out, err = capsys.readouterr()
    assert code == ExitCode.OK, out + err
    [result] = json_lines(out)
    assert result["status"] == "uploaded"
    assert result["retries"] == 1
    assert result["sent_parts"] == list(range(1, 14))
