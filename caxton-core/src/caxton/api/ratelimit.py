"""Token-bucket rate limiting per client address.

Each client gets a bucket of ``burst`` tokens refilled at ``rate`` tokens a second; a
request takes one token or is refused with the time until the next one. Buckets of
clients that went quiet are dropped (a full bucket carries no information), so the
table stays bounded by the number of clients active within ``burst / rate`` seconds,
and by :data:`MAX_CLIENTS` at worst.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["MAX_CLIENTS", "Decision", "TokenBucketLimiter"]

#: Most buckets kept at once; the least recently seen client is forgotten first.
MAX_CLIENTS = 100_000


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    #: Whole tokens left after this request.
    remaining: int
    #: Seconds until the bucket is full again.
    reset: float
    #: Seconds until one token is available (0 when allowed).
    retry_after: float


class TokenBucketLimiter:
    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.max_clients = max_clients
        #: client -> (tokens, time of the last update), least recently seen first.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, client: str) -> Decision:
        now = self.clock()
        tokens, then = self._buckets.pop(client, (float(self.burst), now))
        if self.rate > 0:
            tokens = min(float(self.burst), tokens + (now - then) * self.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[client] = (tokens, now)
        if len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        self._forget_idle(now)
        missing = self.burst - tokens
        if self.rate > 0:
            reset = missing / self.rate
            retry_after = 0.0 if allowed else (1.0 - tokens) / self.rate
        else:  # no refill: a spent bucket stays spent
            reset = math.inf if missing else 0.0
            retry_after = 0.0 if allowed else math.inf
        return Decision(allowed, int(tokens), reset, retry_after)

    def _forget_idle(self, now: float) -> None:
        """Drop the oldest buckets that have refilled completely by now."""
        if self.rate <= 0:
            return
        full_after = self.burst / self.rate
        while self._buckets:
            client, (_tokens, then) = next(iter(self._buckets.items()))
            if now - then < full_after:
                break
            del self._buckets[client]
