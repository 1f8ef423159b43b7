"""Child processes end with the process that started them, even after a `kill -9`:
the processor's pool processes, the gateway's workers under `--workers N`.

Measured with a `ProcessPoolExecutor` (forkserver and spawn alike): when the parent
is SIGKILLed, its pool workers block on their call queue forever (each holds a
writer of that queue itself, so it never sees EOF), the forkserver lives on because
every worker holds its "alive" pipe, and the resource tracker lives on because they
all hold its pipe: with two workers, four processes (~160 MiB with the image
libraries loaded) per kill. Ending the workers ends the rest: the forkserver and the
tracker exit once the last holder of their pipes is gone (measured for both contexts).

`die_with(pid)` is the pool initializer that ends a worker when `pid` (the
processor) ends:

* a daemon thread waits on a pidfd of `pid` (no polling; any process tree: a
  forkserver's children have the forkserver, not the processor, as parent) and
  SIGKILLs its own process when `pid` exits;
* when `pid` is the direct parent (the spawn context), `PR_SET_PDEATHSIG` asks the
  kernel for the same. The kernel sends it when the parent *thread* that started the
  child exits, so it is set only in that case.
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import signal
import sys
import threading
import time

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
# Only where pidfds are missing (Linux < 5.3): how often to look at the parent.
POLL_SECONDS = 0.5


def die_with(pid: int) -> None:
    """End this process (SIGKILL) as soon as process `pid` ends. Call it at start-up."""
    if os.getppid() == pid and sys.platform == "linux":
        _set_parent_death_signal(signal.SIGKILL)
    threading.Thread(target=_watch, args=(pid,), name=f"lifeline-{pid}", daemon=True).start()


def _set_parent_death_signal(sig: signal.Signals) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())


def _watch(pid: int) -> None:
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        _end()  # already gone before we started watching
    except (AttributeError, OSError):
        _poll(pid)  # no pidfds here
    else:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.poll()  # readable once the process has exited
        _end()


def _poll(pid: int) -> None:
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            _end()
        except PermissionError:
            pass  # alive, under another user: keep watching
        time.sleep(POLL_SECONDS)


def _end() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
