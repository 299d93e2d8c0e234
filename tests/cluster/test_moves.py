"""Live moves of one agent, in one process: three nodes over the real tcp transport, the
counter agent (its count in its key/value state) as the real wasm module. Each failure
case of docs/cluster.md, "Moving an agent", ends with exactly one running copy."""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

import aiohttp
import pytest
from test_cluster_routing import eventually
from test_failover_cluster import hosts, replicated
from test_fenced_ownership import links as links  # the fixture
from test_fenced_ownership import tick
from test_placement_cluster import ask, crash, deploy, start_cluster
from test_placement_cluster import factory as factory  # the fixture

from caxton.cluster import moves
from caxton.drivers import FrameKind
from caxton.messaging import Message, Performative
from caxton.node import Node
from caxton.testing import NodeFactory
from caxton.testing.network import LinkCuts

AT_LEAST_ONCE = {"messaging.delivery_guarantee": "at-least-once"}


@pytest.fixture(scope="module")
def counter(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    from caxton.testing.sandbox import build_example_agents

    return build_example_agents(tmp_path_factory.mktemp("agents"))["counter"]


async def move_over_rest(node: Node, agent_id: str, to: str) -> tuple[int, dict[str, Any]]:
    assert node.api_address is not None
    host, port = node.api_address
    url = f"http://{host}:{port}/api/v1/agents/{agent_id}/move"
    async with aiohttp.ClientSession() as http, http.post(url, json={"to": to}) as response:
        return response.status, await response.json()


async def rest(node: Node, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    assert node.api_address is not None
    host, port = node.api_address
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"http://{host}:{port}{path}", json=body) as response,
    ):
        return response.status, await response.json()


async def counted(node: Node, name: str = "counter") -> int:
    reply = await ask(node, name, "tick")
    return int(reply["count"])


async def deployed_counter(nodes: list[Node], counter: bytes, on: str = "n3") -> dict[str, Any]:
    status, agent, _ = await deploy(nodes[0], {"name": "counter", "target_node": on}, counter)
    assert status == 201, agent
    await replicated([n for n in nodes if n.node_id != on], agent["id"])
    return agent


def one_copy(nodes: list[Node], name: str = "counter") -> str:
    where = hosts(nodes, name)
    assert len(where) == 1, where
    return where[0]


async def test_a_move_through_any_node_carries_the_state_and_switches_the_registry(
    factory: NodeFactory, counter: bytes
) -> None:
    nodes = await start_cluster(factory)
    n1, n2, n3 = nodes
    agent = await deployed_counter(nodes, counter)
    for expected in (1, 2, 3):
        assert await counted(n1) == expected
    status, moved = await move_over_rest(n2, agent["id"], "n1")  # asked of a third node
    assert status == 200, moved
    assert moved["node_id"] == "n1"
    assert moved["moved_from"] == "n3"
    assert moved["generation"] == 2
    assert one_copy(nodes) == "n1"
    assert n1.agents.get("counter").id == agent["id"]
    assert await counted(n2) == 4  # nothing lost, nothing counted twice
    for node in nodes:
        await eventually(
            lambda node=node: [e.node_id for e in node.cluster.registry.lookup("counter")] == ["n1"]
        )
    assert any("Agent 'counter' moved from n3 to n1" in e.text for e in n3.cluster.recent_events())
    # And back to its old node, which kept its rows as a holder of the new generation.
    status, moved = await move_over_rest(n1, agent["id"], "n3")
    assert status == 200, moved
    assert moved["generation"] > 2  # a replica set change may have taken one more
    assert one_copy(nodes) == "n3"
    assert await counted(n1) == 5


async def test_moves_are_refused_with_a_reason(factory: NodeFactory, counter: bytes) -> None:
    nodes = await start_cluster(factory)
    n1 = nodes[0]
    agent = await deployed_counter(nodes, counter)
    status, error = await move_over_rest(n1, agent["id"], "n3")
    assert status == 409, error
    assert "already runs on n3" in error["details"] or "already runs on n3" in error["error"]
    status, error = await move_over_rest(n1, agent["id"], "n9")
    assert status == 400, error
    status, error = await move_over_rest(n1, "00000000-0000-4000-8000-000000000000", "n2")
    assert status == 404, error
    assert one_copy(nodes) == "n3"


async def test_messages_sent_during_a_move_are_delivered_once_in_order(
    factory: NodeFactory, counter: bytes
) -> None:
    """A client on n2 sends 300 at-least-once messages in one conversation while the
    counter moves from n3 to n1: each is counted exactly once, in the order sent."""
    nodes = await start_cluster(factory, **AT_LEAST_ONCE)
    _, n2, n3 = nodes
    agent = await deployed_counter(nodes, counter)
    replies: dict[str, int] = {}
    n2.router.register("collector", lambda m: replies.__setitem__(m.in_reply_to, m.content))
    sent: list[str] = []

    async def send_all() -> None:
        for i in range(300):
            message = Message(
                Performative.REQUEST,
                sender="collector",
                receiver="counter",
                content=i,
                conversation_id="one-conversation",
            )
            await n2.router.send(message)
            sent.append(message.message_id)
            if i % 10 == 0:
                await asyncio.sleep(0.001)

    sending = asyncio.create_task(send_all())
    await asyncio.sleep(0.02)
    moved = await n3.cluster.moves.move(agent["id"], "n1")
    assert moved["node_id"] == "n1"
    await sending
    await eventually(lambda: len(replies) == 300, 20)
    counts = [replies[message_id]["count"] for message_id in sent]
    assert counts == list(range(1, 301))  # once each, in the order sent
    assert one_copy(nodes) == "n1"


@pytest.mark.parametrize("hand_over", ["taken", "refused"])
async def test_a_reply_to_a_request_handed_over_in_a_move_reaches_the_waiting_client(
    factory: NodeFactory, counter: bytes, monkeypatch: pytest.MonkeyPatch, hand_over: str
) -> None:
    """A client waits on n1 (REST, wait_ms) for the counter on n3, whose request is
    queued there (the counter suspended) when the counter moves to n2. n3 hands the
    request over, or (its hand-over refused) forwards it to n2 as a message: either way
    n2 answers through n1, the client's node, not through n3, which passed the request
    on. (A client's endpoint is no agent: no registry lookup finds it; the reply sent to
    n3 was answered 'miss' and the client got a 504.)"""
    monkeypatch.setattr(moves, "RELEASE_AFTER", 0.5)
    nodes = await start_cluster(factory, **AT_LEAST_ONCE)
    n1, n2, n3 = nodes
    agent = await deployed_counter(nodes, counter)
    assert await counted(n1) == 1
    if hand_over == "refused":

        async def refuse(source: str, body: Any) -> list[Any]:
            raise moves.MoveFailed("refused for the test")

        monkeypatch.setattr(n2.cluster.moves, "_on_move_done", refuse)
    await n3.agents.suspend(agent["id"])
    message = {"performative": "request", "receiver": "counter", "content": "tick"}
    waiting = asyncio.create_task(rest(n1, "/api/v1/messages", {**message, "wait_ms": 10_000}))
    await eventually(lambda: len(n3.router.queued("counter")) == 1)
    moved = await n3.cluster.moves.move(agent["id"], "n2")
    assert moved["node_id"] == "n2"
    await eventually(lambda: len(n2.router.queued("counter")) == 1)  # still suspended
    await n2.agents.resume(agent["id"])
    status, answer = await waiting
    assert status == 200, answer
    assert answer["reply"]["content"]["count"] == 2, answer
    assert await counted(n1) == 3  # and nothing counted twice


async def test_timers_and_the_state_go_along(factory: NodeFactory, counter: bytes) -> None:
    nodes = await start_cluster(factory)
    n1, _, n3 = nodes
    agent = await deployed_counter(nodes, counter)
    assert await counted(n1) == 1
    runtime = n3.agents.runtime("counter")
    timer = runtime.set_timer(60_000, False)  # as if set while handling a message
    moved = await n3.cluster.moves.move(agent["id"], "n2")
    assert moved["node_id"] == "n2"
    taken = nodes[1].agents.runtime("counter")
    assert timer in taken.timers  # the same id, due when it was due
    assert taken.timer_plans[timer] == (60_000, False, False)
    assert taken.kv[b"count"] == b"1"


async def test_the_target_refusing_leaves_the_agent_running_on_the_source(
    factory: NodeFactory, counter: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    nodes = await start_cluster(factory)
    n1, n2, n3 = nodes
    agent = await deployed_counter(nodes, counter)
    assert await counted(n1) == 1

    async def refuse(source: str, body: Any) -> list[Any]:
        raise moves.MoveFailed("refused for the test")

    monkeypatch.setattr(n1.cluster.moves, "_on_move", refuse)
    with pytest.raises(moves.MoveFailed, match="refused for the test"):
        await n3.cluster.moves.move(agent["id"], "n1")
    await eventually(lambda: agent["id"] not in n3.cluster.moves.moving)
    assert one_copy(nodes) == "n3"
    assert await counted(n2) == 2


async def test_the_target_dying_after_its_takeover_leaves_one_copy_on_the_source(
    factory: NodeFactory, counter: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The target takes the agent over, then dies before it answers: the source takes it
    back through a takeover of its own (a fresh generation), and goes on counting. Four
    nodes: the target's new replica set (itself and two holders, the source not among
    them) keeps a majority without it."""
    monkeypatch.setattr(moves, "TAKEOVER_TIMEOUT", 1.0)
    nodes = await start_cluster(factory, ("n1", "n2", "n3", "n4"))
    n1, n2, n3, n4 = nodes
    agent = await deployed_counter(nodes, counter)
    assert await counted(n1) == 1
    real = n1.cluster.moves._on_move

    async def take_then_die(source: str, body: Any) -> list[Any]:
        await real(source, body)
        await crash(n1)
        await asyncio.sleep(5)
        return ["ok", {}]

    monkeypatch.setattr(n1.cluster.moves, "_on_move", take_then_die)
    with pytest.raises(moves.MoveFailed, match="taken back on n3"):
        await n3.cluster.moves.move(agent["id"], "n1")
    await eventually(lambda: agent["id"] not in n3.cluster.moves.moving, 10)
    assert hosts([n2, n3, n4], "counter") == ["n3"]
    assert n3.cluster.failover.generation(agent["id"]) > 2  # n1 took 2, n3 took it back
    # n1's registry entry goes once it is detected as failed; n3 answers.
    await eventually(lambda: n2.membership.member("n1").status.value == "failed", 20)
    assert await counted(n2) == 2
    assert any("did not move to n1" in e.text for e in n3.cluster.recent_events())


async def test_the_source_dying_after_the_takeover_leaves_one_copy_on_the_target(
    factory: NodeFactory, counter: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The source dies before it hands its queued messages over: the target, held
    meanwhile, releases the agent after RELEASE_AFTER and runs it alone."""
    monkeypatch.setattr(moves, "RELEASE_AFTER", 0.5)
    nodes = await start_cluster(factory)
    n1, n2, n3 = nodes
    agent = await deployed_counter(nodes, counter)
    assert await counted(n1) == 1

    async def die(runtime: Any, target: str, address: Any) -> int:
        await crash(n3)
        return 0

    monkeypatch.setattr(n3.cluster.moves, "_hand_over", die)
    await n3.cluster.moves.move(agent["id"], "n1")
    assert hosts([n1, n2], "counter") == ["n1"]
    assert await counted(n2) == 2  # answered once released


@pytest.mark.parametrize("when", ["after-the-takeover", "at-the-hand-over"])
async def test_a_cut_between_source_and_target_mid_move_leaves_one_writable_copy(
    links: tuple[NodeFactory, LinkCuts],
    counter: bytes,
    monkeypatch: pytest.MonkeyPatch,
    when: str,
) -> None:
    """The link between source (n3) and target (n1) is cut both ways (CONTROL frames;
    SWIM still sees both) once the target took the agent over, before its answer
    reached the source, or once the source starts the hand-over. The source and the
    third node are a majority of the new replica set, the target and the third node
    too: whichever copy counts, no count is given twice and, after the heal, one copy
    runs and counts on from the last acknowledged count."""
    monkeypatch.setattr(moves, "TAKEOVER_TIMEOUT", 1.0)
    monkeypatch.setattr(moves, "RELEASE_AFTER", 0.5)
    factory, cuts = links
    nodes = await start_cluster(factory)
    n1, n2, n3 = nodes
    agent = await deployed_counter(nodes, counter)
    assert await tick(n3, 5.0) == 1
    if when == "after-the-takeover":
        taking = n1.cluster.moves._on_move

        async def take_then_cut(source: str, body: Any) -> list[Any]:
            answer = await taking(source, body)
            cuts.cut_both("n1", "n3")
            return answer

        monkeypatch.setattr(n1.cluster.moves, "_on_move", take_then_cut)
    else:
        handing = n3.cluster.moves._hand_over

        async def cut_then_hand_over(runtime: Any, target: str, address: Any) -> int:
            cuts.cut_both("n1", "n3")
            return int(await handing(runtime, target, address))

        monkeypatch.setattr(n3.cluster.moves, "_hand_over", cut_then_hand_over)
    with contextlib.suppress(moves.MoveFailed):
        await n3.cluster.moves.move(agent["id"], "n1")
    acknowledged = [1]
    for _ in range(10):
        for node in (n1, n3, n2):
            count = await tick(node, 1.0)
            if count is not None:
                acknowledged.append(count)
    assert len(acknowledged) == len(set(acknowledged)), f"a count given twice: {acknowledged}"
    cuts.heal()
    await eventually(lambda: len(hosts(nodes, "counter")) == 1, 30)
    await eventually(lambda: agent["id"] not in n3.cluster.moves.moving, 10)
    after = None
    for _ in range(20):
        after = await tick(n2, 1.0)
        if after is not None:
            break
    assert after == max(acknowledged) + 1, f"acknowledged {acknowledged}, then {after}"
    assert len(hosts(nodes, "counter")) == 1


# -- what crosses the network -----------------------------------------------------------

STATE_VALUE = 64 * 1024  # bytes of text per key


async def with_state(node: Node, agent_id: str, keys: int) -> int:
    """Give the agent ``keys`` values of 64 KiB (random text); the bytes of state."""
    assert node.api_address is not None
    host, port = node.api_address
    async with aiohttp.ClientSession() as http:
        for i in range(keys):
            value = os.urandom(STATE_VALUE // 2).hex()
            url = f"http://{host}:{port}/api/v1/agents/{agent_id}/state/blob-{i}"
            async with http.put(url, json={"value": value}) as response:
                assert response.status == 200, await response.text()
    return keys * STATE_VALUE


def settled(owner: Node, agent_id: str) -> bool:
    """Every holder acknowledged the owner's last version (no resync is due)."""
    owned = owner.cluster.failover.ownership.owned.get(agent_id)
    return owned is not None and all(
        owned.acked.get(h) == owned.version == owned.sent.get(h) for h in owned.holders
    )


def control_bytes(nodes: list[Node], monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """From now on, the bytes of every CONTROL frame and answer the nodes exchange."""
    crossed = [0]
    for node in nodes:
        transport = node.cluster.transport
        request, send = transport.request, transport.send

        async def counted_request(
            peer: Any, kind: FrameKind, payload: bytes, timeout: float, request: Any = request
        ) -> bytes:
            answer: bytes = await request(peer, kind, payload, timeout)
            if kind is FrameKind.CONTROL:
                crossed[0] += len(payload) + len(answer)
            return answer

        async def counted_send(
            peer: Any, kind: FrameKind, payload: bytes, send: Any = send
        ) -> None:
            if kind is FrameKind.CONTROL:
                crossed[0] += len(payload)
            await send(peer, kind, payload)

        monkeypatch.setattr(transport, "request", counted_request)
        monkeypatch.setattr(transport, "send", counted_send)
    return crossed


async def test_a_move_to_a_holder_sends_no_state_over_the_network(
    factory: NodeFactory, counter: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The target holds the agent's state already: the promises answer its digest, the
    holders take the new generation without it, and the new owner's first writes are
    deltas. Every CONTROL byte of the move, of the first count after it and of the new
    owner replicating it adds up to less than the state (it used to cross five times)."""
    nodes = await start_cluster(factory)
    n1, n2, n3 = nodes
    agent = await deployed_counter(nodes, counter)
    size = await with_state(n1, agent["id"], 8)
    assert await counted(n1) == 1
    await eventually(lambda: settled(n3, agent["id"]))
    crossed = control_bytes(nodes, monkeypatch)
    moved = await n3.cluster.moves.move(agent["id"], "n1")
    assert moved["node_id"] == "n1"
    assert await counted(n2) == 2
    await replicated([n2, n3], agent["id"])
    await eventually(lambda: n1.cluster.failover.ownership.owned[agent["id"]].acked)
    assert crossed[0] < size, f"{crossed[0]} bytes crossed for {size} bytes of state"
    assert len(n1.agents.runtime("counter").kv) == 9  # the count and the 8 values


async def test_a_move_to_a_node_without_the_state_sends_it_once(
    factory: NodeFactory, counter: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four nodes, the target none of the agent's holders: the source alone answers its
    promise with the state, the holders only take the new generation."""
    nodes = await start_cluster(factory, ("n1", "n2", "n3", "n4"))
    n3 = nodes[2]
    agent = await deployed_counter(nodes, counter)
    size = await with_state(n3, agent["id"], 8)
    assert await counted(n3) == 1
    await eventually(lambda: settled(n3, agent["id"]))
    holders = n3.cluster.failover.holders[agent["id"]]
    target = next(n for n in nodes if n.node_id not in (*holders, "n3"))
    crossed = control_bytes(nodes, monkeypatch)
    moved = await n3.cluster.moves.move(agent["id"], target.node_id)
    assert moved["node_id"] == target.node_id
    assert await counted(n3) == 2
    assert size <= crossed[0] < 2 * size, f"{crossed[0]} bytes crossed for {size} of state"
    assert len(target.agents.runtime("counter").kv) == 9


# -- rebalance, drain, leave, add-node -------------------------------------------------


def read_write(node: Node) -> bool:
    return node.cluster.partition.mode.value == "read-write"


def per_node(nodes: list[Node]) -> dict[str, int]:
    return {n.node_id: len(n.agents) for n in nodes if n.agents is not None}


async def test_rebalance_evens_out_the_agents_after_a_node_joins(
    factory: NodeFactory, echo: bytes
) -> None:
    nodes = await start_cluster(factory, ("n1", "n2"))
    n1 = nodes[0]
    for i in range(6):
        status, agent, _ = await deploy(n1, {"name": f"e{i}", "target_node": "n1"}, echo)
        assert status == 201, agent
    third = factory.build("n3", join=[f"127.0.0.1:{n1.cluster_address[1]}"])
    await third.start()
    nodes.append(third)
    await eventually(lambda: all(n.membership.cluster_size_estimate() == 3 for n in nodes))
    await eventually(lambda: len(third.cluster.registry.entries("n1")) == 6)
    await eventually(lambda: all(read_write(n) for n in nodes))
    status, plan = await rest(third, "/api/v1/cluster/rebalance", {"dry_run": True})
    assert status == 200, plan
    assert plan["before"] == {"n1": 6, "n2": 0, "n3": 0}
    assert plan["after"] == {"n1": 2, "n2": 2, "n3": 2}
    assert per_node(nodes) == {"n1": 6, "n2": 0, "n3": 0}  # a dry run moves nothing
    status, report = await rest(
        third, "/api/v1/cluster/rebalance", {"strategy": "even-distribution", "max_parallel": 2}
    )
    assert status == 200, report
    assert report["failed"] == {}, [e.text for n in nodes for e in n.cluster.recent_events(50)]
    assert len(report["moved"]) == 4
    assert per_node(nodes) == {"n1": 2, "n2": 2, "n3": 2}
    for i in range(6):  # each answers, from wherever it runs now
        assert await ask(n1, f"e{i}", i) == i
    status, again = await rest(n1, "/api/v1/cluster/rebalance", {"dry_run": True})
    assert again["plan"] == []  # balanced: nothing more to do
    status, error = await rest(n1, "/api/v1/cluster/rebalance", {"strategy": "no-such"})
    assert status == 400, error


async def test_leave_with_a_drain_timeout_moves_the_agents_off_first(
    factory: NodeFactory, echo: bytes
) -> None:
    nodes = await start_cluster(factory)
    n1, n2, n3 = nodes
    for i in range(3):
        status, agent, _ = await deploy(n1, {"name": f"leaver-{i}", "target_node": "n3"}, echo)
        assert status == 201, agent
    status, left = await rest(n3, "/api/v1/cluster/leave", {"drain_timeout_ms": 20_000})
    assert status == 200, left
    assert sorted(left["moved"]) == ["leaver-0", "leaver-1", "leaver-2"]
    assert left["stranded"] == {}
    await eventually(lambda: n3.state == "stopped", 10)
    assert sorted(per_node([n1, n2]).values()) == [1, 2]
    for i in range(3):  # still there 30 s later, as the issue puts it: not gone
        assert await ask(n1, f"leaver-{i}", "hi") == "hi"


async def test_a_leaving_node_takes_no_new_messages_and_is_not_ready(
    factory: NodeFactory, echo: bytes
) -> None:
    """Its leave waits for the messages it accepted to be handed over: clients sending
    through it all the time put that off until the drain timeout (a rolling upgrade
    under load took 10-28 s per node to stop). While it leaves it refuses new ones with
    a 503 (a client sends through another node) and /ready says why."""
    nodes = await start_cluster(factory)
    n1, _, n3 = nodes
    status, agent, _ = await deploy(n1, {"name": "echo", "target_node": "n1"}, echo)
    assert status == 201, agent
    assert await ask(n3, "echo", "before") == "before"
    assert n3.api_address is not None
    url = "http://{}:{}".format(*n3.api_address)
    leaving = asyncio.create_task(n3.cluster.leave(20.0))
    await asyncio.sleep(0)  # the leave has begun
    message = {"performative": "request", "receiver": "echo", "content": "during"}
    status, refused = await rest(n3, "/api/v1/messages", {**message, "wait_ms": 2000})
    assert status == 503, refused
    assert "node n3 is leaving the cluster" in refused["details"], refused
    async with aiohttp.ClientSession() as http, http.get(f"{url}/ready") as response:
        assert response.status == 503
        assert (await response.json())["checks"]["not_leaving"] is False
    assert await leaving == 0  # nothing it accepted is left queued
    assert await ask(n1, "echo", "after") == "after"


async def test_a_drain_names_the_agents_that_could_not_move(
    factory: NodeFactory, echo: bytes
) -> None:
    nodes = await start_cluster(factory, ("n1", "n2"))
    n1, n2 = nodes
    for name in ("a", "b"):
        status, agent, _ = await deploy(n1, {"name": name, "target_node": "n2"}, echo)
        assert status == 201, agent

    async def refuse(source: str, body: Any) -> list[Any]:
        raise moves.MoveFailed("refused for the test")

    n1.cluster.moves._on_move = refuse  # type: ignore[method-assign]
    status, report = await rest(n1, "/api/v1/cluster/drain", {"node": "n2", "timeout_ms": 5000})
    assert status == 200, report
    assert report["moved"] == {}
    assert sorted(report["stranded"]) == ["a", "b"]
    assert "refused for the test" in report["stranded"]["a"]
    await eventually(lambda: not n2.cluster.moves.moving)
    assert hosts(nodes, "a") == ["n2"]
    assert await ask(n1, "a", "still here") == "still here"


async def test_add_node_brings_a_listening_node_in(factory: NodeFactory) -> None:
    nodes = await start_cluster(factory, ("n1", "n2"))
    n1 = nodes[0]
    newcomer = factory.build("n3", config={"coordination.cluster_enabled": True})
    await newcomer.start()
    address = f"127.0.0.1:{newcomer.cluster_address[1]}"
    status, joined = await rest(n1, "/api/v1/cluster/nodes", {"address": address})
    assert status == 200, joined
    assert joined["node_id"] == "n3"
    await eventually(lambda: n1.membership.cluster_size_estimate() == 3)
    status, again = await rest(n1, "/api/v1/cluster/nodes", {"address": address})
    assert again["status"] == "member"


async def test_rebalance_on_join_moves_agents_to_the_newcomer(
    factory: NodeFactory, echo: bytes
) -> None:
    on_join = {"coordination.cluster.rebalance": "on-join"}
    nodes = await start_cluster(factory, ("n1", "n2"), **on_join)
    n1 = nodes[0]
    for i in range(4):
        status, agent, _ = await deploy(n1, {"name": f"j{i}", "target_node": "n2"}, echo)
        assert status == 201, agent
    third = factory.build("n3", join=[f"127.0.0.1:{n1.cluster_address[1]}"], config=on_join)
    await third.start()
    nodes.append(third)
    await eventually(lambda: per_node(nodes).get("n3", 0) >= 1, 30)
    await eventually(lambda: max(per_node(nodes).values()) - min(per_node(nodes).values()) <= 1, 30)
    assert sum(per_node(nodes).values()) == 4
