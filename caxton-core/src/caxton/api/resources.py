"""What ``GET /api/v1/resources`` reports about this node: CPU, memory, agents."""

from __future__ import annotations

import os
import resource
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from caxton.node import Node

__all__ = ["CpuSampler", "memory_rss_bytes", "node_resources"]

_STATM = Path("/proc/self/statm")


class CpuSampler:
    """The process's CPU use between two calls, in percent of all the host's cores.

    Calls closer together than ``min_interval`` return the previous figure, so many
    clients polling at once do not turn the measure into noise.
    """

    def __init__(self, min_interval: float = 0.5) -> None:
        self.min_interval = min_interval
        self.cpu_count = os.cpu_count() or 1
        self._last = (time.monotonic(), time.process_time())
        self._percent = 0.0

    def percent(self) -> float:
        now, cpu = time.monotonic(), time.process_time()
        then, cpu_then = self._last
        if now - then >= self.min_interval:
            self._percent = max(0.0, 100.0 * (cpu - cpu_then) / ((now - then) * self.cpu_count))
            self._last = (now, cpu)
        return round(self._percent, 1)


def memory_rss_bytes() -> int:
    """Resident set size now (``/proc``), or the peak where ``/proc`` is missing."""
    try:
        resident_pages = int(_STATM.read_text().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)


def memory_total_bytes() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (OSError, ValueError, AttributeError):
        return 0


def node_resources(node: Node, cpu: CpuSampler) -> dict[str, Any]:
    agents = list(node.agents.list()) if node.agents is not None else []
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = []
    return {
        "node_id": node.node_id,
        "cpu_percent": cpu.percent(),
        "cpu_count": cpu.cpu_count,
        "load_average": load,
        "memory_rss_bytes": memory_rss_bytes(),
        "memory_total_bytes": memory_total_bytes(),
        "agents": len(agents),
        "agents_by_state": dict(Counter(str(a.state) for a in agents)),
        "max_agents": int(node.config["runtime"]["max_agents"]),
        "uptime_seconds": round(time.time() - node.started_at, 3) if node.started_at else 0.0,
    }
