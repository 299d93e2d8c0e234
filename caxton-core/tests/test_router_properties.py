"""Property-based tests of the router's ordering: FIFO per conversation, priorities."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from caxton.messaging import Message, Performative, Priority, Router

conversations = st.none() | st.sampled_from(["c1", "c2", "c3"])
priorities = st.sampled_from(list(Priority))
sends = st.tuples(conversations, priorities)


def expected_order(batch: list[tuple[str | None, Priority]]) -> list[int]:
    """The documented order of a queued batch: by effective priority, then FIFO.

    A message's effective priority is its own, or that of the newest earlier queued
    message of its conversation when that is lower (it may not overtake it).
    """
    newest: dict[str, int] = {}
    keyed = []
    for seq, (conversation, priority) in enumerate(batch):
        effective = int(priority)
        if conversation is not None:
            effective = max(effective, newest.get(conversation, 0))
            newest[conversation] = effective
        keyed.append((effective, seq))
    return [seq for _, seq in sorted(keyed)]


@settings(max_examples=150, deadline=None)
@given(st.lists(sends, min_size=1, max_size=40))
def test_a_queued_batch_is_delivered_in_priority_order_fifo_per_conversation(
    batch: list[tuple[str | None, Priority]],
) -> None:
    async def scenario() -> list[int]:
        router = Router(node_id="n1")
        delivered: list[int] = []
        router.register("b", lambda m: delivered.append(m.content))
        router.hold("b")
        for seq, (conversation, priority) in enumerate(batch):
            await router.send(
                Message(
                    Performative.INFORM,
                    "a",
                    "b",
                    seq,
                    conversation_id=conversation,
                    priority=priority,
                )
            )
        router.release("b")
        await router.drain(5)
        await router.close()
        return delivered

    assert asyncio.run(scenario()) == expected_order(batch)


operations = st.lists(
    st.one_of(
        sends.map(lambda s: ("send", *s)),
        sends.map(lambda s: ("send-from-agent", *s)),
        st.just(("hold", None, None)),
        st.just(("release", None, None)),
        st.just(("yield", None, None)),
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(operations, st.booleans(), st.booleans())
def test_fifo_per_conversation_survives_any_interleaving(
    ops: list[tuple[str, str | None, Priority | None]], direct: bool, async_receiver: bool
) -> None:
    """Direct, pumped, held and agent-originated sends mixed: per-conversation FIFO holds."""

    async def scenario() -> tuple[list[tuple[str | None, int]], int]:
        router = Router(node_id="n1", direct_delivery=direct, batch_size=3, pump_budget=5)
        delivered: list[tuple[str | None, int]] = []
        relay_queue: list[tuple[str | None, Priority]] = []
        sent = 0

        def send(conversation: str | None, priority: Priority) -> None:
            nonlocal sent  # numbered when really sent: that is the order to keep
            router.send_nowait(
                Message(
                    Performative.INFORM,
                    "a",
                    "b",
                    sent,
                    conversation_id=conversation,
                    priority=priority,
                )
            )
            sent += 1

        def record(message: Message) -> None:
            delivered.append((message.conversation_id, message.content))

        async def record_async(message: Message) -> None:
            await asyncio.sleep(0)
            record(message)

        def relay(message: Message) -> None:  # an agent sending from inside its delivery
            send(*relay_queue.pop(0))

        router.register("b", record_async if async_receiver else record)
        router.register("relay", relay)
        for op, conversation, priority in ops:
            if op == "send":
                assert priority is not None
                send(conversation, priority)
            elif op == "send-from-agent":
                assert priority is not None
                relay_queue.append((conversation, priority))
                router.send_nowait(Message(Performative.INFORM, "a", "relay"))
            elif op == "hold":
                router.hold("b")
            elif op == "release":
                router.release("b")
            else:
                await asyncio.sleep(0)
        router.release("b")
        assert await router.drain(5) == 0
        await router.close()
        return delivered, sent

    delivered, sent = asyncio.run(scenario())
    assert sorted(seq for _, seq in delivered) == list(range(sent))  # each exactly once
    for conversation in ("c1", "c2", "c3"):
        in_conversation = [seq for c, seq in delivered if c == conversation]
        assert in_conversation == sorted(in_conversation), conversation
