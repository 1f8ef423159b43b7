"""A process pool whose jobs have a hard wall-time limit and whose crashes are contained.

`concurrent.futures.ProcessPoolExecutor` can neither stop one job nor survive one:
a decoder stuck in C code can't be cancelled, and a worker that dies (a
segfault in a codec, a kill) breaks the whole executor for good. Decoding
hostile files needs both, so each slot here is one worker process of its own,
talking over a pipe: a job over its limit is killed with its process, a crashed
process is reported with its exit code, and either way the slot starts a fresh
process for the next job. The other slots never notice.

Jobs are plain picklable functions and arguments (never lambdas); results and
exceptions come back pickled. Processes come from the `forkserver` context, so
the event loop's process (threads, sockets) is never forked, and each one ends with
the process that made the pool, even after a `kill -9` of it (`lifeline.die_with`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from types import TracebackType
from typing import Any, TypeVar

from shared.lifeline import die_with

log = logging.getLogger(__name__)

_T = TypeVar("_T")

# Signals that mean the job itself broke its process (as opposed to an operator
# or the system stopping it).
CRASH_SIGNALS = frozenset(
    {signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGFPE, signal.SIGILL}
)


class JobTimeout(Exception):
    """The job ran past its wall-time limit; its process was killed."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"the job ran longer than {seconds:g} s and was stopped")
        self.seconds = seconds


class JobCrashed(Exception):
    """The job's process died under it (exit code, negative for a signal)."""

    def __init__(self, exitcode: int | None) -> None:
        super().__init__(f"the worker process died ({describe_exit(exitcode)})")
        self.exitcode = exitcode

    @property
    def by_crash_signal(self) -> bool:
        """Whether the process died of a crash signal (segfault, abort, …)."""
        return self.exitcode is not None and -self.exitcode in CRASH_SIGNALS


def describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "exit status unknown"
    if exitcode < 0:
        try:
            return f"signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit code {exitcode}"


def _serve(conn: Connection, owner: int) -> None:
    """A slot's process: run jobs from the pipe until it closes, or `owner` ends."""
    # A job may be busy in C code for a while when the owner dies: don't wait for it
    # to look at the pipe again.
    die_with(owner)
    # The parent owns shutdown: an interactive Ctrl-C must not kill jobs half-way.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            fn, args = conn.recv()
        except (EOFError, OSError):
            return
        try:
            reply: tuple[bool, Any] = (True, fn(*args))
        except Exception as exc:  # every failure goes back to the parent as a value
            reply = (False, exc)
        try:
            conn.send(reply)
        except (TypeError, AttributeError, ValueError) as exc:  # unpicklable result
            conn.send((False, RuntimeError(f"the job's result could not be sent: {exc}")))


class _Slot:
    """One worker process and its pipe; used by one job at a time."""

    def __init__(self, context: Any) -> None:
        self._context = context
        self._process: BaseProcess | None = None
        self._conn: Connection | None = None
        self._lock = threading.Lock()

    def call(self, fn: Callable[..., _T], args: tuple[Any, ...], timeout: float) -> _T:
        """Run `fn(*args)` in this slot's process (blocking; call from a thread)."""
        with self._lock:
            conn = self._started()
            try:
                conn.send((fn, args))
            except (BrokenPipeError, ConnectionError, EOFError):
                raise JobCrashed(self._reap()) from None
            if not conn.poll(timeout):
                self._kill()
                raise JobTimeout(timeout)
            try:
                ok, value = conn.recv()
            except (EOFError, OSError):
                raise JobCrashed(self._reap()) from None
        if ok:
            return value  # type: ignore[no-any-return]
        raise value

    def _started(self) -> Connection:
        if self._process is not None and self._conn is not None and self._process.is_alive():
            return self._conn
        self._close()
        parent: Connection
        parent, child = self._context.Pipe()
        process = self._context.Process(target=_serve, args=(child, os.getpid()), daemon=True)
        process.start()
        child.close()
        self._process, self._conn = process, parent
        return parent

    def kill(self) -> None:
        """Stop the process now (from any thread); a job waiting on it ends."""
        process = self._process
        if process is not None and process.is_alive():
            with contextlib.suppress(ProcessLookupError, ValueError):
                process.kill()

    def _kill(self) -> None:
        self.kill()
        self._reap()

    def _reap(self) -> int | None:
        process = self._process
        code = None
        if process is not None:
            process.join(5)
            code = process.exitcode
        self._close()
        return code

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._process is not None:
            with contextlib.suppress(ValueError):
                self._process.close()
        self._process, self._conn = None, None

    def shutdown(self) -> None:
        self.kill()
        with self._lock:
            if self._process is not None:
                self._process.join(5)
            self._close()


class JobPool:
    """`workers` slots; `await run(fn, *args, timeout=...)` runs a job in a free one.

    Use it as a context manager (or call `shutdown`): processes start on first
    use and are stopped on exit.
    """

    def __init__(self, workers: int, *, context: str = "forkserver") -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self._context = multiprocessing.get_context(context)
        self._idle = [_Slot(self._context) for _ in range(workers)]
        self._all = list(self._idle)
        self._free = asyncio.Semaphore(workers)
        # Threads that wait on the slots' pipes: one per slot, never shared with
        # anything else, so a long job can't starve other blocking work.
        self._waiters = ThreadPoolExecutor(workers, thread_name_prefix="job-pool")
        self.workers = workers

    @property
    def running(self) -> int:
        """Jobs running now."""
        return len(self._all) - len(self._idle)

    async def run(self, fn: Callable[..., _T], *args: Any, timeout: float) -> _T:  # noqa: ASYNC109
        """The job's result; raises its exception, `JobTimeout` or `JobCrashed`."""
        loop = asyncio.get_running_loop()
        async with self._free:
            slot = self._idle.pop()
            waiting = loop.run_in_executor(self._waiters, slot.call, fn, args, timeout)
            try:
                result = await asyncio.shield(waiting)
            except asyncio.CancelledError:
                # The caller gave up (shutdown): stop the job rather than leave a
                # process working for nobody; the slot is free again once it ends.
                slot.kill()
                with contextlib.suppress(Exception):
                    await waiting
                raise
            finally:
                self._idle.append(slot)
        return result

    async def warm(self, fn: Callable[[], Any] = os.getpid, *, timeout: float = 60) -> None:  # noqa: ASYNC109
        """Start every slot's process now and run `fn` in each (say, a function of the
        module jobs come from, so that its imports are done before the first job)."""
        loop = asyncio.get_running_loop()
        await asyncio.gather(
            *(loop.run_in_executor(self._waiters, slot.call, fn, (), timeout) for slot in self._all)
        )

    def shutdown(self) -> None:
        for slot in self._all:
            slot.shutdown()
        self._waiters.shutdown(wait=True)

    def __enter__(self) -> JobPool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()
