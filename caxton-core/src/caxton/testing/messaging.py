"""Test helpers for messaging.

* :class:`MemoryOutbox`: an in-memory :class:`~caxton.messaging.DurableOutbox` with the
  store's semantics; :meth:`MemoryOutbox.crash` returns what a restarted node would find.
* :class:`DurableOutboxConformance`: the outbox contract the router relies on; the tests
  of an outbox implementation (the SQLite store, a plugin's) subclass it.
* :class:`Recorder`: a ``deliver`` callback that keeps what it receives.
* :func:`eventually`: wait for a condition without a timing assertion.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import ClassVar, TypeVar

from caxton.messaging import DurableOutbox, Message, Performative

__all__ = ["DurableOutboxConformance", "MemoryOutbox", "Recorder", "eventually"]

T = TypeVar("T")


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


class DurableOutboxConformance:
    """The contract of a :class:`~caxton.messaging.DurableOutbox`, as the router uses it.

    Subclass it in a test module (as ``TestSomething``) and implement
    :meth:`open_outbox` (and :meth:`close_outbox` when closing matters)::

        class TestStoreOutbox(DurableOutboxConformance):
            async def open_outbox(self, path):
                store = Store(path / "local.db")
                await store.open()
                return store

            async def close_outbox(self, outbox):
                await outbox.close()

    ``open_outbox`` called again with the same ``path`` must find what was persisted
    and acknowledged before (a restart). Each check runs in a fresh event loop, whatever
    ``asyncio_mode`` the project uses.
    """

    #: Set False when the implementation keeps nothing across :meth:`open_outbox` calls.
    survives_restart: ClassVar[bool] = True

    async def open_outbox(self, path: Path) -> DurableOutbox:
        raise NotImplementedError("subclasses return the outbox under test")

    async def close_outbox(self, outbox: DurableOutbox) -> None:
        """Close it (flushing what it writes behind); nothing by default."""

    @staticmethod
    def message(n: int) -> Message:
        return Message(Performative.INFORM, "a", "b", n, conversation_id="c")

    @staticmethod
    def run(coroutine: Awaitable[T]) -> T:
        async def wrapper() -> T:
            return await coroutine

        return asyncio.run(wrapper())

    def test_pending_returns_persisted_messages_oldest_first(self, tmp_path: Path) -> None:
        async def check() -> None:
            outbox = await self.open_outbox(tmp_path)
            sent = [self.message(i) for i in range(5)]
            await outbox.persist(sent[:2])
            await outbox.persist(sent[2:])
            pending = await outbox.pending()
            assert [m.message_id for m in pending] == [m.message_id for m in sent]
            assert pending == sent  # every field survives
            await self.close_outbox(outbox)

        self.run(check())

    def test_acknowledged_messages_are_no_longer_pending(self, tmp_path: Path) -> None:
        async def check() -> None:
            outbox = await self.open_outbox(tmp_path)
            sent = [self.message(i) for i in range(3)]
            await outbox.persist(sent)
            await outbox.acknowledge([sent[0].message_id, sent[2].message_id])
            await outbox.acknowledge(["never-persisted"])  # harmless
            assert [m.message_id for m in await outbox.pending()] == [sent[1].message_id]
            await self.close_outbox(outbox)

        self.run(check())

    def test_seen_knows_persisted_and_acknowledged_ids(self, tmp_path: Path) -> None:
        async def check() -> None:
            outbox = await self.open_outbox(tmp_path)
            first, second = self.message(1), self.message(2)
            assert not outbox.seen(first.message_id)
            await outbox.persist([first, second])
            await outbox.acknowledge([first.message_id])
            assert outbox.seen(first.message_id)  # delivered: a retransmission is a duplicate
            assert outbox.seen(second.message_id)
            assert not outbox.seen(self.message(3).message_id)
            await outbox.persist([])  # nothing to do
            await self.close_outbox(outbox)

        self.run(check())

    def test_a_restart_finds_what_was_not_acknowledged(self, tmp_path: Path) -> None:
        if not self.survives_restart:
            return

        async def check() -> None:
            outbox = await self.open_outbox(tmp_path)
            sent = [self.message(i) for i in range(3)]
            await outbox.persist(sent)
            await outbox.acknowledge([sent[1].message_id])
            await self.close_outbox(outbox)
            again = await self.open_outbox(tmp_path)
            pending = await again.pending()
            assert [m.message_id for m in pending] == [sent[0].message_id, sent[2].message_id]
            assert again.seen(sent[1].message_id)
            await self.close_outbox(again)

        self.run(check())
