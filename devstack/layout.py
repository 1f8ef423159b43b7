"""Where the local stack keeps its data, logs and PID files (all under `state_dir`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shared.settings import Settings


class StackError(Exception):
    """A component could not be brought up or down; the message says what to do."""


@dataclass(frozen=True)
class StackLayout:
    """Absolute paths below `settings.state_dir`, resolved once per command."""

    root: Path

    @classmethod
    def from_settings(cls, settings: Settings) -> StackLayout:
        """Resolve the state directory against the current working directory."""
        return cls(root=settings.state_dir.resolve())

    @property
    def run_dir(self) -> Path:
        """PID records of the processes the stack started."""
        return self.root / "run"

    @property
    def log_dir(self) -> Path:
        """stdout/stderr of every process the stack started."""
        return self.root / "logs"

    def pid_file(self, name: str) -> Path:
        """The PID record of one component."""
        return self.run_dir / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        """The log file of one component."""
        return self.log_dir / f"{name}.log"

    def component_dir(self, name: str) -> Path:
        """A component's private working directory (data, config)."""
        return self.root / name

    def ensure(self) -> None:
        """Create the directories every command needs."""
        for path in (self.root, self.run_dir, self.log_dir):
            path.mkdir(parents=True, exist_ok=True)
