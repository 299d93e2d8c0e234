"""What ``caxton cluster watch`` shows: membership, registry and mode events of a node."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ClusterEvent", "EventLog"]

log = logging.getLogger("caxton.cluster")

#: Events kept for ``GET /api/v1/cluster/events``.
EVENT_HISTORY = 1000
#: Events a watcher may fall behind by before it misses some.
WATCHER_BACKLOG = 10_000


@dataclass(frozen=True)
class ClusterEvent:
    """One line of ``caxton cluster watch``."""

    kind: str
    text: str
    level: str = "info"
    node_id: str = ""
    at: float = field(default_factory=time.time)
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "level": self.level,
            "kind": self.kind,
            "node_id": self.node_id,
            "text": self.text,
            **({"details": dict(self.details)} if self.details else {}),
        }


class EventLog:
    """The recent events, and the queues of those watching new ones."""

    def __init__(self, history: int = EVENT_HISTORY) -> None:
        self._events: deque[ClusterEvent] = deque(maxlen=history)
        self._watchers: set[asyncio.Queue[ClusterEvent]] = set()
        #: Events recorded per kind since the node started (caxton_cluster_events_total).
        self.counts: Counter[str] = Counter()

    def record(
        self,
        kind: str,
        text: str,
        *,
        node_id: str = "",
        level: str = "info",
        details: Mapping[str, Any] | None = None,
    ) -> ClusterEvent:
        """Keep the event, log it (unless ``debug``) and hand it to every watcher."""
        event = ClusterEvent(kind, text, level, node_id, details=dict(details or {}))
        self._events.append(event)
        self.counts[kind] += 1
        if level != "debug":
            log.log(logging.WARNING if level == "warning" else logging.INFO, "%s", text)
        for queue in list(self._watchers):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(event)
        return event

    def recent(self, limit: int = 100) -> list[ClusterEvent]:
        """The newest ``limit`` events, oldest first."""
        events = list(self._events)
        return events[-limit:] if limit > 0 else []

    @contextlib.asynccontextmanager
    async def watch(self) -> AsyncIterator[asyncio.Queue[ClusterEvent]]:
        """A queue that receives every event from now on."""
        queue: asyncio.Queue[ClusterEvent] = asyncio.Queue(maxsize=WATCHER_BACKLOG)
        self._watchers.add(queue)
        try:
            yield queue
        finally:
            self._watchers.discard(queue)

    def close(self, text: str) -> None:
        """Tell the watchers that nothing more will come (a ``closed`` event)."""
        for queue in list(self._watchers):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(ClusterEvent("closed", text))
