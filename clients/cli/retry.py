"""When to retry a request and how long to wait: pure rules, no I/O.

Every request the CLI makes (to the gateway or straight to storage) retries on its
own: one failed part never restarts its siblings. Waits grow exponentially with
"equal jitter" (half fixed, half random), so many clients that failed together
don't come back together, and no wait is ever close to zero.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

# Answers worth trying again: the server was busy, overloaded or briefly broken.
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How many times to try one request and how long to wait between tries."""

    attempts: int = 8
    base_seconds: float = 0.5
    cap_seconds: float = 20.0

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """The wait after failed try number `attempt` (1-based).

        The ceiling doubles per try (base, 2×base, 4×base, … up to the cap); the wait
        is uniformly drawn from [ceiling/2, ceiling].
        """
        if attempt < 1:
            raise ValueError("attempt numbers start at 1")
        ceiling = min(self.cap_seconds, self.base_seconds * 2.0 ** min(attempt - 1, 32))
        return ceiling / 2 + rand() * ceiling / 2

    def schedule(self, rand: Callable[[], float] = random.random) -> list[float]:
        """Every wait a request that always fails would go through."""
        return [self.delay(n, rand) for n in range(1, self.attempts)]


def is_retryable_status(status: int) -> bool:
    """Whether an HTTP answer is a transient failure (try again) or a verdict (don't)."""
    return status in RETRYABLE_STATUS or status >= 500
