"""Timings kept on a hot path at the cost of one ``deque.append``, read as quantiles and
as cumulative Prometheus histograms when someone asks.

The code that measures appends a float to :attr:`Samples.pending` and does nothing
else. A reader (a metrics scrape, ``queue_stats``, a diagnostic command) calls
:meth:`Samples.fold`, which moves the pending observations into the recent window
(quantiles) and into cumulative bucket counts (histograms). ``pending`` is bounded: when
more observations arrive between two reads than it holds, the oldest are dropped, so a
histogram's ``_count`` counts the observations it saw, which on a busy node is a sample
of the events (the message counters count them all). See docs/observability.md.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["HistogramSnapshot", "Samples", "quantile"]


@dataclass(frozen=True)
class HistogramSnapshot:
    """Cumulative counts per upper bound (the last bound is +Inf), their sum and count."""

    buckets: list[tuple[float, int]]
    count: int
    sum: float


class Samples:
    """Observations (seconds, bytes...) of one kind: pending, recent, and cumulative."""

    __slots__ = ("_bounds", "_counts", "_parent", "count", "pending", "sum", "window")

    def __init__(
        self, pending: int = 4096, window: int = 1024, parent: Samples | None = None
    ) -> None:
        #: The hot path appends here, and only here.
        self.pending: deque[float] = deque(maxlen=pending)
        #: The newest observations read, for quantiles.
        self.window: deque[float] = deque(maxlen=window)
        self.count = 0
        self.sum = 0.0
        self._bounds: tuple[float, ...] = ()
        self._counts: list[int] = []
        #: A node-wide Samples that also receives what this one folds (per agent -> node).
        self._parent = parent

    def fold(self) -> list[float]:
        """Move the pending observations into the window and the histogram; return them."""
        pending = self.pending
        if not pending:
            return []
        new = list(pending)
        pending.clear()
        self.window.extend(new)
        self.count += len(new)
        self.sum += math.fsum(new)
        if self._bounds:
            bounds, counts = self._bounds, self._counts
            for value in new:
                counts[bisect.bisect_left(bounds, value)] += 1
        if self._parent is not None:
            self._parent.pending.extend(new)
        return new

    def histogram(self, bounds: Sequence[float]) -> HistogramSnapshot:
        """Cumulative bucket counts for ``bounds`` (ascending upper bounds, +Inf added).

        The buckets count from the first call on (earlier observations are in ``count``
        and ``sum`` only when they were folded before: none are, in practice, since the
        node asks with its configured bounds from its first scrape).
        """
        wanted = tuple(sorted(float(b) for b in bounds if math.isfinite(float(b))))
        if wanted != self._bounds:
            # First call (or new bounds): count what the window still holds.
            self._bounds = wanted
            self._counts = [0] * (len(wanted) + 1)
            for value in self.window:
                self._counts[bisect.bisect_left(wanted, value)] += 1
            self.count = len(self.window)
            self.sum = math.fsum(self.window)
        self.fold()
        running = 0
        buckets: list[tuple[float, int]] = []
        for bound, n in zip((*self._bounds, math.inf), self._counts, strict=True):
            running += n
            buckets.append((bound, running))
        return HistogramSnapshot(buckets, self.count, self.sum)

    def quantiles(self, *qs: float) -> list[float]:
        """Quantiles of the recent window (0.0 each when nothing was observed)."""
        self.fold()
        ordered = sorted(self.window)
        return [quantile(ordered, q) for q in qs]

    def recent(self) -> list[float]:
        self.fold()
        return list(self.window)


def quantile(ordered: Sequence[float], q: float) -> float:
    """The ``q`` quantile of an ascending sequence (nearest rank; 0.0 when empty)."""
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return float(ordered[index])


def merge(samples: Iterable[Samples]) -> list[float]:
    """The recent windows of several Samples, ascending."""
    values: list[float] = []
    for item in samples:
        values.extend(item.recent())
    values.sort()
    return values
