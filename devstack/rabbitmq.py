"""RabbitMQ: use the running broker, start the local node if it is down, check the login."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from devstack.component import ComponentState, Owner
from devstack.layout import StackError, StackLayout
from devstack.probes import AmqpProbe, is_loopback, wait_until
from devstack.processes import is_ours, listening_pid, read_record, record_for, write_record
from shared.settings import Settings

NAME = "rabbitmq"
# A cold broker takes ~10 s to open its listener; slow machines need more.
START_TIMEOUT_S = 90.0
INSTALL_HINT = "apt-get install -y rabbitmq-server"
# Where a node started with `rabbitmq-server -detached` and no config listens.
LOCAL_NODE_PORT = 5672


def _tool(name: str) -> str | None:
    # The broker's scripts live in /usr/sbin, which a non-root PATH may lack.
    found = shutil.which(name)
    if found is None and Path("/usr/sbin", name).exists():
        found = str(Path("/usr/sbin", name))
    return found


@dataclass(frozen=True)
class RabbitComponent:
    """The broker named in `settings.amqp_url`."""

    settings: Settings
    layout: StackLayout

    @property
    def name(self) -> str:
        return NAME

    @property
    def probe(self) -> AmqpProbe:
        parts = urlsplit(self.settings.amqp_url)
        return AmqpProbe(parts.hostname or "127.0.0.1", parts.port or 5672)

    def up(self) -> str:
        note = "already running" if self._ours() else "external"
        if not self.probe.check():
            note = self._start()
        asyncio.run(_check_login(self.settings.amqp_url, self.probe.address))
        return note

    def _start(self) -> str:
        probe = self.probe
        if not is_loopback(probe.host):
            raise StackError(
                f"RabbitMQ at {probe.address} does not answer and is not on this machine: "
                "start it there or fix CLEARANCE_AMQP_URL"
            )
        if probe.port != LOCAL_NODE_PORT:
            # A node started here listens on 5672, so it could never answer there; and the
            # usual cause is a proxy or tunnel that is down, not a stopped broker.
            raise StackError(
                f"RabbitMQ does not answer on {probe.address}; `stack up` starts a local "
                f"node only for port {LOCAL_NODE_PORT}: start what should listen there, "
                "or fix CLEARANCE_AMQP_URL"
            )
        server = _tool("rabbitmq-server")
        if server is None:
            raise StackError(
                f"RabbitMQ does not answer on {probe.address} and rabbitmq-server is missing: "
                f"{INSTALL_HINT}"
            )
        done = subprocess.run(
            [server, "-detached"], capture_output=True, text=True, timeout=60, check=False
        )
        if done.returncode != 0:
            raise StackError(
                f"rabbitmq-server -detached failed ({done.returncode}): "
                f"{(done.stderr or done.stdout).strip()}"
            )
        if not wait_until(probe.check, START_TIMEOUT_S):
            raise StackError(
                f"rabbitmq-server started but does not answer AMQP on {probe.address} within "
                f"{START_TIMEOUT_S:.0f} s; read /var/log/rabbitmq/"
            )
        pid = listening_pid(probe.port)
        found = record_for(pid) if pid is not None else None
        if found is None:
            return "started, pid unknown so `stack down` leaves it: rabbitmqctl shutdown"
        write_record(self.layout.pid_file(NAME), found)
        return "started"

    def _ours(self) -> bool:
        record = read_record(self.layout.pid_file(NAME))
        return record is not None and is_ours(record)

    def down(self) -> str:
        pid_file = self.layout.pid_file(NAME)
        record = read_record(pid_file)
        if record is None or not is_ours(record):
            pid_file.unlink(missing_ok=True)
            return (
                "left running (not started by clearance)" if self.probe.check() else "not running"
            )
        started = time.monotonic()
        ctl = _tool("rabbitmqctl") or "rabbitmqctl"
        # `shutdown` returns once the node's OS process has exited.
        done = subprocess.run(
            [ctl, "shutdown"], capture_output=True, text=True, timeout=120, check=False
        )
        if done.returncode != 0:
            raise StackError(f"rabbitmqctl shutdown failed: {(done.stderr or done.stdout).strip()}")
        pid_file.unlink(missing_ok=True)
        return f"stopped in {time.monotonic() - started:.1f} s"

    def state(self) -> ComponentState:
        probe = self.probe
        up = probe.check()
        record = read_record(self.layout.pid_file(NAME))
        ours = record is not None and is_ours(record)
        owner: Owner = ("us" if ours else "external") if up else "-"
        pid = record.pid if ours and record is not None else None
        if pid is None and up:
            pid = listening_pid(probe.port)
        return ComponentState(NAME, up, owner, probe.address, pid)


async def _check_login(url: str, address: str) -> None:
    """Open and close one AMQP connection so bad credentials fail here, not in a service."""
    # Imported here so `status` and `down` start fast.
    import aio_pika
    from aio_pika.exceptions import AMQPConnectionError, ProbableAuthenticationError

    deadline = time.monotonic() + 30.0
    while True:
        try:
            connection = await aio_pika.connect(url, timeout=10)
        except ProbableAuthenticationError as exc:
            raise StackError(
                f"RabbitMQ on {address} refuses the login in CLEARANCE_AMQP_URL ({exc}); "
                "fix the URL or add the user: rabbitmqctl add_user ..."
            ) from exc
        except (AMQPConnectionError, OSError, TimeoutError) as exc:
            # The listener can open a moment before the default vhost is ready.
            if time.monotonic() > deadline:
                raise StackError(
                    f"RabbitMQ on {address} does not accept AMQP logins: {exc}"
                ) from exc
            await asyncio.sleep(0.5)
            continue
        await connection.close()
        return
