"""What each agent wrote with its ``log`` host function, kept per agent on its node.

Each agent has a bounded ring of its newest lines (:data:`RING_LINES`), so a chatty
agent cannot grow the node's memory; what reaches the ring is what passed the agent's
log budget (:mod:`caxton.log_budget`, the same lines the node log gets, including the
note of how many were dropped). Readers (``GET /api/v1/agents/{agent_id}/logs``,
``caxton logs AGENT --follow``) get the lines since a time or a sequence number, and
followers are woken by each new line.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["RING_LINES", "AgentLog", "LogLine"]

#: Lines kept per agent.
RING_LINES = 1000

_sequence = itertools.count(1)


@dataclass(frozen=True, slots=True)
class LogLine:
    #: Grows with every line of the node, so a follower knows what it has seen.
    seq: int
    #: Unix time, seconds.
    at: float
    level: str
    text: str

    def to_dict(self, agent: str) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": self.at,
            "agent": agent,
            "level": self.level,
            "text": self.text,
        }


class AgentLog:
    """One agent's ring and the futures of those following it."""

    __slots__ = ("_waiters", "clock", "lines")

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.lines: deque[LogLine] = deque(maxlen=RING_LINES)
        self.clock = clock
        self._waiters: list[asyncio.Future[None]] = []

    def append(self, level: str, text: str) -> None:
        self.lines.append(LogLine(next(_sequence), self.clock(), level, text))
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def since(self, at: float = 0.0, after_seq: int = 0) -> list[LogLine]:
        """Lines written at or after ``at`` and numbered after ``after_seq``."""
        return [line for line in self.lines if line.at >= at and line.seq > after_seq]

    async def wait(self, timeout: float) -> None:
        """Until the next line, or ``timeout`` seconds."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
