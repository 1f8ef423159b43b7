"""Detached processes the stack starts, and the PID records that prove they are ours.

A PID record (`<state_dir>/run/<name>.pid`, JSON) stores the pid, the kernel's
start time of that pid and the argv. A process is "ours" only while all three
still match /proc, so a recycled pid is never signalled.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from devstack.layout import StackError, StackLayout
from devstack.probes import Probe, wait_until

LOG_TAIL_LINES = 25


@dataclass(frozen=True)
class PidRecord:
    """Identity of a process we started (or, for system services, found after starting)."""

    pid: int
    start_ticks: int
    argv: tuple[str, ...]
    extra: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        """Serialise for the PID file."""
        return json.dumps(
            {
                "pid": self.pid,
                "start_ticks": self.start_ticks,
                "argv": list(self.argv),
                "extra": dict(self.extra),
            }
        )

    @classmethod
    def from_json(cls, text: str) -> PidRecord:
        """Parse a PID file; raises ValueError on anything unexpected."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("PID record is not an object")
        return cls(
            pid=int(data["pid"]),
            start_ticks=int(data["start_ticks"]),
            argv=tuple(str(a) for a in data["argv"]),
            extra={str(k): str(v) for k, v in dict(data.get("extra", {})).items()},
        )


def read_record(path: Path) -> PidRecord | None:
    """The PID record at `path`, or None if absent or unreadable (then it is stale)."""
    try:
        return PidRecord.from_json(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        # A torn or foreign file proves nothing about ownership: treat as absent.
        return None


def write_record(path: Path, record: PidRecord) -> None:
    """Atomically write a PID record."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(record.to_json())
    tmp.replace(path)


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from field 3 (state) on, or None if the pid does not exist."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'.
    return raw[raw.rfind(")") + 2 :].split()


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) of a pid, or None if it does not exist."""
    fields = _stat_fields(pid)
    return None if fields is None else (fields[0], int(fields[19]))


def session_members(record: PidRecord) -> list[int]:
    """Live processes of the session the recorded process leads, itself included.

    A service leads its own session (`spawn_detached`), and whatever it starts stays
    in it unless it asks otherwise, also after the leader died. A session id is not
    handed to a new process while the session has members, so once the leader's pid
    belongs to another process, nothing found here could be ours: then none is listed.
    """
    leader = _proc_stat(record.pid)
    if leader is not None and leader[1] != record.start_ticks:
        return []  # the pid was recycled
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is None or fields[0] in ("Z", "X"):
            continue
        if int(fields[3]) == record.pid and int(fields[19]) >= record.start_ticks:
            members.append(int(entry.name))
    return sorted(members)


def _cmdline(pid: int) -> tuple[str, ...]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ()
    return tuple(part.decode(errors="replace") for part in raw.split(b"\0") if part)


def record_for(pid: int, extra: Mapping[str, str] | None = None) -> PidRecord | None:
    """Build a record for a running pid from /proc (None if it is gone)."""
    stat = _proc_stat(pid)
    if stat is None:
        return None
    return PidRecord(pid=pid, start_ticks=stat[1], argv=_cmdline(pid), extra=dict(extra or {}))


def reap(pid: int) -> int | None:
    """Collect the exit status if `pid` is our exited child; None otherwise.

    When `stack up` runs inside a long-lived process (tests), the services are
    its children and would linger as zombies after they exit.
    """
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        # Not our child (started by an earlier CLI run, reparented): init reaps it.
        return None
    if done == 0:
        return None
    return os.waitstatus_to_exitcode(status)


def is_ours(record: PidRecord) -> bool:
    """True while the recorded process is alive and still the one we started."""
    stat = _proc_stat(record.pid)
    if stat is None or stat[0] in ("Z", "X"):
        return False
    if stat[1] != record.start_ticks:
        return False  # the pid was recycled
    cmdline = _cmdline(record.pid)
    # Before exec the launcher (`env -C dir argv...`) still shows; its tail is argv.
    return bool(record.argv) and cmdline[-len(record.argv) :] == record.argv


def listening_pid(port: int) -> int | None:
    """The pid of the process listening on a local TCP port, if /proc lets us see it."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            local, state, inode = parts[1], parts[3], parts[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A = LISTEN
                inodes.add(f"socket:[{inode}]")
    if not inodes:
        return None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) in inodes:
                    return int(entry.name)
        except OSError:
            continue  # vanished, or not ours to inspect
    return None


def log_tail(path: Path, offset: int = 0, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a log written since `offset`, indented for an error message."""
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            text = fh.read().decode(errors="replace")
    except OSError:
        return ""
    tail = text.splitlines()[-lines:]
    if not tail:
        return ""
    return f"\n  last lines of {path}:\n" + "\n".join(f"    {line}" for line in tail)


def child_env(overrides: Mapping[str, str]) -> dict[str, str]:
    """The environment of a started process: ours without CLEARANCE_*, plus `overrides`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLEARANCE_")}
    env.update(overrides)
    return env


def spawn_detached(
    argv: Sequence[str],
    *,
    log_file: Path,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> int:
    """Start `argv` in its own session, stdout+stderr appended to `log_file`.

    The child inherits this environment minus CLEARANCE_* (settings reach a
    child only explicitly, through `env`), plus `env`.

    posix_spawn rather than subprocess.Popen: a Popen object that is dropped
    while its process runs warns (ResourceWarning), and these processes are
    meant to outlive the command that started them.
    """
    launch = list(argv)
    if cwd is not None:
        # posix_spawn cannot chdir; coreutils' env can, then execs argv in place.
        env_bin = shutil.which("env") or "/usr/bin/env"
        launch = [env_bin, "-C", str(cwd), *argv]
    file_actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(log_file), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    return os.posix_spawn(
        launch[0],
        launch,
        child_env(env or {}),
        file_actions=file_actions,
        setsid=True,
    )


def terminate(record: PidRecord, timeout: float) -> str:
    """SIGTERM the recorded process group, SIGKILL it after `timeout`; say what happened.

    Processes left in its session once it is gone (helpers of a leader that was
    killed, or that did not pass SIGTERM on) are SIGKILLed too.
    """
    if not is_ours(record):
        left = _kill_session(record)
        return f"not running; killed {left} process(es) it left" if left else "not running"
    started = time.monotonic()
    _signal_group(record.pid, signal.SIGTERM)
    if wait_until(lambda: not is_ours(record), timeout):
        reap(record.pid)
        outcome = f"stopped in {time.monotonic() - started:.1f} s"
    else:
        _signal_group(record.pid, signal.SIGKILL)
        wait_until(lambda: not is_ours(record), 5.0)
        reap(record.pid)
        outcome = f"killed after {timeout:.0f} s without exiting on SIGTERM"
    left = _kill_session(record)
    return f"{outcome}; killed {left} process(es) it left" if left else outcome


def _kill_session(record: PidRecord) -> int:
    """SIGKILL what is left of the recorded process's session; return how many."""
    members = session_members(record)
    for pid in members:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not session_members(record), 5.0)
    for pid in members:
        reap(pid)
    return len(members)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    # The service leads its own session (setsid), so its group id is its pid and
    # the group holds any helper it forked.
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return
    except PermissionError:
        os.kill(pid, sig)


@dataclass(frozen=True)
class ManagedProcess:
    """One long-running process the stack starts, watches and stops.

    `probe` decides readiness; with None the process counts as ready once it
    has stayed alive for `settle_seconds`. `env` holds the variables set on top
    of the inherited environment. `config_digest` stands for configuration
    files the process reads: when it, argv or env change, `start_process`
    restarts a running instance. `missing_hint` completes the error when
    argv[0] does not exist.
    """

    name: str
    argv: tuple[str, ...]
    probe: Probe | None = None
    cwd: Path | None = None
    env: Mapping[str, str] | None = None
    ready_timeout: float = 30.0
    stop_timeout: float = 20.0
    settle_seconds: float = 1.0
    config_digest: str = ""
    missing_hint: str = ""

    @property
    def fingerprint(self) -> str:
        """Everything that shapes the running process; a change means restart."""
        material = [list(self.argv), sorted((self.env or {}).items()), self.config_digest]
        return hashlib.sha256(json.dumps(material).encode()).hexdigest()

    @property
    def address(self) -> str:
        """Where it listens, or '-' for a worker without a port."""
        return self.probe.address if self.probe is not None else "-"


@dataclass(frozen=True)
class ProcessState:
    """What `status` reports for a managed process."""

    up: bool
    ours: bool
    pid: int | None


def process_state(proc: ManagedProcess, layout: StackLayout) -> ProcessState:
    """Probe a managed process and tell whether the answering one is ours."""
    record = read_record(layout.pid_file(proc.name))
    ours = record is not None and is_ours(record)
    up = proc.probe.check() if proc.probe is not None else ours
    pid = record.pid if ours and record is not None else None
    return ProcessState(up=up, ours=ours, pid=pid)


def start_process(proc: ManagedProcess, layout: StackLayout) -> str:
    """Start `proc` unless it already runs; return once ready. Raises StackError.

    Returns a short note: "started", "restarted ...", "already running" or
    "external" (something we did not start answers the probe: it is used).
    """
    pid_file = layout.pid_file(proc.name)
    log_file = layout.log_file(proc.name)
    previous = read_record(pid_file)
    restarted = ""
    if (
        previous is not None
        and is_ours(previous)
        and previous.extra.get("fingerprint") != proc.fingerprint
    ):
        # Settings changed since it was started: a stale instance would keep
        # old ports, credentials or limits, so replace it.
        stopped = terminate(previous, proc.stop_timeout)
        restarted = f"restarted: its configuration changed (old one {stopped})"
        pid_file.unlink(missing_ok=True)
        previous = None
    if previous is not None and is_ours(previous):
        running = previous
        if proc.probe is None or proc.probe.check():
            return "already running"
        # Ours but not answering yet: an earlier `up` may still be starting it.
        if wait_until(
            proc.probe.check, proc.ready_timeout, still_worth_waiting=lambda: is_ours(running)
        ):
            return "already running"
        size = log_file.stat().st_size if log_file.exists() else 0
        raise StackError(
            f"{proc.name} (pid {running.pid}) runs but does not answer on {proc.address}; "
            "read its log, or run `clearance stack down` and try again"
            + log_tail(log_file, max(0, size - 8192))
        )
    if previous is not None:
        pid_file.unlink(missing_ok=True)  # stale: that process is gone

    if proc.probe is not None and proc.probe.check():
        return "external"

    executable = Path(proc.argv[0])
    if not (executable.is_file() and os.access(executable, os.X_OK)):
        hint = f": {proc.missing_hint}" if proc.missing_hint else ""
        raise StackError(f"{proc.name}: {executable} not found{hint}")

    if proc.cwd is not None:
        proc.cwd.mkdir(parents=True, exist_ok=True)
    offset = log_file.stat().st_size if log_file.exists() else 0
    pid = spawn_detached(proc.argv, log_file=log_file, cwd=proc.cwd, env=proc.env)
    found = record_for(pid)
    if found is None:
        raise StackError(
            f"{proc.name} exited at once (code {reap(pid)})" + log_tail(log_file, offset)
        )
    started = PidRecord(
        pid=pid,
        start_ticks=found.start_ticks,
        argv=proc.argv,
        extra={"fingerprint": proc.fingerprint},
    )
    write_record(pid_file, started)

    exit_code: list[int] = []

    def alive() -> bool:
        # Our unreaped child cannot have its pid recycled, so no /proc identity
        # check is needed (its cmdline is not even argv until exec completes).
        if exit_code:
            return False  # already reaped: waitpid would no longer know it
        code = reap(pid)
        if code is None:
            return True
        exit_code.append(code)
        return False

    if proc.probe is None:
        # A worker without a port: ready if it survives a short settle period.
        time.sleep(proc.settle_seconds)
        ready = alive()
    else:
        ready = wait_until(proc.probe.check, proc.ready_timeout, still_worth_waiting=alive)
    if ready:
        return restarted or "started"
    if alive():
        terminate(started, proc.stop_timeout)
        pid_file.unlink(missing_ok=True)
        raise StackError(
            f"{proc.name} did not answer on {proc.address} within {proc.ready_timeout:.0f} s "
            "and was stopped" + log_tail(log_file, offset)
        )
    pid_file.unlink(missing_ok=True)
    code = exit_code[-1] if exit_code else None
    how = f"with code {code}" if code is not None else "during start-up"
    raise StackError(f"{proc.name} exited {how}" + log_tail(log_file, offset))


def stop_process(proc: ManagedProcess, layout: StackLayout) -> str:
    """Stop `proc` if we started it; never touch a process that is not ours."""
    pid_file = layout.pid_file(proc.name)
    record = read_record(pid_file)
    if record is None:
        return "not started by clearance"
    outcome = terminate(record, proc.stop_timeout)
    if not is_ours(record):
        pid_file.unlink(missing_ok=True)
    return outcome
