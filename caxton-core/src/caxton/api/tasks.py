"""Contract-net tasks created through the API (``/api/v1/tasks``), kept in memory.

A task is the content of a call for proposals and the agents to send it to;
distributing it runs one ``fipa-contract-net`` round through the router and records
the winner, the proposals and the winner's result. The board keeps the newest
:data:`MAX_TASKS`; older finished tasks are forgotten first.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from caxton.errors import Conflict, NotFound

if TYPE_CHECKING:
    from caxton.messaging import ContractNetResult

__all__ = ["MAX_TASKS", "Task", "TaskBoard"]

MAX_TASKS = 10_000


@dataclass
class Task:
    initiator: str
    participants: tuple[str, ...]
    content: Any
    deadline_ms: int
    result_timeout_ms: int | None = None
    language: str | None = None
    ontology: str | None = None
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    state: str = "created"
    created_at: float = field(default_factory=time.time)
    outcome: ContractNetResult | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        outcome = self.outcome
        return {
            "id": self.id,
            "state": self.state,
            "initiator": self.initiator,
            "participants": list(self.participants),
            "content": self.content,
            "deadline_ms": self.deadline_ms,
            "created_at": self.created_at,
            "conversation_id": outcome.conversation_id if outcome else None,
            "winner": outcome.winner if outcome else None,
            "proposals": {k: m.to_dict() for k, m in outcome.proposals.items()} if outcome else {},
            "refusals": {k: m.to_dict() for k, m in outcome.refusals.items()} if outcome else {},
            "no_answer": list(outcome.no_answer) if outcome else [],
            "result": outcome.result.to_dict() if outcome and outcome.result else None,
            "error": self.error,
        }


class TaskBoard:
    def __init__(self, limit: int = MAX_TASKS) -> None:
        self.limit = limit
        self._tasks: OrderedDict[str, Task] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tasks)

    def add(self, task: Task) -> Task:
        self._tasks[task.id] = task
        while len(self._tasks) > self.limit:
            oldest = next(
                (t for t in self._tasks.values() if t.state != "distributing"),
                None,
            )
            if oldest is None:
                break
            del self._tasks[oldest.id]
        return task

    def get(self, task_id: str) -> Task:
        task = self._tasks.get(task_id)
        if task is None:
            raise NotFound(
                f"Task not found: {task_id}",
                details=f"no task {task_id} on this node (tasks live in memory and are "
                f"forgotten on restart); create one with POST /api/v1/tasks",
            )
        return task

    def begin(self, task_id: str) -> Task:
        """Mark the task as distributing; a task runs once."""
        task = self.get(task_id)
        if task.state != "created":
            raise Conflict(
                f"task {task_id} was already distributed (state {task.state}); "
                f"create a new task to run another round"
            )
        task.state = "distributing"
        return task
