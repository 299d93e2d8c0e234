"""At-least-once delivery through a DurableOutbox (the in-memory double)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest

from caxton.errors import CaxtonError
from caxton.messaging import Message, Performative, Router
from caxton.testing.messaging import (
    DurableOutboxConformance,
    MemoryOutbox,
    Recorder,
    eventually,
)

P = Performative


def durable_router(outbox: MemoryOutbox, **kw: object) -> Router:
    return Router(
        node_id="n1",
        guarantee="at-least-once",
        outbox=outbox,
        cleanup_interval=0,
        **kw,  # type: ignore[arg-type]
    )


def msg(content: object = None, receiver: str = "b", **kw: object) -> Message:
    return Message(P.INFORM, "a", receiver, content, **kw)  # type: ignore[arg-type]


async def test_send_returns_once_persisted_and_acknowledges_after_delivery() -> None:
    outbox = MemoryOutbox()
    router = durable_router(outbox)
    delivered_while_unpersisted: list[bool] = []

    def deliver(message: Message) -> None:
        delivered_while_unpersisted.append(message.message_id not in outbox.messages)

    router.register("b", deliver)
    await router.start()
    message = msg("hello")
    await router.send(message)
    assert message.message_id in outbox.messages  # persisted before send returned
    assert delivered_while_unpersisted == [False]  # never delivered before it was durable
    await router.drain(5)
    await eventually(lambda: message.message_id in outbox.acked)  # written behind
    assert await outbox.pending() == []
    await router.close()


async def test_send_nowait_persists_in_groups_before_delivering() -> None:
    outbox = MemoryOutbox()
    router = durable_router(outbox)
    b = Recorder()
    router.register("b", b)
    await router.start()
    for i in range(50):
        router.send_nowait(msg(i))
    assert b.contents == []  # nothing delivered before the group commit
    await router.drain(5)
    assert b.contents == list(range(50))
    assert len(outbox.persist_calls) < 50  # group commit
    assert sum(len(call) for call in outbox.persist_calls) == 50
    await router.close()
    assert len(outbox.acked) == 50


async def test_duplicates_are_dropped_by_message_id() -> None:
    outbox = MemoryOutbox()
    router = durable_router(outbox)
    b = Recorder()
    router.register("b", b)
    message = msg("once")
    await router.send(message)
    await router.send(Message.from_json(message.to_json()))  # a retransmission
    await router.drain(5)
    assert b.contents == ["once"]
    assert router.queue_stats()["totals"]["duplicates"] == 1
    await router.close()


async def test_undelivered_messages_are_replayed_after_a_crash() -> None:
    outbox = MemoryOutbox()
    router = durable_router(outbox)
    b = Recorder()
    router.register("b", b)
    await router.start()
    await router.send(msg("delivered"))
    router.hold("b")
    for i in range(3):
        await router.send(msg(i, conversation_id="c"))
    await router.drain(0.01)
    await eventually(lambda: len(outbox.acked) == 1)  # "delivered" only
    survivor = outbox.crash()  # the process dies: queues in memory are gone

    restarted = durable_router(survivor)
    again = Recorder()
    restarted.register("b", again)
    await restarted.start()
    await restarted.drain(5)
    assert again.contents == [0, 1, 2]
    await restarted.close()
    assert await survivor.pending() == []


async def test_replayed_messages_wait_for_their_agent_to_register() -> None:
    outbox = MemoryOutbox()
    await outbox.persist([msg("for-late-agent", receiver="late")])
    router = durable_router(outbox)
    await router.start()
    assert router.queue_stats()["totals"]["parked"] == 1
    late = Recorder()
    router.register("late", late)
    await router.drain(5)
    assert late.contents == ["for-late-agent"]
    await router.close()


async def test_replayed_messages_for_agents_that_never_return_are_dead_lettered() -> None:
    now = [0.0]
    outbox = MemoryOutbox()
    await outbox.persist([msg("orphan", receiver="gone")])
    router = durable_router(outbox, clock=lambda: now[0], message_ttl=30)
    await router.start()
    now[0] += 31
    router.expire()
    [letter] = router.dead_letters()
    assert letter.reason == "undeliverable: Agent not found: gone (replayed after a restart)"
    await eventually(lambda: outbox.acked)
    assert await outbox.pending() == []  # handled: it is not replayed forever
    await router.close()


async def test_a_message_that_could_not_be_persisted_is_not_sent() -> None:
    outbox = MemoryOutbox()
    router = durable_router(outbox)
    b = Recorder()
    router.register("b", b)
    outbox.fail_persist = OSError("disk full")
    with pytest.raises(CaxtonError, match=r"^Message not persisted, not sent: disk full$"):
        await router.send(msg("lost"))
    router.send_nowait(msg("lost too"))
    await router.drain(5)
    assert b.contents == []
    assert router.dead_letters()[0].reason == "not persisted: disk full"
    await router.close()


async def test_dead_lettered_durable_messages_are_acknowledged() -> None:
    outbox = MemoryOutbox()
    router = durable_router(outbox)

    def failing(message: Message) -> None:
        raise RuntimeError("trap")

    router.register("b", failing)
    await router.send(msg("x"))
    await router.drain(5)
    await router.close()
    assert await outbox.pending() == []
    assert router.dead_letters()[0].reason == "delivery error: RuntimeError: trap"


class TestMemoryOutbox(DurableOutboxConformance):
    """The double honours the contract the real store is held to."""

    outboxes: ClassVar[dict[Path, MemoryOutbox]] = {}

    async def open_outbox(self, path: Path) -> MemoryOutbox:
        previous = self.outboxes.get(path)
        outbox = previous.crash() if previous is not None else MemoryOutbox()
        self.outboxes[path] = outbox
        return outbox
