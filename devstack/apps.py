"""Clearance's own services, started by `stack up` after the infrastructure answers.

To add one, append a line to `app_services`, e.g.::

    app_process(settings, "gateway", probe=HttpProbe(f"{settings.public_url}/healthz")),
    app_process(settings, "scanner"),  # no port: ready once it stays alive

Each runs as `clearance <subcommand>` with the very settings `stack up` was
given (passed as CLEARANCE_* variables), logs to `<state_dir>/logs/<name>.log`
and is stopped by `stack down`.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from devstack.probes import HttpProbe, Probe
from devstack.processes import ManagedProcess
from shared.settings import NONE_VALUE, Settings

ENTRY_POINT_HINT = "install the project so its `clearance` script exists: pip install -e ."


def app_services(settings: Settings) -> list[ManagedProcess]:
    """The app services `stack up` starts when `with_services` is true, in start order."""
    relay = f"http://{settings.relay_host}:{settings.relay_port}"
    gateway = f"http://{settings.gateway_host}:{settings.gateway_port}"
    return [
        app_process(settings, "relay", probe=HttpProbe(f"{relay}/healthz")),
        app_process(settings, "scanner"),
        app_process(settings, "processor"),
        app_process(settings, "gateway", probe=HttpProbe(f"{gateway}/healthz")),
    ]


def clearance_script() -> Path:
    """The `clearance` console script of this environment (may not exist yet)."""
    beside = Path(sys.executable).parent / "clearance"
    if beside.is_file():
        return beside
    found = shutil.which("clearance")
    return Path(found) if found else beside


def _sorted_set(value: object) -> list[Any]:
    """JSON for a set: sorted, so equal settings give equal text whatever the hash seed."""
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def settings_environment(settings: Settings) -> dict[str, str]:
    """`settings` as CLEARANCE_* variables, so a child parses exactly the same values.

    The same settings always give the same variables (`stack up` compares them to tell
    whether a running service must restart): sets, e.g. a profile's content types,
    are written sorted, never in their hash-seed-dependent iteration order.
    """
    env: dict[str, str] = {}
    dumped = settings.model_dump(mode="json")
    native = settings.model_dump(mode="python")
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        key = f"CLEARANCE_{name.upper()}"
        if value is None:
            env[key] = NONE_VALUE
            continue
        if isinstance(value, SecretStr):
            env[key] = value.get_secret_value()
        elif name == "state_dir":
            env[key] = str(Path(value).resolve())
        elif name == "webhooks":  # their secrets are nested, so dumped as "**********"
            env[key] = json.dumps(
                [w.model_dump(mode="json") | {"secret": w.secret.get_secret_value()} for w in value]
            )
        elif isinstance(dumped[name], str):
            env[key] = dumped[name]
        else:
            # Numbers, booleans, tuples and mappings: pydantic-settings reads JSON.
            env[key] = json.dumps(native[name], default=_sorted_set)
    return env


def app_process(
    settings: Settings,
    subcommand: str,
    *,
    probe: Probe | None = None,
    name: str | None = None,
    ready_timeout: float = 30.0,
) -> ManagedProcess:
    """A `clearance <subcommand>` process with the stack's settings in its environment."""
    return ManagedProcess(
        name=name or subcommand,
        argv=(str(clearance_script()), subcommand),
        probe=probe,
        env=settings_environment(settings),
        ready_timeout=ready_timeout,
        missing_hint=ENTRY_POINT_HINT,
    )
