"""Catch-up from the filer metadata log: publish what SeaweedFS's webhook never delivered.

The webhook is fire-and-forget: one attempt, nothing kept when the relay is
down, queued events lost when weed stops (team notes, seaweedfs §3). The
filer's metadata log keeps every change on disk, so the relay periodically
reads it with `weed filer.meta.tail` from where it last got to and publishes
every upload object it finds. Duplicates are harmless: event ids are
deterministic and consumers drop repeats.

Why bounded runs rather than one long-lived follower: each run ends by itself
(`-untilTimeAgo`), has a timeout and a clear result, and a run that fails is
simply retried from the saved cursor. A follower that hangs prints nothing,
which looks exactly like "no uploads", so it would need its own liveness
checks and restarts. Measured on the local stack: one run takes 0.2-0.4 s
wall and ~0.2 s CPU, so every 10 s it costs about 2 % of one core; events are
in the log as soon as the S3 call returns.

Facts measured with weed 4.48 that this code relies on:
- `-untilTimeAgo=0s` means "no end" (follows forever); `1ns` ends at now.
- An unreachable filer prints its error on **stdout** and still exits 0, so a
  run counts as complete only when every line of its output was a log event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from yarl import URL

from services.relay.formats import (
    BUCKETS_ROOT,
    Ignored,
    MalformedNotification,
    MetaLogDecoder,
    Scope,
    parse_meta_log_event,
)
from services.relay.forwarding import Forwarder
from services.relay.metrics import RelayMetrics
from shared.amqp.publisher import PublishFailed
from shared.seaweedfs import weed_binary
from shared.settings import Settings

log = logging.getLogger(__name__)

SECOND_NS = 1_000_000_000
# weed puts each gRPC port at its HTTP port + 10000 (the stack starts it so).
GRPC_OFFSET = 10_000
# Read from this long before the cursor: weed computes its start from its own
# clock after it has started, a little later than ours.
READ_MARGIN_NS = 5 * SECOND_NS
# A complete run moves the cursor to this long before the run started, never
# to its very end: an event stamped just before the end may still be on its
# way into the log (or stamped by a clock slightly behind ours).
SETTLE_NS = 5 * SECOND_NS
RUN_TIMEOUT_S = 120.0
PUBLISH_TIMEOUT_S = 10.0
# One output line; pretty-printed lines are short, inline file content is not.
LINE_LIMIT = 16 * 1024 * 1024
STDERR_LINES = 20
CURSOR_FILE = "metalog-cursor.json"


def filer_address(settings: Settings) -> str:
    """`host:httpPort.grpcPort`, the form weed needs when the gRPC port is not the default."""
    host = URL(settings.s3_endpoint_url).host or "127.0.0.1"
    port = settings.weed_filer_port
    return f"{host}:{port}.{port + GRPC_OFFSET}"


def meta_tail_command(weed: Path, settings: Settings, *, since_ns: int, now_ns: int) -> list[str]:
    """The `weed filer.meta.tail` command that prints upload-prefix events from `since_ns`."""
    scope = Scope.from_settings(settings)
    ago_ns = max(now_ns - since_ns, 0) + READ_MARGIN_NS
    return [
        str(weed),
        "filer.meta.tail",
        f"-filer={filer_address(settings)}",
        f"-pathPrefix={BUCKETS_ROOT}{scope.bucket}/{scope.upload_prefix}/",
        f"-timeAgo={ago_ns}ns",
        # Not 0s: that means "follow forever".
        "-untilTimeAgo=1ns",
    ]


class CursorFile:
    """The newest metadata-log time fully relayed, kept across restarts."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> int | None:
        """The saved cursor in ns, or None if there is none (or it cannot be read)."""
        try:
            doc = json.loads(self.path.read_text())
            value = doc["ts_ns"]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable catch-up cursor %s: %s", self.path, exc)
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            log.warning("ignoring catch-up cursor %s: ts_ns is %r", self.path, value)
            return None
        return value

    def save(self, ts_ns: int) -> None:
        """Write the cursor atomically (a crash leaves the old or the new one)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"ts_ns": ts_ns}))
        os.replace(tmp, self.path)


@dataclass
class CatchUpReport:
    """What one catch-up run read and did: from `since_ns`, up to a new `cursor_ns`."""

    since_ns: int = 0
    events: int = 0
    replayed: int = 0
    duplicates: int = 0
    ignored: int = 0
    malformed: int = 0
    complete: bool = False
    cursor_ns: int = 0
    newest_ts_ns: int | None = None


class CatchUpError(Exception):
    """A catch-up run did not read the log to its end; `report` says how far it got."""

    def __init__(self, reason: str, report: CatchUpReport) -> None:
        super().__init__(reason)
        self.reason = reason
        self.report = report


class CatchUp:
    """Reads the filer metadata log from the saved cursor and publishes what it finds.

    `run_once` is one bounded pass; `run_forever` repeats it every
    `relay_catchup_interval_seconds`. Without a saved cursor the first pass
    starts `relay_catchup_window_seconds` ago.
    """

    def __init__(
        self,
        settings: Settings,
        forwarder: Forwarder,
        metrics: RelayMetrics,
        *,
        weed: Path | None = None,
        clock: Callable[[], int] = time.time_ns,
        run_timeout: float = RUN_TIMEOUT_S,
    ) -> None:
        self._settings = settings
        self._scope = Scope.from_settings(settings)
        self._forwarder = forwarder
        self._metrics = metrics
        self._weed = weed if weed is not None else weed_binary()
        self._clock = clock
        self._run_timeout = run_timeout
        self._file = CursorFile(settings.state_dir / "relay" / CURSOR_FILE)
        self._cursor_ns: int | None = None
        # Log times handled lately: runs overlap, and each event is relayed once.
        self._seen: set[int] = set()
        self._lock = asyncio.Lock()
        self._woken = asyncio.Event()

    @property
    def cursor_ns(self) -> int | None:
        """Everything in the log up to this time (ns) has been relayed; None before a run."""
        return self._cursor_ns

    def wake(self) -> None:
        """Catch up now instead of at the end of the interval (the broker is back)."""
        self._woken.set()

    async def run_forever(self) -> None:
        """Catch up now, then every interval or whenever woken, until cancelled."""
        if self._weed is None:
            log.error("catch-up disabled: no `weed` binary beside Python or on PATH")
            return
        interval = self._settings.relay_catchup_interval_seconds
        while True:
            # Cleared before the run: a wake-up during it means one more run right after.
            self._woken.clear()
            try:
                report = await self.run_once()
            except CatchUpError as exc:
                log.warning("catch-up incomplete, retrying in %.0fs: %s", interval, exc.reason)
            except Exception:
                # A bug must not end catch-up for the life of the process: log, go on.
                log.exception("catch-up failed unexpectedly, retrying in %.0fs", interval)
            else:
                if report.replayed:
                    log.info(
                        "catch-up published %d event(s) no webhook had delivered", report.replayed
                    )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._woken.wait()

    async def run_once(self) -> CatchUpReport:
        """Read the log from the cursor to now, publish, and move and save the cursor.

        Raises `CatchUpError` when the log could not be read to the end (weed
        missing or failing, filer unreachable, broker not confirming, timeout);
        the cursor then moves only past the events that were fully handled.
        """
        async with self._lock:
            started = self._clock()
            if self._cursor_ns is None:
                stored = await asyncio.to_thread(self._file.load)
                window = int(self._settings.relay_catchup_window_seconds * SECOND_NS)
                self._cursor_ns = stored if stored is not None else started - window
            report = CatchUpReport(since_ns=self._cursor_ns, cursor_ns=self._cursor_ns)
            failure: str | None = "interrupted"
            try:
                failure = await self._read(started, report)
            finally:
                # Also on cancellation: keep what was relayed before it.
                await self._advance(started, report, complete=failure is None)
            if failure is not None:
                self._metrics.catchup_runs.labels(
                    "timeout" if failure.startswith("timeout") else "incomplete"
                ).inc()
                raise CatchUpError(failure, report)
            self._metrics.catchup_runs.labels("complete").inc()
            return report

    async def _read(self, started: int, report: CatchUpReport) -> str | None:
        """Run weed once; return None if the whole window was read, else why not."""
        if self._weed is None:
            return "no `weed` binary beside Python or on PATH"
        assert self._cursor_ns is not None
        argv = meta_tail_command(
            self._weed, self._settings, since_ns=self._cursor_ns, now_ns=started
        )
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                limit=LINE_LIMIT,
            )
        except OSError as exc:
            return f"cannot start {argv[0]}: {exc}"
        assert proc.stdout is not None  # both are PIPE
        assert proc.stderr is not None
        stderr_tail: deque[str] = deque(maxlen=STDERR_LINES)
        drain = asyncio.create_task(_collect(proc.stderr, stderr_tail))
        try:
            async with asyncio.timeout(self._run_timeout):
                failure = await self._consume(proc.stdout, report)
                rc = await proc.wait()
        except TimeoutError:
            return f"timeout: weed filer.meta.tail still running after {self._run_timeout}s"
        except PublishFailed as exc:
            return f"broker did not confirm: {exc}"
        except ValueError as exc:  # a line over LINE_LIMIT
            return f"unreadable output: {exc}"
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
            await drain
        if rc != 0:
            return f"weed filer.meta.tail exited {rc}: {' | '.join(stderr_tail)}"[:1000]
        return failure

    async def _consume(self, stdout: asyncio.StreamReader, report: CatchUpReport) -> str | None:
        """Relay every event on `stdout`; return the first output problem, if any."""
        decoder = MetaLogDecoder()
        first_problem: str | None = None

        def malformed(exc: MalformedNotification | UnicodeDecodeError) -> None:
            nonlocal first_problem
            report.malformed += 1
            self._metrics.malformed.labels("metalog").inc()
            log.error("catch-up: unreadable metadata-log output: %s", exc)
            first_problem = first_problem or f"unreadable output: {exc}"

        while line := await stdout.readline():
            try:
                doc = decoder.feed(line.decode("utf-8"))
            except (MalformedNotification, UnicodeDecodeError) as exc:
                malformed(exc)
                continue
            if doc is not None:
                try:
                    await self._handle(doc, report)
                except MalformedNotification as exc:
                    malformed(exc)
        try:
            decoder.finish()
        except MalformedNotification as exc:
            malformed(exc)
        return first_problem

    async def _handle(self, doc: dict[str, object], report: CatchUpReport) -> None:
        record = parse_meta_log_event(doc, self._scope)
        report.events += 1
        if record.ts_ns not in self._seen:
            self._metrics.received.labels("metalog").inc()
            outcome = record.outcome
            if isinstance(outcome, Ignored):
                report.ignored += 1
                self._metrics.ignored.labels("metalog", outcome.code).inc()
            else:
                sent = await self._forwarder.forward(
                    [outcome], source="metalog", timeout=PUBLISH_TIMEOUT_S
                )
                if sent:
                    report.replayed += 1
                    self._metrics.replayed.inc()
                    log.info("catch-up: published %s (%s)", outcome.key, outcome.event_id)
                else:
                    report.duplicates += 1
            self._seen.add(record.ts_ns)
        if report.newest_ts_ns is None or record.ts_ns > report.newest_ts_ns:
            report.newest_ts_ns = record.ts_ns

    async def _advance(self, started: int, report: CatchUpReport, *, complete: bool) -> None:
        """Move the cursor past what is known to be relayed, forget old times, save."""
        assert self._cursor_ns is not None
        before = self._cursor_ns
        settled = started - SETTLE_NS
        if complete:
            candidate = settled
        elif report.newest_ts_ns is not None:
            # Everything before the newest handled event was handled too (the log
            # streams in time order), but never past what may still be arriving.
            candidate = min(report.newest_ts_ns, settled)
        else:
            candidate = before
        self._cursor_ns = max(before, candidate)
        report.complete = complete
        report.cursor_ns = self._cursor_ns
        floor = self._cursor_ns - 2 * READ_MARGIN_NS
        self._seen = {ts for ts in self._seen if ts > floor}
        self._metrics.catchup_cursor.set(self._cursor_ns / SECOND_NS)
        if self._cursor_ns != before:
            try:
                await asyncio.to_thread(self._file.save, self._cursor_ns)
            except OSError as exc:
                log.error("cannot save the catch-up cursor to %s: %s", self._file.path, exc)


async def _collect(stream: asyncio.StreamReader, tail: deque[str]) -> None:
    """Read `stream` to its end, keeping the last lines (weed's log) for error messages."""
    pending = b""
    while chunk := await stream.read(65536):
        *lines, pending = (pending + chunk).split(b"\n")
        pending = pending[-4096:]  # no unbounded line
        for line in lines:
            text = line.decode("utf-8", "replace").strip()
            if text:
                tail.append(text[:500])
    if pending.strip():
        tail.append(pending.decode("utf-8", "replace").strip()[:500])
