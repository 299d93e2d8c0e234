"""An agent whose owner lives but runs it no more is restarted by a holder, from the
state its owner acknowledged.

Five nodes in one process over the real tcp transport, the counter example agent as the
real wasm module, and :class:`caxton.testing.network.LinkCuts` cutting the CONTROL
frames only (replication, promises, leases), so SWIM keeps every node alive and the
moment of the takeover is the test's. The fault campaign's long runs (issue 12) lost
every id a ledger acknowledged after this: the majority took an agent over from its
owner, cut off one way (it received, nothing it sent arrived); the owner promised the
new generation and fenced its copy, but the taker did not reach a majority (the other
holder was cut off from it) and gave up; when the owner was seen again its failover was
dropped (the node had not failed), and nothing restarted an agent whose node did not
fail: it ran on no node to the end, and its holders dropped their copies of its state
when the owner, back, told them which replicas to keep.
"""

from __future__ import annotations

import asyncio

from test_cluster_routing import eventually
from test_failover_cluster import hosts, replicated
from test_fenced_ownership import counter as counter  # the fixture
from test_fenced_ownership import tick
from test_placement_cluster import deploy, start_cluster
from test_replica_sets import NAMES
from test_replica_sets import control_links as control_links  # the fixture

from caxton.node import Node
from caxton.testing import NodeFactory
from caxton.testing.network import LinkCuts


async def failed_takeover(
    control_links: tuple[NodeFactory, LinkCuts], counter: bytes, *, lagging: bool
) -> tuple[list[Node], Node, Node, list[int]]:
    """The campaign's case up to the heal: counter on n3, acknowledged counts, n3 muted
    and its two holders cut from each other; the first holder takes the agent over,
    which fences n3's copy and fails. ``lagging``: the first holder missed the last
    counts (n3 acknowledged them with the other holder, a majority of the three).
    Returns the nodes, the two holders (the taker first) and the counts acknowledged."""
    factory, cuts = control_links
    nodes = await start_cluster(factory, NAMES)
    n3 = nodes[2]
    status, agent, _ = await deploy(n3, {"name": "counter", "target_node": "n3"}, counter)
    assert status == 201, agent
    await replicated(nodes, agent["id"])
    acknowledged = [c for c in [await tick(n3, 5.0) for _ in range(3)] if c is not None]
    assert acknowledged == [1, 2, 3]
    holders = n3.cluster.failover.holders[agent["id"]]
    first, other = (next(n for n in nodes if n.node_id == h) for h in holders)
    if lagging:
        cuts.cut("n3", first.node_id)
        for _ in range(3):
            count = await tick(n3, 5.0)
            assert count is not None
            acknowledged.append(count)
    cuts.mute("n3")  # n3 receives everything, nothing it sends arrives
    cuts.cut_both(first.node_id, other.node_id)
    # What the failover does once n3's lease has lapsed (the detector is left out):
    replica = first.cluster.failover.replicas[agent["id"]]
    assert not await first.cluster.failover._take(replica, True)
    await eventually(lambda: "counter" not in n3.agents, 10)  # it promised: fenced
    assert hosts(nodes, "counter") == []
    return nodes, first, other, acknowledged


async def rejoin(n3: Node, *holders: Node) -> None:
    """What n3 does when it sees its holders join again: tell them what to keep."""
    for holder in holders:
        await n3.cluster.failover._send_holdings(holder.node_id)


async def test_an_agent_left_on_no_node_by_a_failed_takeover_runs_again(
    control_links: tuple[NodeFactory, LinkCuts], counter: bytes
) -> None:
    nodes, first, other, acknowledged = await failed_takeover(control_links, counter, lagging=False)
    _, cuts = control_links
    cuts.heal()  # n3 is back: it does not run the counter
    await rejoin(nodes[2], first, other)
    await eventually(lambda: len(hosts(nodes, "counter")) == 1, 40)
    await asyncio.sleep(1.0)  # a second copy would have had its chance
    (where,) = hosts(nodes, "counter")
    runs_on = next(n for n in nodes if n.node_id == where)
    count = await tick(runs_on, 5.0)
    assert count == max(acknowledged) + 1, (
        f"counts {acknowledged} were acknowledged; the restarted copy answered {count}"
    )


async def test_a_fenced_owner_keeps_the_state_it_acknowledged_for_the_next_takeover(
    control_links: tuple[NodeFactory, LinkCuts], counter: bytes
) -> None:
    """The owner's answer to the failed takeover carried the only state it shared with
    the other holder; the next takeover reaches only the owner and the lagging taker
    (the other holder is still cut off from it): the owner's promise must answer the
    state it acknowledged, not the empty one of a removed copy."""
    nodes, first, other, acknowledged = await failed_takeover(control_links, counter, lagging=True)
    _, cuts = control_links
    cuts.heal()
    cuts.cut_both(first.node_id, other.node_id)
    await rejoin(nodes[2], first, other)
    await eventually(lambda: len(hosts(nodes, "counter")) == 1, 40)
    (where,) = hosts(nodes, "counter")
    runs_on = next(n for n in nodes if n.node_id == where)
    count = await tick(runs_on, 5.0)
    assert count == max(acknowledged) + 1, (
        f"counts {acknowledged} were acknowledged; the restarted copy answered {count}"
    )
