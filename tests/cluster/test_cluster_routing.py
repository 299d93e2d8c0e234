"""Routing across nodes, in one process: three nodes from caxton.testing's factory,
wired over the real tcp transport (plaintext on loopback), agents played by Python
callbacks registered with each node's router."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from caxton.cluster import Delta
from caxton.cluster.registry import AgentEntry
from caxton.errors import AgentNotFound
from caxton.messaging import Message, Performative
from caxton.node import Node
from caxton.testing import NodeFactory

FAST = {
    "transport.plaintext": True,
    "coordination.cluster.gossip_interval": "100ms",
    "coordination.cluster.probe_interval": "250ms",
    "coordination.cluster.probe_timeout": "125ms",
}


async def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[list[Node]]:
    factory = NodeFactory(tmp_path, config=FAST)
    factory.register_driver("transport", "tcp", "caxton_transport_tcp.driver:TcpTransport")
    first = factory.build("n1", bootstrap=True)
    await first.start()
    seed = f"127.0.0.1:{first.cluster_address[1]}"
    try:
        for name in ("n2", "n3"):
            await factory.build(name, join=[seed]).start()
        started = factory.nodes
        await eventually(lambda: all(n.membership.cluster_size_estimate() == 3 for n in started))
        yield started
    finally:
        await factory.stop_all()


def register(node: Node, name: str, inbox: list[Message]) -> None:
    """A stand-in agent: records what it gets; answers requests with inform."""

    def deliver(message: Message) -> None:
        inbox.append(message)
        if message.performative is Performative.REQUEST:
            node.router.send_nowait(
                message.create_reply(Performative.INFORM, sender=name, content=message.content)
            )

    node.router.register(name, deliver)
    node.cluster.announce(name)


async def test_per_conversation_order_holds_across_nodes(nodes: list[Node]) -> None:
    n1, n2, _ = nodes
    received: list[Message] = []
    register(n2, "sink", received)
    await eventually(lambda: bool(n1.cluster.registry.lookup("sink")))
    conversations = [f"c{i}" for i in range(4)]
    total = 2000
    for i in range(total):
        message = Message(
            Performative.INFORM,
            sender="source",
            receiver="sink",
            content=i,
            conversation_id=conversations[i % 4],
        )
        if i % 2:
            await n1.router.send(message)
        else:
            n1.router.send_nowait(message)
    await eventually(lambda: len(received) == total)
    for conversation in conversations:
        seen = [m.content for m in received if m.conversation_id == conversation]
        assert seen == sorted(seen)


async def test_replies_reach_a_client_waiting_on_another_node(nodes: list[Node]) -> None:
    n1, _, n3 = nodes
    register(n3, "responder", [])
    await eventually(lambda: bool(n1.cluster.registry.lookup("responder")))
    replies = await asyncio.gather(
        *(
            n1.router.request(
                Message(Performative.REQUEST, sender="", receiver="responder", content=i), 5.0
            )
            for i in range(50)
        )
    )
    assert [r.content for r in replies] == list(range(50))
    assert all(r.receiver.startswith("client-") for r in replies)


async def test_a_fipa_request_conversation_spans_nodes(nodes: list[Node]) -> None:
    n1, n2, _ = nodes

    def deliver(message: Message) -> None:  # agree, then inform: fipa-request
        for answer in (Performative.AGREE, Performative.INFORM):
            n2.router.send_nowait(
                message.create_reply(answer, sender="worker", content={"done": message.content})
            )

    n2.router.register("worker", deliver)
    n2.cluster.announce("worker")
    await eventually(lambda: bool(n1.cluster.registry.lookup("worker")))
    request = Message(
        Performative.REQUEST, sender="", receiver="worker", content=7, protocol="fipa-request"
    )
    reply = await n1.router.request(request, 5.0)
    assert reply.performative is Performative.INFORM
    assert reply.content == {"done": 7}
    assert reply.conversation_id == request.conversation_id
    for node in (n1, n2):  # both routers followed the conversation to its end
        conversation = node.router.conversation(request.conversation_id)
        assert conversation is not None
        assert conversation.to_dict()["state"] == "done", node.node_id
        assert conversation.message_count == 3, node.node_id


async def test_a_stale_registry_asks_the_peers(nodes: list[Node]) -> None:
    n1, n2, _ = nodes
    received: list[Message] = []
    register(n2, "late", received)
    await eventually(lambda: bool(n1.cluster.registry.lookup("late")))
    n1.cluster.registry.drop_node("n2")  # as if every push and pull had been lost
    assert n1.cluster.registry.lookup("late") == []
    await n1.router.send(Message(Performative.INFORM, sender="x", receiver="late", content=1))
    await eventually(lambda: len(received) == 1)
    assert [e.node_id for e in n1.cluster.registry.lookup("late")] == ["n2"]


async def test_an_unknown_name_is_agent_not_found_after_asking(nodes: list[Node]) -> None:
    n1, _, _ = nodes
    with pytest.raises(AgentNotFound, match="Agent not found: nobody"):
        await n1.router.send(Message(Performative.INFORM, sender="x", receiver="nobody"))
    assert n1.cluster.counts["lookups"] >= 1


async def test_a_wrong_route_costs_one_hop_and_is_dead_lettered(nodes: list[Node]) -> None:
    n1, n2, n3 = nodes
    # n1 is told (wrongly) that n2 hosts "ghost": n2 forwards once, nobody hosts it.
    epoch, counter = n1.cluster.registry.known_version("n2") or (0, 0)
    forged = Delta(
        "n2",
        epoch,
        counter,
        counter + 1,
        False,
        (AgentEntry("ghost", "n2", "running", counter + 1),),
    )
    assert n1.cluster.registry.apply(forged) is not None
    await n1.router.send(Message(Performative.INFORM, sender="x", receiver="ghost"))
    await eventually(
        lambda: any("Agent not found: ghost" in d.reason for d in n2.router.dead_letters())
    )
    await asyncio.sleep(0.2)
    assert n1.cluster.counts["forwarded"] == 1
    assert n3.cluster.counts["received"] == 0  # asked "where", but sent nothing


async def test_membership_events_reach_watchers_and_status(nodes: list[Node]) -> None:
    n1, _, n3 = nodes
    async with n1.cluster.watch() as events:
        await n3.stop()  # a graceful stop leaves the cluster
        event = await asyncio.wait_for(_next(events, "left"), 10)
    assert event.node_id == "n3"
    assert n1.cluster.status()["nodes_known"] == 2


async def _next(queue: asyncio.Queue[Any], kind: str) -> Any:
    while True:
        event = await queue.get()
        if event.kind == kind:
            return event


async def test_an_allow_list_refuses_a_sender_on_another_node(nodes: list[Node]) -> None:
    n1, n2, _ = nodes
    guarded: list[Message] = []
    register(n2, "guarded", guarded)
    n2.context.services["agent_policy"].set("guarded", ["friend-*"])
    await eventually(lambda: bool(n1.cluster.registry.lookup("guarded")))
    stranger: list[Message] = []
    friend: list[Message] = []
    register(n1, "stranger", stranger)
    register(n1, "friend-1", friend)
    await eventually(lambda: bool(n2.cluster.registry.lookup("stranger")))
    for sender in ("stranger", "friend-1"):
        await n1.router.send(
            Message(Performative.REQUEST, sender=sender, receiver="guarded", content="hi")
        )
    await eventually(lambda: bool(stranger) and bool(friend))
    assert stranger[0].performative is Performative.REFUSE
    assert "does not accept messages from stranger" in str(stranger[0].content)
    assert friend[0].performative is Performative.INFORM
    assert [m.sender for m in guarded] == ["friend-1"]
    # A refusal is not a missing agent: n1 keeps its route to n2.
    assert n2.cluster.counts["refused"] == 1
    assert n1.cluster.registry.lookup("guarded")
