"""What every part of the local stack offers to `stack up|down|status`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from devstack.layout import StackLayout
from devstack.processes import (
    ManagedProcess,
    listening_pid,
    process_state,
    start_process,
    stop_process,
)

Owner = Literal["us", "external", "-"]


@dataclass(frozen=True)
class ComponentState:
    """One row of `clearance stack status`."""

    name: str
    up: bool
    owner: Owner
    address: str
    pid: int | None


class Component(Protocol):
    """A part of the stack: infrastructure (PostgreSQL, ...) or an app service."""

    @property
    def name(self) -> str:
        """Short name used in output, PID and log file names."""
        ...

    def up(self) -> str:
        """Bring it up if needed and return a short note; raise StackError with a fix."""
        ...

    def down(self) -> str:
        """Stop it if (and only if) we started it; return what happened."""
        ...

    def state(self) -> ComponentState:
        """Probe it without changing anything."""
        ...


def port_of(address: str) -> int | None:
    """The port of a `host:port` address or URL, if it has one."""
    tail = address.rsplit(":", 1)[-1].split("/", 1)[0]
    return int(tail) if tail.isdigit() else None


@dataclass(frozen=True)
class ProcessComponent:
    """A component that is exactly one process the stack starts (SeaweedFS, an app)."""

    process: ManagedProcess
    layout: StackLayout

    @property
    def name(self) -> str:
        return self.process.name

    def up(self) -> str:
        return start_process(self.process, self.layout)

    def down(self) -> str:
        return stop_process(self.process, self.layout)

    def state(self) -> ComponentState:
        found = process_state(self.process, self.layout)
        pid = found.pid
        owner: Owner = "us" if found.ours else ("external" if found.up else "-")
        if pid is None and found.up:
            port = port_of(self.process.address)
            pid = listening_pid(port) if port is not None else None
        return ComponentState(self.name, found.up, owner, self.process.address, pid)
