"""`clearance stack up|down|status`: the local stack of real components.

Infrastructure (PostgreSQL, RabbitMQ, SeaweedFS, clamd) comes up in parallel,
then the app services. Everything started here is detached (own session,
output in `<state_dir>/logs/`), recorded in `<state_dir>/run/`, and only what
was started here is ever stopped.
"""

from __future__ import annotations

import fcntl
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from typing import TextIO

from devstack.apps import app_services
from devstack.clamd import ClamdComponent
from devstack.component import Component, ComponentState, ProcessComponent
from devstack.layout import StackError, StackLayout
from devstack.postgres import PostgresComponent
from devstack.processes import ManagedProcess
from devstack.rabbitmq import RabbitComponent
from devstack.seaweedfs import SeaweedComponent
from shared.settings import Settings


def infrastructure(settings: Settings, layout: StackLayout) -> list[Component]:
    """The real components every Clearance process depends on."""
    return [
        PostgresComponent(settings, layout),
        RabbitComponent(settings, layout),
        SeaweedComponent(settings, layout),
        ClamdComponent(settings, layout),
    ]


def _apps(
    settings: Settings, layout: StackLayout, services: Sequence[ManagedProcess] | None
) -> list[Component]:
    chosen = app_services(settings) if services is None else services
    return [ProcessComponent(process, layout) for process in chosen]


def _run_parallel(components: Sequence[Component], action: str, out: TextIO, err: TextIO) -> bool:
    """Run `up` or `down` on every component at once; report each as it finishes."""
    if not components:
        return True
    width = max(len(c.name) for c in components)
    ok = True
    with ThreadPoolExecutor(max_workers=len(components)) as pool:
        started = time.monotonic()
        futures = {pool.submit(getattr(c, action)): c for c in components}
        for future in as_completed(futures):
            component = futures[future]
            elapsed = time.monotonic() - started
            try:
                note = future.result()
            except StackError as exc:
                ok = False
                print(f"  {component.name:<{width}}  FAILED  {exc}", file=err, flush=True)
                continue
            except (OSError, subprocess.SubprocessError) as exc:
                # Environmental trouble (permissions, a hung tool): report, keep going.
                ok = False
                print(f"  {component.name:<{width}}  FAILED  {exc!r}", file=err, flush=True)
                continue
            print(
                f"  {component.name:<{width}}  ok  {elapsed:5.1f} s  {note}", file=out, flush=True
            )
    return ok


@contextmanager
def _exclusive(layout: StackLayout, err: TextIO) -> Iterator[None]:
    """One `stack up`/`down` at a time per state dir: two would race to start weed."""
    with (layout.run_dir / "stack.lock").open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("waiting for another `stack` command to finish...", file=err, flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def stack_up(
    settings: Settings,
    *,
    with_services: bool = True,
    services: Sequence[ManagedProcess] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Start whatever is missing and return once everything answers (exit code).

    Idempotent: components that already answer are left alone. With
    `with_services` false only the infrastructure is started (tests run the
    apps in-process). `services` replaces the configured app list.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    layout = StackLayout.from_settings(settings)
    layout.ensure()
    began = time.monotonic()
    print(f"stack up ({layout.root})", file=out, flush=True)
    with _exclusive(layout, err):
        ok = _run_parallel(infrastructure(settings, layout), "up", out, err)
        apps = _apps(settings, layout, services) if with_services else []
        if apps and not ok:
            print("  app services not started: the infrastructure is not up", file=err)
        elif apps:
            ok = _run_parallel(apps, "up", out, err) and ok
    verdict = "ready" if ok else "NOT ready"
    print(f"stack {verdict} in {time.monotonic() - began:.1f} s", file=out if ok else err)
    return 0 if ok else 1


def stack_down(
    settings: Settings,
    *,
    services: Sequence[ManagedProcess] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Stop what `stack up` started (apps first), leaving everything else running."""
    out = out or sys.stdout
    err = err or sys.stderr
    layout = StackLayout.from_settings(settings)
    layout.ensure()
    began = time.monotonic()
    print("stack down", file=out, flush=True)
    with _exclusive(layout, err):
        ok = _run_parallel(_apps(settings, layout, services), "down", out, err)
        ok = _run_parallel(infrastructure(settings, layout), "down", out, err) and ok
    print(f"stack down in {time.monotonic() - began:.1f} s", file=out)
    return 0 if ok else 1


def stack_states(
    settings: Settings,
    *,
    with_services: bool = True,
    services: Sequence[ManagedProcess] | None = None,
) -> list[ComponentState]:
    """Probe every component (in parallel) without changing anything."""
    layout = StackLayout.from_settings(settings)
    components = infrastructure(settings, layout)
    if with_services:
        components += _apps(settings, layout, services)
    with ThreadPoolExecutor(max_workers=len(components)) as pool:
        return list(pool.map(lambda c: c.state(), components))


def stack_status(
    settings: Settings,
    *,
    with_services: bool = True,
    services: Sequence[ManagedProcess] | None = None,
    out: TextIO | None = None,
) -> int:
    """Print component, state, who started it, address and pid; 0 when all are up."""
    out = out or sys.stdout
    states = stack_states(settings, with_services=with_services, services=services)
    rows = [("COMPONENT", "STATE", "BY", "ADDRESS", "PID")]
    rows += [
        (s.name, "up" if s.up else "down", s.owner, s.address, str(s.pid or "-")) for s in states
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip(), file=out
        )
    return 0 if all(s.up for s in states) else 1
