"""A registered name's mailbox: four priority queues that keep conversations in order.

Internal to the router. Entries are ``(queued_at, message)``, ``queued_at`` on the
router's monotonic clock. A message never overtakes an earlier queued message of its own
conversation: it goes to the queue of that message's class when its own is higher, so
the effective class within a conversation never decreases and per-conversation order is
FIFO whatever the priorities.
"""

from __future__ import annotations

import inspect
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from caxton.messaging.message import Message

__all__ = ["UNSCHEDULED", "Deliver", "Mailbox", "Queue", "is_async_callable"]

Deliver = Callable[[Message], Awaitable[None] | None]

#: ``Mailbox.sched`` when the mailbox is on none of the router's ready lists.
UNSCHEDULED = 4

Queue = deque[tuple[float, Message]]


def is_async_callable(deliver: Callable[..., Any]) -> bool:
    """A coroutine function, or an object whose ``__call__`` is one."""
    return inspect.iscoroutinefunction(deliver) or inspect.iscoroutinefunction(
        getattr(deliver, "__call__", None)  # noqa: B004 - an object with async __call__
    )


class Mailbox:
    """One registered name's queues and delivery state."""

    __slots__ = (
        "busy",
        "closed",
        "conversations",
        "count",
        "deliver",
        "delivered",
        "direct",
        "fifo",
        "forward",
        "held",
        "is_async",
        "name",
        "queues",
        "sched",
    )

    def __init__(self, name: str, deliver: Deliver, direct: bool, fifo: bool = False) -> None:
        self.name = name
        #: Priorities off (``messaging.priority_routing = false``): one FIFO queue.
        self.fifo = fifo
        # One queue per priority, made on first use: an idle agent costs no deques
        # (about 3 KiB less each on a node with thousands of agents).
        self.queues: list[Queue | None] = [None, None, None, None]
        #: Queued messages per conversation: [count, priority queue of the newest].
        self.conversations: dict[str, list[int]] = {}
        self.count = 0
        self.delivered = 0
        self.held = False
        self.busy = False  # a task is delivering to this mailbox
        self.closed = False
        #: Closed because its agent moved to another node: late messages follow it.
        self.forward = False
        self.sched = UNSCHEDULED
        self.deliver = deliver
        self.is_async = is_async_callable(deliver)
        self.direct = direct and not self.is_async

    def push(self, message: Message, queued_at: float) -> int:
        """Queue ``message``; return the priority queue it went to."""
        priority = 2 if self.fifo else int(message.priority)
        conversation_id = message.conversation_id
        if conversation_id is not None:
            entry = self.conversations.get(conversation_id)
            if entry is None:
                self.conversations[conversation_id] = [1, priority]
            else:
                # Never overtake an earlier message of the same conversation.
                entry[0] += 1
                if priority < entry[1]:
                    priority = entry[1]
                else:
                    entry[1] = priority
        queue = self.queues[priority]
        if queue is None:
            queue = self.queues[priority] = deque()
        queue.append((queued_at, message))
        self.count += 1
        return priority

    def pop(self) -> tuple[float, Message]:
        """The next message by priority (the caller checked ``count``)."""
        queues = self.queues
        queue = queues[0] or queues[1] or queues[2] or queues[3]
        entry = queue.popleft()  # type: ignore[union-attr]  # count > 0: one is not empty
        self.count -= 1
        conversation_id = entry[1].conversation_id
        if conversation_id is not None:
            self._forget(conversation_id)
        return entry

    def pop_from(self, priority: int) -> tuple[float, Message]:
        """The oldest message of one priority (the caller checked that queue)."""
        entry = self.queues[priority].popleft()  # type: ignore[union-attr]
        self.count -= 1
        conversation_id = entry[1].conversation_id
        if conversation_id is not None:
            self._forget(conversation_id)
        return entry

    def _forget(self, conversation_id: str) -> None:
        entry = self.conversations.get(conversation_id)
        if entry is not None:
            entry[0] -= 1
            if entry[0] <= 0:
                del self.conversations[conversation_id]

    def top(self) -> int:
        for priority, queue in enumerate(self.queues):
            if queue:
                return priority
        return UNSCHEDULED

    def depths(self) -> list[int]:
        return [len(queue) if queue else 0 for queue in self.queues]

    def clear(self) -> list[Message]:
        messages = [m for queue in self.queues if queue for _, m in queue]
        for queue in self.queues:
            if queue:
                queue.clear()
        self.conversations.clear()
        self.count = 0
        return messages
