"""The compose deployment, brought up from the committed docker-compose.yml.

These tests need a Docker engine and run inside its network namespace
(`deploy/engine.sh test`, which `make test` calls where it can); elsewhere they
are skipped. They talk to the deployment only over its published ports.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = "docker-compose.yml"
# What the committed file publishes (on 127.0.0.1 of the engine's namespace).
EDGE = "http://127.0.0.1:8080"
STORAGE = "http://127.0.0.1:8333"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    skip = pytest.mark.skip(
        reason="needs the deploy engine: run `deploy/engine.sh test` as root (make test does)"
    )
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.deploy)
            if not os.environ.get("CLEARANCE_ENGINE"):
                item.add_marker(skip)


def report(line: str) -> None:
    """A figure worth keeping: printed, and collected by the engine script's summary."""
    print(line, file=sys.stderr)
    path = os.environ.get("CLEARANCE_ENGINE_REPORT")
    if path:
        with open(path, "a") as out:
            out.write(line + "\n")


@dataclass
class Deployment:
    compose: object  # testcontainers.compose.DockerCompose
    docker: str

    def command(self, *args: str) -> list[str]:
        """`docker compose -f docker-compose.yml ARGS` as the compose object runs it."""
        return [*self.compose.compose_command_property, *args]  # type: ignore[attr-defined]

    def run(self, *args: str, timeout: float = 300) -> str:
        done = subprocess.run(
            self.command(*args), cwd=ROOT, capture_output=True, text=True, timeout=timeout
        )
        assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
        return done.stdout

    def scale(self, **replicas: int) -> None:
        """`up --detach --wait --scale SERVICE=N ...`: returns when all are healthy."""
        scale = [arg for name, n in replicas.items() for arg in ("--scale", f"{name}={n}")]
        self.run("up", "--detach", "--wait", *scale)

    def kill(self, *containers: str) -> None:
        """`docker kill`: SIGKILL, no shutdown of any kind."""
        done = subprocess.run([self.docker, "kill", *containers], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr

    def containers(self, service: str) -> list[str]:
        return self.run("ps", "--quiet", service).split()

    def logs(self, *services: str, tail: int = 60) -> str:
        return subprocess.run(
            self.command("logs", "--no-color", f"--tail={tail}", *services),
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout

    def token(self, subject: str) -> str:
        """`docker compose exec gateway clearance token SUBJECT`, as the README says."""
        return self.run("exec", "-T", "gateway", "clearance", "token", subject).strip()


@pytest.fixture(scope="session")
def deployment() -> Iterator[Deployment]:
    """`docker compose up --wait` on the committed file; `down --volumes` at the end."""
    from testcontainers.compose import DockerCompose

    docker = os.environ.get("CLEARANCE_DOCKER", "docker")
    compose = DockerCompose(
        context=ROOT, compose_file_name=COMPOSE_FILE, wait=True, docker_command_path=docker
    )
    deployment = Deployment(compose, docker)
    started = time.monotonic()
    try:
        compose.start()
    except subprocess.CalledProcessError as exc:
        print(exc.stderr.decode(errors="replace")[-4000:], file=sys.stderr)
        print(deployment.logs(tail=40)[-12000:], file=sys.stderr)
        compose.stop(down=True)
        raise
    report(f"compose up --wait: {time.monotonic() - started:.1f}s to all healthy")
    try:
        yield deployment
    finally:
        if os.environ.get("CLEARANCE_DEPLOY_KEEP"):
            report("CLEARANCE_DEPLOY_KEEP set: the deployment is left running")
        else:
            stopping = time.monotonic()
            compose.stop(down=True)
            report(f"compose down --volumes: {time.monotonic() - stopping:.1f}s")


@pytest.fixture(scope="session")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # Hundreds of concurrent uploads, each with a status stream open.
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session
