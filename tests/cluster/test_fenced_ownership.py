"""Fenced ownership and quorum-replicated state, in one process: three nodes over the real
tcp transport, the counter example agent as the real wasm module, and deterministic cuts
(:class:`caxton.testing.network.LinkCuts`) of the nodes' CONTROL frames only (replication,
promises, claims, leases: one-way, both ways or bridge-shaped) while membership (SWIM
datagrams and gossip) keeps seeing every node alive, so the moment of a takeover is the
test's, not the failure detector's.

Each test is one anomaly the fault campaign found on the asynchronous replication
(``durability = "async"``, the behaviour before issue 12), where it fails; with the
default ``quorum`` it passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from test_cluster_routing import eventually
from test_failover_cluster import hosts, replicated, stopped_to_restart
from test_placement_cluster import FAST, crash, deploy, start_cluster

from caxton.drivers import FrameKind
from caxton.errors import CaxtonError
from caxton.messaging import Message, Performative
from caxton.node import Node
from caxton.testing import NodeFactory
from caxton.testing.network import LinkCuts
from caxton_transport_tcp.driver import TcpTransport


async def tick(node: Node, timeout: float = 0.5) -> int | None:
    """Ask the counter on ``node`` itself; its count, or None when no answer came."""
    request = Message(Performative.REQUEST, sender="", receiver="counter", content="tick")
    try:
        reply = await node.router.request(request, timeout)
    except CaxtonError:
        return None
    content = reply.content
    return content["count"] if reply.performative == "inform" else None


@pytest.fixture
async def links(tmp_path: Path) -> AsyncIterator[tuple[NodeFactory, LinkCuts]]:
    """Nodes over tcp whose CONTROL frames ``LinkCuts`` can cut."""
    cuts = LinkCuts(kinds={FrameKind.CONTROL})
    factory = NodeFactory(tmp_path, config=FAST)
    factory.register_driver("transport", "tcp", cuts.driver(TcpTransport))
    yield factory, cuts
    await factory.stop_all()


@pytest.fixture(scope="module")
def counter(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    from caxton.testing.sandbox import build_example_agents

    return build_example_agents(tmp_path_factory.mktemp("agents"))["counter"]


async def counter_on_n3(
    links: tuple[NodeFactory, LinkCuts], counter: bytes
) -> tuple[list[Node], str, LinkCuts]:
    factory, cuts = links
    nodes = await start_cluster(factory)
    status, agent, _ = await deploy(nodes[0], {"name": "counter", "target_node": "n3"}, counter)
    assert status == 201, agent
    await replicated(nodes[:2], agent["id"])
    for expected in (1, 2, 3):
        assert await tick(nodes[2], 5.0) == expected
    return nodes, agent["id"], cuts


def taker_of(nodes: list[Node], agent_id: str) -> Node:
    holder = nodes[0].cluster.failover.replicas[agent_id].holders[0]
    return next(n for n in nodes if n.node_id == holder)


async def take_over(taker: Node, agent_id: str) -> None:
    """What a failover does on the taker (the failure detector is left out)."""
    replica = taker.cluster.failover.replicas[agent_id]
    await taker.cluster.failover._take(replica, True)
    assert "counter" in taker.agents


async def test_a_failover_during_a_replication_stall_loses_no_acknowledged_increment(
    links: tuple[NodeFactory, LinkCuts], counter: bytes
) -> None:
    (n1, n2, n3), _, cuts = await counter_on_n3(links, counter)
    cuts.mute("n3")  # n3 hears its holders but cannot reach them
    acknowledged = [c for c in [await tick(n3) for _ in range(10)] if c is not None]
    await crash(n3)
    cuts.heal()
    await eventually(lambda: len(hosts([n1, n2], "counter")) == 1, 20)
    survivor = n1 if "counter" in n1.agents else n2
    after = await tick(survivor, 5.0)
    assert after is not None
    assert after > max([3, *acknowledged]), (
        f"acknowledged {acknowledged} during the stall, the survivor counts {after}"
    )


async def test_a_cut_off_owner_and_its_successor_never_both_acknowledge(
    links: tuple[NodeFactory, LinkCuts], counter: bytes
) -> None:
    (n1, n2, n3), agent_id, cuts = await counter_on_n3(links, counter)
    cuts.isolate("n3")  # n3 is cut off; SWIM has not noticed
    taker = taker_of([n1, n2], agent_id)
    await take_over(taker, agent_id)
    counts: list[int] = []
    for _ in range(5):
        for node in (n3, taker):
            count = await tick(node)
            if count is not None:
                counts.append(count)
    assert len(counts) == len(set(counts)), f"two copies acknowledged the same count: {counts}"
    assert counts == [4, 5, 6, 7, 8]  # only the new owner, from the acknowledged state on
    # The other holder's promise is on its disk (a restart does not forget it).
    other = n2 if taker is n1 else n1
    with contextlib.closing(sqlite3.connect(other.store.path)) as db:
        row = db.execute(
            "SELECT promised FROM agent_fences WHERE agent_id = ?", (agent_id,)
        ).fetchone()
    # (2, or higher once the new owner moved its replica set: each move is a promise)
    assert row is not None
    assert row[0] >= 2


async def test_a_heal_loses_no_state_the_old_copy_acknowledged(
    links: tuple[NodeFactory, LinkCuts], counter: bytes
) -> None:
    (n1, n2, n3), agent_id, cuts = await counter_on_n3(links, counter)
    taker = taker_of([n1, n2], agent_id)
    other = n2 if taker is n1 else n1
    # A bridge: the taker reaches the other holder, which still reaches n3, but the
    # taker and n3 do not reach each other.
    cuts.cut_both("n3", taker.node_id)
    await take_over(taker, agent_id)
    acknowledged = 3
    for _ in range(5):
        for node in (n3, taker):
            if await tick(node) is not None:
                acknowledged += 1
    cuts.heal()
    await eventually(lambda: hosts([n1, n2, n3], "counter") == [taker.node_id], 20)
    final = await tick(other, 5.0)
    assert final == acknowledged + 1, (
        f"{acknowledged} increments were acknowledged, but the count went on from "
        f"{None if final is None else final - 1}"
    )


async def test_a_takeover_from_a_live_owner_fences_it_and_keeps_its_state(
    links: tuple[NodeFactory, LinkCuts], counter: bytes
) -> None:
    """A false failure detection: the owner still answers, promises the next generation,
    and so fences its own copy; the agent runs once, from the owner's state."""
    (n1, n2, n3), agent_id, _ = await counter_on_n3(links, counter)
    taker = taker_of([n1, n2], agent_id)
    await take_over(taker, agent_id)
    await eventually(lambda: hosts([n1, n2, n3], "counter") == [taker.node_id], 20)
    assert await tick(taker, 5.0) == 4
    assert any("is fenced" in e.text for e in n3.cluster.recent_events(1000))


async def test_a_taker_whose_copy_missed_writes_starts_from_the_highest_state(
    links: tuple[NodeFactory, LinkCuts], counter: bytes
) -> None:
    """The owner's writes to the taker are lost, so the taker's copy is stale: the
    promises name the newer state by its digest (not its items), and the taker reads it
    from a member that holds it; its own older copy never wins."""
    (n1, n2, n3), agent_id, cuts = await counter_on_n3(links, counter)
    taker = taker_of([n1, n2], agent_id)
    other = n2 if taker is n1 else n1
    cuts.cut("n3", taker.node_id)
    acknowledged = [await tick(n3, 5.0) for _ in range(5)]
    assert acknowledged == [4, 5, 6, 7, 8]  # n3 and the other holder are a majority
    fences = [n.cluster.failover.ownership.fences[agent_id] for n in (taker, other)]
    assert fences[0].version < fences[1].version  # the taker's copy is behind
    await take_over(taker, agent_id)
    assert await tick(taker, 5.0) == 9
    cuts.heal()
    await eventually(lambda: hosts([n1, n2, n3], "counter") == [taker.node_id], 20)


async def test_a_cluster_that_authenticates_no_peer_still_answers(
    tmp_path: Path, counter: bytes
) -> None:
    """Plaintext without gossip keys (local development): peers refuse each other's
    replicas, so the replica set is the owner alone and quorum writes commit locally,
    instead of holding every reply that follows a state change for holders that refuse."""
    factory = NodeFactory(tmp_path, config={**FAST, "security.cluster.gossip_keys": []})
    factory.register_driver("transport", "tcp", TcpTransport)
    try:
        nodes = await start_cluster(factory, ("n1", "n2"))
        status, agent, _ = await deploy(nodes[0], {"name": "counter"}, counter)
        assert status == 201, agent
        for expected in (1, 2, 3):
            assert await tick(nodes[0], 5.0) == expected
        assert nodes[0].cluster.failover.holders.get(agent["id"], ()) == ()
    finally:
        await factory.stop_all()


async def test_an_old_owner_restarted_with_its_data_acknowledges_nothing_before_its_cluster(
    tmp_path: Path, counter: bytes
) -> None:
    """A node starts its agents, its REST API and its message replay before its cluster
    service; the copy it restores may have been taken over while it was down. Before
    the quorum replication takes over, that copy committed locally and answered: the
    fault campaign saw a killed and restarted node acknowledge a ledger id 0.07 s before
    it joined, an id the new owner never had (a two-copies and a lost-state anomaly)."""
    factory = NodeFactory(tmp_path, config=FAST)
    factory.register_driver("transport", "tcp", TcpTransport)
    try:
        n1, n2, n3 = await start_cluster(factory)
        status, agent, _ = await deploy(n1, {"name": "counter", "target_node": "n3"}, counter)
        assert status == 201, agent
        await replicated([n1, n2], agent["id"])
        for expected in (1, 2, 3):
            assert await tick(n3, 5.0) == expected
        await crash(n3)
        await eventually(lambda: len(hosts([n1, n2], "counter")) == 1, 30)
        survivor = n1 if "counter" in n1.agents else n2
        assert await tick(survivor, 5.0) == 4
        again = await stopped_to_restart(factory, n3, seed=n1)
        cluster_may_start = asyncio.Event()
        start_cluster_now = again._start_cluster

        async def start_cluster_later() -> None:
            await cluster_may_start.wait()
            await start_cluster_now()

        again._start_cluster = start_cluster_later  # type: ignore[method-assign]
        starting = asyncio.ensure_future(again.start())
        await eventually(lambda: again.agents is not None and "counter" in again.agents, 20)
        answer = await tick(again, 1.0)  # the restored copy, before its cluster started
        cluster_may_start.set()
        await starting
        assert answer is None, f"the stale copy acknowledged count {answer} on a local commit"
        await eventually(lambda: hosts([n1, n2, again], "counter") == [survivor.node_id], 20)
        assert await tick(survivor, 5.0) == 5
    finally:
        await factory.stop_all()
