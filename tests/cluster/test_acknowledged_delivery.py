"""Acknowledged node-to-node delivery, in one process: three nodes over the real tcp
transport, at-least-once, with :class:`caxton.testing.cuts.ConnectionCuts` dropping what one
node writes to another on its connections, as a firewall rule would.

Each test is a way the fault campaign lost messages answered 202 (issue 12): the
transport took the frame, the connection closed, nothing came of it. Acknowledged, the
sender keeps the message in its outbox until the receiving node answers that it holds
it, sends it again after the connection closes, and the receiver drops what it already
has by message id; or, past the message TTL, dead-letters it with the reason.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from test_cluster_routing import eventually
from test_placement_cluster import ask, crash, deploy, start_cluster
from test_placement_cluster import factory as factory  # the fixture

from caxton.cluster.placement import DeploySpec, deploy_local
from caxton.errors import RequestTimeout
from caxton.messaging import Message, Performative
from caxton.node import Node
from caxton.testing import NodeFactory
from caxton.testing.cuts import ConnectionCuts

AT_LEAST_ONCE = {"messaging.delivery_guarantee": "at-least-once"}


def sink(node: Node, name: str) -> list[Any]:
    """A stand-in agent on ``node`` recording the content of what it gets."""
    received: list[Any] = []
    node.router.register(name, lambda message: received.append(message.content))
    node.cluster.announce(name)
    return received


async def known(nodes: list[Node], name: str, where: str) -> None:
    for node in nodes:
        await eventually(
            lambda node=node: [e.node_id for e in node.cluster.registry.lookup(name)] == [where]
        )


def inform(content: Any, receiver: str = "sink") -> Message:
    return Message(Performative.INFORM, sender="tester", receiver=receiver, content=content)


def cut_network(nodes: list[Node]) -> ConnectionCuts:
    cuts = ConnectionCuts()
    for node in nodes:
        cuts.attach(node.transport)
    return cuts


async def sink_on_n3(
    factory: NodeFactory, **config: Any
) -> tuple[list[Node], list[Any], ConnectionCuts]:
    """Three at-least-once nodes, a sink on n3 that n1 knows, cuts attached."""
    nodes = await start_cluster(factory, **AT_LEAST_ONCE, **config)
    received = sink(nodes[2], "sink")
    await known([nodes[0]], "sink", "n3")
    return nodes, received, cut_network(nodes)


async def restart(factory: NodeFactory, node: Node, seed: Node, config: Any) -> Node:
    """Stop ``node`` (crashed already) and start it again with its data and address."""
    address, seed_address = node.cluster_address, seed.cluster_address
    assert address is not None
    assert seed_address is not None
    await node.stop()
    again = factory.build(
        node.node_id,
        join=[f"127.0.0.1:{seed_address[1]}"],
        config={**config, "coordination.cluster.bind_addr": f"127.0.0.1:{address[1]}"},
    )
    await again.start()
    return again


async def settled(node: Node) -> None:
    """Nothing of ``node``'s is waiting to be forwarded or acknowledged any more."""
    await eventually(lambda: node.router.queue_stats()["totals"]["forwarding"] == 0, 20)


async def dead_letters(node: Node, message_id: str) -> list[dict[str, Any]]:
    """``GET /api/v1/queues/dead-letters?message_id=`` on ``node``."""
    assert node.api_address is not None
    host, port = node.api_address
    url = f"http://{host}:{port}/api/v1/queues/dead-letters"
    async with (
        aiohttp.ClientSession() as http,
        http.get(url, params={"message_id": message_id}) as response,
    ):
        assert response.status == 200
        letters: list[dict[str, Any]] = (await response.json())["dead_letters"]
        return letters


async def test_a_message_the_transport_took_as_the_connection_closed_arrives_after_reconnect(
    factory: NodeFactory,
) -> None:
    n1, n2, _ = await start_cluster(factory, **AT_LEAST_ONCE)
    received = sink(n2, "sink")
    await known([n1], "sink", "n2")
    await n1.router.send(inform("warm-up"))
    await eventually(lambda: received == ["warm-up"])
    cuts = cut_network([n1, n2])
    cuts.cut("n1", "n2")
    await n1.router.send(inform("in the buffer"))  # 202: persisted, handed to the transport
    await eventually(lambda: cuts.dropped.get(("n1", "n2"), 0) > 0)
    assert cuts.close_connections("n1", "n2") > 0  # the frame dies with the connection
    cuts.heal()
    await eventually(lambda: received == ["warm-up", "in the buffer"], 20)
    await settled(n1)
    assert n1.router.dead_letters() == []


@pytest.mark.parametrize(
    ("source", "target"),
    [("n1", "n3"), ("n3", "n1")],
    ids=["messages-lost", "acknowledgements-lost"],
)
async def test_forwards_across_a_one_way_cut_are_delivered_once_after_the_heal(
    factory: NodeFactory, source: str, target: str
) -> None:
    nodes, received, cuts = await sink_on_n3(factory)
    n1 = nodes[0]
    cuts.cut(source, target)
    for i in range(20):
        await n1.router.send(inform(i))
    await eventually(lambda: cuts.dropped.get((source, target), 0) > 0)
    await asyncio.sleep(0.2)
    cuts.close_connections("n1", "n3")
    cuts.heal()
    await eventually(lambda: len(received) >= 20, 20)
    await settled(n1)
    assert sorted(received) == list(range(20))  # each once: resent ones were duplicates
    assert n1.router.dead_letters() == []


async def test_forwards_across_a_bridge_are_delivered_after_the_heal(
    factory: NodeFactory,
) -> None:
    # n1 and n3 cannot talk; n2 talks to both (membership keeps everyone alive).
    nodes, received, cuts = await sink_on_n3(factory)
    n1 = nodes[0]
    cuts.cut_both("n1", "n3")
    sent = [f"across the bridge {i}" for i in range(5)]
    for content in sent:
        await n1.router.send(inform(content))
    await eventually(lambda: cuts.dropped.get(("n1", "n3"), 0) > 0)
    cuts.close_connections("n1", "n3")  # resent while still cut: dropped again
    await asyncio.sleep(0.5)
    assert received == []
    cuts.heal()
    cuts.close_connections("n1", "n3")
    await eventually(lambda: sorted(received) == sorted(sent), 20)
    await settled(n1)


async def test_a_cut_longer_than_the_ttl_dead_letters_with_the_reason_in_the_api(
    factory: NodeFactory,
) -> None:
    nodes, received, cuts = await sink_on_n3(factory, **{"messaging.message_ttl": "2s"})
    n1 = nodes[0]
    cuts.cut_both("n1", "n3")
    message = inform("never arrives")
    await n1.router.send(message)
    await eventually(lambda: cuts.dropped.get(("n1", "n3"), 0) > 0)
    cuts.close_connections("n1", "n3")
    await settled(n1)
    letters = await dead_letters(n1, message.message_id)
    assert len(letters) == 1
    assert letters[0]["receiver"] == "sink"
    assert "forwarding to sink failed" in letters[0]["reason"]
    assert "message TTL of 2s" in letters[0]["reason"]
    assert received == []


async def test_a_reply_to_a_client_that_stopped_waiting_is_dead_lettered_at_once(
    factory: NodeFactory,
) -> None:
    """A client asked an agent on n3 through n1 and gave up before the reply came (or a
    second copy of its at-least-once request was answered too). n1 refuses the late reply
    for good, so n3 dead-letters it at once: looking for that client in the cluster
    until the message TTL ran out (a minute) held up n3's leave as long, since a leave
    waits for what the node has to hand over (a rolling restart under load)."""
    nodes = await start_cluster(factory, **AT_LEAST_ONCE)
    n1, _, n3 = nodes
    asked: list[Message] = []
    n3.router.register("slow", asked.append)  # takes requests, answers when told to
    n3.cluster.announce("slow")
    await known([n1], "slow", "n3")
    request = Message(Performative.REQUEST, sender="", receiver="slow", content="hi")
    with pytest.raises(RequestTimeout):
        await n1.router.request(request, 0.5)
    await eventually(lambda: len(asked) == 1)
    late = asked[0].create_reply(Performative.INFORM, "late", sender="slow")
    await n3.router.send(late)
    await settled(n3)
    letters = await dead_letters(n3, late.message_id)
    assert len(letters) == 1, letters
    assert letters[0]["receiver"] == request.sender
    assert "is no longer waiting for a reply (refused by n1)" in letters[0]["reason"]


async def test_a_receiver_restarted_with_an_unacknowledged_message_delivers_each_once(
    factory: NodeFactory, tmp_path_factory: Any
) -> None:
    """The first message reaches n2 (and its agent) but its acknowledgement is lost; the
    second is lost on the way. n2 restarts; n1 sends both again: n2 drops the first as
    a duplicate (its id is in n2's persisted window) and takes the second."""
    from caxton.testing.sandbox import build_example_agents

    counter = build_example_agents(tmp_path_factory.mktemp("agents"))["counter"]
    config = {**AT_LEAST_ONCE, "coordination.cluster.failover": False}
    nodes = await start_cluster(factory, **config)
    n1, n2, n3 = nodes
    status, agent, _ = await deploy(n1, {"name": "counter", "target_node": "n2"}, counter)
    assert status == 201, agent
    await known([n1], "counter", "n2")
    assert await ask(n1, "counter", "tick") == {"count": 1}
    cuts = cut_network(nodes)
    cuts.cut("n2", "n1")  # acknowledgements (and replies) lost
    await n1.router.send(inform("first", receiver="counter"))
    await eventually(lambda: n2.agents.get("counter").counters.messages_handled >= 2)
    cuts.cut("n1", "n2")  # now the messages too
    await n1.router.send(inform("second", receiver="counter"))
    await eventually(lambda: cuts.dropped.get(("n1", "n2"), 0) > 0)
    await crash(n2)
    cuts.heal()
    again = await restart(factory, n2, n1, config)
    await known([n1], "counter", "n2")
    await settled(n1)
    # tick, first, second (each once), and this one
    assert await ask(n1, "counter", "tick") == {"count": 4}
    for node in (n1, again, n3):  # (the counter's answers to "tester", nobody, aside)
        assert [
            d.reason for d in node.router.dead_letters() if d.message.receiver != "tester"
        ] == []


async def test_a_sender_restarted_before_the_acknowledgement_sends_again(
    factory: NodeFactory,
) -> None:
    """n1's frame never reaches n2, and n1 stops: the message stays unacknowledged in
    n1's outbox, and the restarted n1 forwards it once it resolves names again."""
    nodes = await start_cluster(factory, **AT_LEAST_ONCE)
    n1, n2, _ = nodes
    received = sink(n2, "sink")
    await known([n1], "sink", "n2")
    cuts = cut_network(nodes)
    cuts.cut("n1", "n2")
    await n1.router.send(inform("before the restart"))
    await eventually(lambda: cuts.dropped.get(("n1", "n2"), 0) > 0)
    await crash(n1)
    cuts.heal()
    again = await restart(factory, n1, n2, AT_LEAST_ONCE)
    await eventually(lambda: received == ["before the restart"], 20)
    await settled(again)
    assert again.router.dead_letters() == []


async def test_messages_queued_for_a_copy_that_loses_its_claim_go_to_the_winner(
    factory: NodeFactory, tmp_path_factory: Any
) -> None:
    """Two copies of one placement (a paused node's and the one the majority started):
    the higher node id's copy is removed, and what queued for it is forwarded to the
    winning copy instead of being dead-lettered."""
    from caxton.testing.sandbox import build_example_agents

    counter = build_example_agents(tmp_path_factory.mktemp("agents"))["counter"]
    n1, n2 = await start_cluster(factory, ("n1", "n2"), **AT_LEAST_ONCE)
    status, agent, _ = await deploy(n2, {"name": "twin", "target_node": "n2"}, counter)
    assert status == 201, agent
    n2.router.hold("twin")  # the paused copy: messages queue, none is handled
    for i in range(5):
        await n2.router.send(inform(i, receiver="twin"))
    assert n2.router.queue_stats()["agents"]["twin"]["queued"] == 5
    await deploy_local(n1, DeploySpec("twin", agent_id=agent["id"]), counter)
    await eventually(lambda: "twin" not in n2.agents, 20)
    await known([n1, n2], "twin", "n1")
    await settled(n2)
    for node in (n1, n2):
        assert [d.reason for d in node.router.dead_letters() if d.message.receiver == "twin"] == []
    # the five held ones reached the winning copy, then this one
    assert await ask(n2, "twin", "tick") == {"count": 6}


async def test_a_peer_of_wire_version_1_gets_unacknowledged_frames_logged_once(
    factory: NodeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A node that gossips no ``wire`` (the release before acknowledgements) is sent
    version 1 frames, as before; the sender says so once."""
    n1, n2, _ = await start_cluster(factory, **AT_LEAST_ONCE)
    update = n2.membership.update_metadata

    def as_an_older_node(meta: dict[str, Any]) -> None:
        update({k: v for k, v in meta.items() if k != "wire"})

    n2.membership.update_metadata = as_an_older_node
    n2.cluster._update_meta()
    await eventually(lambda: "wire" not in n1.membership.member("n2").meta)
    received = sink(n2, "sink")
    await known([n1], "sink", "n2")
    for i in range(3):
        await n1.router.send(inform(i))
    await eventually(lambda: received == [0, 1, 2])
    await settled(n1)
    warnings = [r for r in caplog.records if "without acknowledgements" in r.getMessage()]
    assert len(warnings) == 1
    assert "node n2 speaks MESSAGE frames up to version 1" in warnings[0].getMessage()
    assert n1.cluster.counts["forwarded"] >= 3
