"""clamd in the foreground, as a detached child, configured by the scanner's own clamd.conf."""

from __future__ import annotations

import hashlib
import importlib
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from devstack.component import ComponentState, ProcessComponent
from devstack.layout import StackError, StackLayout
from devstack.probes import ClamdProbe
from devstack.processes import ManagedProcess, start_process
from shared.settings import Settings

NAME = "clamd"
INSTALL_HINT = "apt-get install -y clamav-daemon clamav"
CONF_MODULE = "services.scanner.clamd_conf"
# Loading the shipped test signatures takes well under a second; official
# databases (freshclam) take tens of seconds and ~1 GiB of memory.
READY_TIMEOUT_S = 120.0

Renderer = Callable[[Settings, Path], str]

_FOREGROUND = re.compile(r"^\s*Foreground\s+(yes|true|1)\s*$", re.IGNORECASE | re.MULTILINE)


def clamd_binary() -> Path | None:
    """Debian's clamd (in /usr/sbin, which a non-root PATH may lack)."""
    found = shutil.which("clamd")
    if found:
        return Path(found)
    fallback = Path("/usr/sbin/clamd")
    return fallback if fallback.is_file() else None


def scanner_renderer() -> Renderer:
    """`render_clamd_conf` from the scanner, which owns clamd's limits and signatures."""
    try:
        module = importlib.import_module(CONF_MODULE)
    except ModuleNotFoundError as exc:
        raise StackError(f"{CONF_MODULE} is missing, so clamd has no config") from exc
    return cast(Renderer, module.render_clamd_conf)


@dataclass(frozen=True)
class ClamdComponent:
    """clamd listening on `settings.clamd_host:clamd_port`."""

    settings: Settings
    layout: StackLayout
    render: Renderer | None = None

    @property
    def name(self) -> str:
        return NAME

    @property
    def workdir(self) -> Path:
        """Config, PID file, clamd's own log and its temporary files."""
        return self.layout.component_dir(NAME)

    @property
    def config_file(self) -> Path:
        """Where the rendered clamd.conf is written."""
        return self.workdir / "clamd.conf"

    def process(self, config_text: str = "") -> ManagedProcess:
        """The clamd command line (`config_text`: the clamd.conf it is to run with)."""
        binary = clamd_binary()
        return ManagedProcess(
            name=NAME,
            argv=(str(binary or "/usr/sbin/clamd"), f"--config-file={self.config_file}"),
            probe=ClamdProbe(self.settings.clamd_host, self.settings.clamd_port),
            ready_timeout=READY_TIMEOUT_S,
            stop_timeout=20.0,
            config_digest=hashlib.sha256(config_text.encode()).hexdigest() if config_text else "",
            missing_hint=INSTALL_HINT,
        )

    def _write_config(self) -> str:
        render = self.render or scanner_renderer()
        self.workdir.mkdir(parents=True, exist_ok=True)
        text = render(self.settings, self.workdir)
        if not _FOREGROUND.search(text):
            # A daemonising clamd would leave us holding the pid of its exited parent.
            raise StackError(f"{CONF_MODULE}.render_clamd_conf must set `Foreground yes`")
        try:
            unchanged = self.config_file.read_text() == text
        except FileNotFoundError:
            unchanged = False
        if not unchanged:
            tmp = self.config_file.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(self.config_file)
        return text

    def up(self) -> str:
        if clamd_binary() is None:
            raise StackError(f"clamd not found: {INSTALL_HINT}")
        return start_process(self.process(self._write_config()), self.layout)

    def down(self) -> str:
        return ProcessComponent(self.process(), self.layout).down()

    def state(self) -> ComponentState:
        return ProcessComponent(self.process(), self.layout).state()
