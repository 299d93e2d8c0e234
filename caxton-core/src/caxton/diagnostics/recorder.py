"""The records the diagnostic commands need that nothing else keeps: agent crashes with
their time (``caxton trace --error-cascade``) and the node's recent log lines (``caxton
debug dump``, when the log goes to stderr and no file holds it).

Both are bounded rings in memory; neither is on the message path (a crash is already
the slow path, and the log handler sees only what the log level lets through).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from caxton import hookimpl
from caxton.errors import CaxtonError, NotFound

if TYPE_CHECKING:
    from caxton.agents.model import Agent
    from caxton.node import Node

__all__ = ["CRASHES_KEPT", "LOG_LINES_KEPT", "DiagnosticsRecorder"]

#: Agent crashes a node remembers.
CRASHES_KEPT = 1000
#: Log lines of the node a node remembers.
LOG_LINES_KEPT = 500
#: Profiles (running or finished) whose results a node keeps.
PROFILES_KEPT = 8


class _Ring(logging.Handler):
    """Keeps the last :data:`LOG_LINES_KEPT` records of the ``caxton`` loggers."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: deque[dict[str, Any]] = deque(maxlen=LOG_LINES_KEPT)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # a bad format string in someone's log call
            text = str(record.msg)
        self.lines.append(
            {
                "at": record.created,
                "level": record.levelname.lower(),
                "logger": record.name,
                "message": text,
            }
        )


class DiagnosticsRecorder:
    """One per node, registered as a hook plugin by the node while it runs."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.crashes: deque[dict[str, Any]] = deque(maxlen=CRASHES_KEPT)
        self._ring = _Ring()
        self._logger = logging.getLogger("caxton")
        #: ``caxton profile`` runs in the background (longer than an HTTP request
        #: should take): profile id -> its task, newest last.
        self.profiles: OrderedDict[str, asyncio.Task[Any]] = OrderedDict()

    def start(self) -> None:
        self._logger.addHandler(self._ring)
        self.node.host.register(self, name=f"caxton-diagnostics-{id(self)}")

    def close(self) -> None:
        for task in self.profiles.values():
            task.cancel()
        self._logger.removeHandler(self._ring)
        if self.node.host.pm.is_registered(self):
            self.node.host.pm.unregister(self)

    def running_profile(self) -> str | None:
        """The id of the profile still running, if one is."""
        return next((pid for pid, task in self.profiles.items() if not task.done()), None)

    def start_profile(self, work: Awaitable[Any]) -> str:
        """Run ``work`` (the gathered profile) in the background; its id."""
        profile_id = str(uuid.uuid4())
        self.profiles[profile_id] = asyncio.ensure_future(work)
        while len(self.profiles) > PROFILES_KEPT:
            self.profiles.popitem(last=False)[1].cancel()
        return profile_id

    def profile_result(self, profile_id: str) -> dict[str, Any]:
        task = self.profiles.get(profile_id)
        if task is None:
            raise NotFound(
                f"No profile {profile_id} on node {self.node.node_id} (it keeps "
                f"the last {PROFILES_KEPT})"
            )
        if not task.done():
            return {"profile_id": profile_id, "status": "running"}
        if task.cancelled():
            return {"profile_id": profile_id, "status": "failed", "error": "cancelled"}
        error = task.exception()
        if error is not None:
            text = str(error) if isinstance(error, CaxtonError) else repr(error)
            return {"profile_id": profile_id, "status": "failed", "error": text}
        return {"profile_id": profile_id, "status": "done", **task.result()}

    def log_lines(self, since: float = 0.0) -> list[dict[str, Any]]:
        return [line for line in self._ring.lines if line["at"] >= since]

    @hookimpl
    def caxton_agent_crashed(self, node: Node, agent: Agent, reason: str, error: str) -> None:
        if node is self.node:
            self.crashes.append(
                {"at": time.time(), "agent": agent.name, "reason": reason, "error": error}
            )
