"""Progress of the files being sent: bars on a terminal, periodic lines elsewhere.

Transfers report through tiny per-chunk callbacks (`FileProgress.advance(n)`, a
negative `n` takes back the bytes of a failed try, like s3transfer's callbacks);
the board samples those counters on its own clock, so a fast transfer never pays
for drawing. No dependency: a few ANSI escapes redraw the bars in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

SPEED_WINDOW = 5.0  # seconds of history behind the displayed speed
# Files in these stages get a bar; the others are waiting or done.
ACTIVE_STAGES = frozenset({"verifying", "sending"})


def human_bytes(n: float) -> str:
    """1536 → '1.5 KiB'; binary units, one decimal from KiB up."""
    if abs(n) < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


def human_duration(seconds: float | None) -> str:
    """ETA text: '7s', '3m05s', '1h02m', or '--' when unknown."""
    if seconds is None or seconds != seconds or seconds < 0 or seconds > 99 * 3600:
        return "--"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


@dataclass(slots=True)
class FileProgress:
    """Byte counters for one file; `advance` is the per-chunk callback."""

    name: str
    total: int
    sent: int = 0  # bytes sent by this run
    skipped: int = 0  # bytes storage already held (resume)
    stage: str = "waiting"
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    _samples: deque[tuple[float, int]] = field(default_factory=deque)

    @property
    def done(self) -> int:
        return min(self.total, self.sent + self.skipped)

    def advance(self, n: int) -> None:
        """Bytes handed to the network (negative: a failed try's bytes, taken back)."""
        self.sent += n

    def skip(self, n: int) -> None:
        self.skipped += n

    def finish(self, stage: str) -> None:
        self.stage = stage
        if self.finished is None:
            self.finished = time.monotonic()

    def sample(self, now: float) -> None:
        self._samples.append((now, self.sent))
        while len(self._samples) > 2 and now - self._samples[0][0] > SPEED_WINDOW:
            self._samples.popleft()

    def speed(self, now: float) -> float:
        """Bytes per second over the last few seconds (average over the run once done)."""
        if self.finished is not None:
            elapsed = self.finished - self.started
            return self.sent / elapsed if elapsed > 0 else 0.0
        if len(self._samples) < 2:
            elapsed = now - self.started
            return self.sent / elapsed if elapsed > 0.2 else 0.0
        (t0, b0), (t1, b1) = self._samples[0], self._samples[-1]
        return (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0

    def eta(self, now: float) -> float | None:
        speed = self.speed(now)
        remaining = self.total - self.done
        if remaining <= 0:
            return 0.0
        return remaining / speed if speed > 0 else None


def _line(name: str, done: int, total: int, speed: float, eta: float | None, width: int) -> str:
    pct = 100 * done // total if total else 100
    stats = (
        f" {pct:3d}% {human_bytes(done):>10}/{human_bytes(total):<10}"
        f" {human_bytes(speed):>10}/s ETA {human_duration(eta):>6}"
    )
    name_width = min(28, max(8, width // 4))
    label = name if len(name) <= name_width else "…" + name[-(name_width - 1) :]
    bar_width = max(10, width - name_width - len(stats) - 4)
    filled = bar_width * done // total if total else bar_width
    bar = "=" * filled + (">" if filled < bar_width else "") + " " * (bar_width - filled - 1)
    return f"{label:<{name_width}} [{bar[:bar_width]}]{stats}"


class ProgressBoard:
    """Draws every file's progress: `bars` (a TTY), `lines` (logs, pipes) or `off`."""

    def __init__(
        self,
        stream: TextIO,
        mode: str,
        *,
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if mode not in {"bars", "lines", "off"}:
            raise ValueError(f"unknown progress mode {mode!r}")
        self.stream = stream
        self.mode = mode
        self.interval = interval if interval is not None else (0.1 if mode == "bars" else 2.0)
        self.files: list[FileProgress] = []
        self._clock = clock
        self._drawn = 0  # lines of bars currently on screen
        self._task: asyncio.Task[None] | None = None
        self._reported: dict[int, int] = {}

    def add(self, name: str, total: int) -> FileProgress:
        progress = FileProgress(name, total)
        self.files.append(progress)
        return progress

    def note(self, message: str, *, stream: TextIO | None = None) -> None:
        """A line of its own (above the bars on a terminal), on `stream` or the board's."""
        self._clear()
        print(message, file=stream or self.stream, flush=True)
        self._draw()

    async def __aenter__(self) -> ProgressBoard:
        if self.mode != "off":
            self._task = asyncio.create_task(self._run(), name="progress")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.mode == "bars":
            self._draw()
            self._drawn = 0  # leave the final bars on screen

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            now = self._clock()
            for f in self.files:
                f.sample(now)
            if self.mode == "bars":
                self._clear()
                self._draw()
            else:
                self._print_lines(now)

    def lines(self, now: float, width: int) -> list[str]:
        """The bars to draw: every file still sending, then a total for several files."""
        out = [
            _line(f.name, f.done, f.total, f.speed(now), f.eta(now), width)
            for f in self.files
            if f.stage in ACTIVE_STAGES
        ]
        if len(self.files) > 1:
            total = sum(f.total for f in self.files)
            done = sum(f.done for f in self.files)
            speed = sum(f.speed(now) for f in self.files if f.finished is None)
            eta = (total - done) / speed if speed > 0 else None
            out.append(_line(f"total ({len(self.files)} files)", done, total, speed, eta, width))
        return out

    def _print_lines(self, now: float) -> None:
        for i, f in enumerate(self.files):
            if f.stage not in ACTIVE_STAGES or self._reported.get(i) == f.done:
                continue
            self._reported[i] = f.done
            pct = 100 * f.done // f.total if f.total else 100
            print(
                f"{f.name}: {pct}% {human_bytes(f.done)} of {human_bytes(f.total)}, "
                f"{human_bytes(f.speed(now))}/s, ETA {human_duration(f.eta(now))}",
                file=self.stream,
                flush=True,
            )

    def _clear(self) -> None:
        if self.mode == "bars" and self._drawn:
            self.stream.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0

    def _draw(self) -> None:
        if self.mode != "bars":
            return
        width = shutil.get_terminal_size((100, 24)).columns - 1
        lines = self.lines(self._clock(), width)
        if lines:
            self.stream.write("\n".join(lines) + "\n")
        self.stream.flush()
        self._drawn = len(lines)
