"""The router's side of acknowledged node-to-node delivery (caxton.messaging.remote) and
the version 2 MESSAGE frame (caxton.cluster.wire), without a cluster: routes are test
doubles whose acknowledgements the test settles."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from caxton.cluster import wire
from caxton.errors import AgentNotFound, TransportError, ValidationError
from caxton.messaging import Message, Performative, Router
from caxton.messaging.remote import Acknowledgement
from caxton.testing.messaging import MemoryOutbox


def inform(content: Any, receiver: str = "far") -> Message:
    return Message(Performative.INFORM, sender="here", receiver=receiver, content=content)


class AckedRoute:
    """A node that answers each forwarded message through a future the test settles."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sent: list[tuple[Message, Acknowledgement]] = []

    async def forward(self, message: Message) -> Acknowledgement:
        ack: Acknowledgement = asyncio.get_running_loop().create_future()
        self.sent.append((message, ack))
        return ack

    def contents(self) -> list[Any]:
        return [message.content for message, _ in self.sent]


def routed(router: Router, route: AckedRoute) -> AckedRoute:
    """Make ``route`` where ``router`` finds every name not registered on it."""

    async def resolve(name: str) -> AckedRoute:
        return route

    router.resolver = resolve
    return route


@pytest.fixture
async def outbox() -> MemoryOutbox:
    return MemoryOutbox()


@pytest.fixture
async def router(outbox: MemoryOutbox) -> AsyncIterator[Router]:
    router = Router(node_id="n1", guarantee="at-least-once", outbox=outbox, message_ttl=2.0)
    await router.start()
    yield router
    await router.close()


async def until(check: Any, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_the_outbox_row_is_done_only_when_the_receiving_node_answers(
    router: Router, outbox: MemoryOutbox
) -> None:
    route = routed(router, AckedRoute("n2"))
    message = inform(1)
    await router.send(message)
    await until(lambda: len(route.sent) == 1)
    await asyncio.sleep(0.05)
    assert message.message_id not in outbox.acked  # the transport took it: not enough
    assert router.pending() == 1
    route.sent[0][1].set_result(None)
    await until(lambda: message.message_id in outbox.acked)
    assert router.pending() == 0
    assert router.queue_stats()["totals"]["forwarded"] == 1


async def test_messages_are_sent_on_without_waiting_for_answers(router: Router) -> None:
    route = routed(router, AckedRoute("n2"))
    for i in range(50):
        await router.send(inform(i))
    await until(lambda: len(route.sent) == 50)
    assert route.contents() == list(range(50))  # in order, all outstanding at once


async def test_an_unanswered_message_is_sent_again_resolved_anew(
    router: Router, outbox: MemoryOutbox
) -> None:
    first, second = AckedRoute("n2"), AckedRoute("n3")
    routes = [first, second]

    async def resolve(name: str) -> AckedRoute:
        return routes[0]

    router.resolver = resolve
    message = inform("moving")
    await router.send(message)
    await until(lambda: len(first.sent) == 1)
    routes.pop(0)  # the agent moved meanwhile
    first.sent[0][1].set_exception(TransportError("connection to n2 lost: reset"))
    await until(lambda: len(second.sent) == 1)
    assert second.sent[0][0] is message
    second.sent[0][1].set_result(None)
    await until(lambda: message.message_id in outbox.acked)
    assert router.dead_letters() == []


async def test_a_miss_is_resent_and_an_agent_found_nowhere_waits_until_the_ttl(
    router: Router,
) -> None:
    route = AckedRoute("n2")
    found: list[AckedRoute | None] = [route]

    async def resolve(name: str) -> AckedRoute | None:
        return found[0]

    router.resolver = resolve
    message = inform("gone")
    await router.send(message)
    await until(lambda: len(route.sent) == 1)
    found[0] = None  # its node restarts, say: found nowhere for now
    route.sent[0][1].set_exception(AgentNotFound("Agent not found: far (on n2)"))
    await until(lambda: bool(router.dead_letters()), timeout=5.0)
    (letter,) = router.dead_letters()
    assert letter.message is message
    assert "Agent not found: far" in letter.reason
    assert "message TTL of 2s" in letter.reason


async def test_a_reason_from_the_receiving_node_dead_letters_at_once(
    router: Router, outbox: MemoryOutbox
) -> None:
    route = routed(router, AckedRoute("n2"))
    message = inform("refused")
    await router.send(message)
    await until(lambda: len(route.sent) == 1)
    route.sent[0][1].set_result("undeliverable: refused: not allowed (refused by n2)")
    await until(lambda: bool(router.dead_letters()))
    assert router.dead_letters()[0].reason.startswith("undeliverable: refused")
    await until(lambda: message.message_id in outbox.acked)  # settled: not replayed


async def test_a_handed_over_name_forwards_its_queue_instead_of_dead_lettering(
    router: Router,
) -> None:
    got: list[Any] = []
    router.register("far", lambda message: got.append(message.content))
    router.hold("far")
    for i in range(3):
        await router.send(inform(i))
    winner = routed(router, AckedRoute("n2"))
    router.hand_over("far")
    router.unregister("far")
    await until(lambda: len(winner.sent) == 3)
    assert winner.contents() == [0, 1, 2]
    assert got == []
    assert router.dead_letters() == []


async def test_a_version_2_frame_round_trips_and_isolates_a_bad_message() -> None:
    good = inform({"n": 1})
    passed_on = wire.pack_message(inform(2), "n7")  # its sender is reached through n7
    frame = wire.encode_batch([wire.pack_message(good), b"\xc1", passed_on])
    decoded = wire.decode_batch(frame)
    assert not isinstance(decoded[0], ValidationError)
    assert decoded[0][0].message_id == good.message_id
    assert decoded[0][1] is None
    assert isinstance(decoded[1], ValidationError)
    assert not isinstance(decoded[2], ValidationError)
    assert (decoded[2][0].content, decoded[2][1]) == (2, "n7")
    # An older node takes it as a message (unknown fields are ignored).
    assert Message.from_dict(wire.msgpack.unpackb(passed_on)).content == 2
    assert wire.decode_message(wire.encode_message(good, 1, "n7"))[1:] == (1, "n7")
    with pytest.raises(ValidationError, match="unsupported message frame"):
        wire.decode_batch(wire.encode_message(good))  # a version 1 frame
    answer = wire.pack([None, ["miss", "Agent not found: x"], ["dead", "queue full"]])
    assert wire.decode_results(answer, 3) == [
        None,
        ("miss", "Agent not found: x"),
        ("dead", "queue full"),
    ]
    with pytest.raises(ValidationError):
        wire.decode_results(answer, 2)  # one answer per message, or none is trusted
    with pytest.raises(ValidationError):
        wire.decode_results(wire.pack([["lost", "?"]]), 1)


async def test_a_resend_arriving_while_the_first_copy_is_being_persisted_is_a_duplicate(
    router: Router,
) -> None:
    """The first copy is staged, not yet in the outbox, when the resend arrives (both in
    one batch, or two batches of one loop turn): the resend is still dropped."""
    got: list[Any] = []
    router.register("far", lambda message: got.append(message.content))
    message = inform("once")
    first = router.accept_forwarded(message)
    again = router.accept_forwarded(Message.from_json(message.to_json()))
    assert first is not None
    assert again is not None
    await asyncio.gather(first, again)
    await until(lambda: got == ["once"])
    await asyncio.sleep(0.05)
    assert got == ["once"]
    assert router.queue_stats()["totals"]["duplicates"] == 1
