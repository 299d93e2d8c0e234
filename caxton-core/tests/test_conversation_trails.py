"""The messages a conversation table keeps for sequence diagrams: the node's last
TRAIL_RING conversation messages, one append each; a trail is searched when asked."""

from __future__ import annotations

from caxton.messaging import Message, Performative
from caxton.messaging.conversations import TRAIL_MESSAGES, TRAIL_RING, ConversationTable


def message(conversation_id: str, n: int) -> Message:
    sender, receiver = ("a", "b") if n % 2 == 0 else ("b", "a")
    return Message(
        Performative.INFORM, sender=sender, receiver=receiver, content=n,
        conversation_id=conversation_id,
    )  # fmt: skip


def test_a_trail_has_the_conversations_messages_in_order() -> None:
    table = ConversationTable(ttl=60)
    sent = [message(f"c{n % 3}", n) for n in range(30)]
    for n, m in enumerate(sent):
        assert table.observe(m, 1000.0 + n) is None
    trail = table.trail("c1")
    assert [t["message_id"] for t in trail] == [m.message_id for m in sent[1::3]]
    assert trail[0] == {
        "at": 1001.0, "sender": "b", "receiver": "a", "performative": "inform",
        "message_id": sent[1].message_id,
    }  # fmt: skip
    assert table.trail("nope") == []


def test_trails_are_bounded() -> None:
    table = ConversationTable(ttl=60)
    long = [message("long", n) for n in range(TRAIL_MESSAGES + 5)]
    for m in long:
        table.observe(m, 1000.0)
    assert [t["message_id"] for t in table.trail("long")] == [
        m.message_id for m in long[-TRAIL_MESSAGES:]
    ]  # the latest ones
    assert table.get("long").message_count == TRAIL_MESSAGES + 5  # all counted
    for n in range(TRAIL_RING):
        table.observe(message(f"other-{n}", 0), 1000.0)
    assert table.trail("long") == []  # aged out of the ring
    assert table.get("long") is not None  # the conversation itself is still known
