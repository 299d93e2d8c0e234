"""Test doubles for messaging: an in-memory :class:`~caxton.messaging.DurableOutbox`.

``MemoryOutbox`` behaves like the SQLite store's outbox (persist, acknowledge, pending,
seen) and can simulate a crash: :meth:`MemoryOutbox.crash` returns a new outbox holding
exactly what had been persisted and acknowledged, as a restarted node would find it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from caxton.messaging import Message

__all__ = ["MemoryOutbox", "Recorder", "eventually"]


class MemoryOutbox:
    """An in-memory durable outbox with the store's semantics.

    ``fail_persist`` makes the next :meth:`persist` calls raise it (to test that an
    unpersisted message is neither acknowledged to its sender nor delivered).
    """

    def __init__(self) -> None:
        self.messages: dict[str, Message] = {}
        self.acked: set[str] = set()
        self.persist_calls: list[list[str]] = []
        self.ack_calls: list[list[str]] = []
        self.fail_persist: Exception | None = None

    async def persist(self, messages: Sequence[Message]) -> None:
        await asyncio.sleep(0)  # a real store answers from another thread
        if self.fail_persist is not None:
            raise self.fail_persist
        self.persist_calls.append([m.message_id for m in messages])
        for message in messages:
            self.messages[message.message_id] = message

    async def acknowledge(self, message_ids: Sequence[str]) -> None:
        self.ack_calls.append(list(message_ids))
        self.acked.update(i for i in message_ids if i in self.messages)

    async def pending(self) -> list[Message]:
        return [m for i, m in self.messages.items() if i not in self.acked]

    def seen(self, message_id: str) -> bool:
        return message_id in self.messages

    def crash(self) -> MemoryOutbox:
        """What a restarted node finds: persisted messages and acknowledgements so far."""
        survivor = MemoryOutbox()
        survivor.messages = {i: Message.from_json(m.to_json()) for i, m in self.messages.items()}
        survivor.acked = set(self.acked)
        return survivor


class Recorder:
    """A synchronous ``deliver`` callback that keeps what it receives.

    ``then`` runs after recording (e.g. to reply through the router).
    """

    def __init__(self, then: Callable[[Message], None] | None = None) -> None:
        self.messages: list[Message] = []
        self.then = then

    def __call__(self, message: Message) -> None:
        self.messages.append(message)
        if self.then is not None:
            self.then(message)

    @property
    def performatives(self) -> list[str]:
        return [m.performative.value for m in self.messages]

    @property
    def contents(self) -> list[object]:
        return [m.content for m in self.messages]


async def eventually(predicate: Callable[[], object], timeout: float = 5.0) -> None:
    """Wait until ``predicate()`` is true, polling every millisecond.

    ``timeout`` only bounds a test that would otherwise hang: it is not a timing check.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached within {timeout:g}s")
        await asyncio.sleep(0.001)
