"""Bounded logging: at most so many lines, and a count of the ones left out.

Anything outside the node can make it log (a client sending garbage, an agent calling
its log host function in a loop); without a bound the log grows as fast as they can
write. A :class:`LogBudget` lets ``burst`` lines through at once and ``per_second``
after that, and counts what it drops, so the next line that goes through can say
"N lines dropped".
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["LogBudget"]


class LogBudget:
    """A token bucket for log lines that counts the lines it refuses."""

    __slots__ = ("_clock", "_stamp", "_tokens", "burst", "dropped", "per_second")

    def __init__(
        self, per_second: float, burst: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.per_second = per_second
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock()
        #: Lines refused since the last one let through.
        self.dropped = 0

    def take(self) -> int | None:
        """None: leave this line out (it is counted). Otherwise the line may go, and
        the result is how many were left out before it (to say so with it)."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.per_second)
        self._stamp = now
        if self._tokens < 1.0:
            self.dropped += 1
            return None
        self._tokens -= 1.0
        dropped, self.dropped = self.dropped, 0
        return dropped
