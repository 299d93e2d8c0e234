"""Replica sets change only through a promise round, and a takeover finds the set in force.

Five nodes in one process over the real tcp transport, the counter example agent as the
real wasm module, and :class:`caxton.testing.network.LinkCuts` cutting every frame and
datagram (SWIM sees the cuts and acts on them). The fault campaign's long runs found
both anomalies here on the main before this change:

- the owner re-formed its replica set by itself while two of its holders were cut off,
  went on acknowledging with the new holders, and when it was cut off in turn the old
  holders (back, and still keeping the old set) took the agent over between them: from
  the state of before, so counts already acknowledged were returned again (the "2
  against 3" split: both sides had a majority of a different set);
- the same with every holder re-formed many times: the takeover started from an empty
  state (a copy removed earlier answered "generation g, version v" with no keys left).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from test_cluster_routing import eventually
from test_failover_cluster import hosts, replicated
from test_fenced_ownership import counter as counter  # the fixture
from test_fenced_ownership import counter_on_n3, take_over, taker_of, tick
from test_placement_cluster import FAST, deploy, start_cluster

from caxton.drivers import FrameKind
from caxton.testing import NodeFactory
from caxton.testing.network import LinkCuts
from caxton_transport_tcp.driver import TcpTransport

NAMES = ("n1", "n2", "n3", "n4", "n5")
CONFIG = {**FAST, "partition.detection_timeout": "1s"}


@pytest.fixture
async def control_links(tmp_path: Path) -> AsyncIterator[tuple[NodeFactory, LinkCuts]]:
    """Three nodes over tcp whose CONTROL frames only are cut (SWIM sees no cut)."""
    cuts = LinkCuts(kinds={FrameKind.CONTROL})
    factory = NodeFactory(tmp_path, config=FAST)
    factory.register_driver("transport", "tcp", cuts.driver(TcpTransport))
    yield factory, cuts
    await factory.stop_all()


@pytest.fixture
async def links(tmp_path: Path) -> AsyncIterator[tuple[NodeFactory, LinkCuts]]:
    cuts = LinkCuts()
    factory = NodeFactory(tmp_path, config=CONFIG)
    factory.register_driver("transport", "tcp", cuts.driver(TcpTransport))
    yield factory, cuts
    await factory.stop_all()


async def test_a_takeover_by_the_old_holders_returns_no_acknowledged_count_again(
    links: tuple[NodeFactory, LinkCuts], counter: bytes
) -> None:
    factory, cuts = links
    nodes = await start_cluster(factory, NAMES)
    n1 = nodes[0]
    status, agent, _ = await deploy(n1, {"name": "counter", "target_node": "n1"}, counter)
    assert status == 201, agent
    await replicated(nodes[1:], agent["id"])
    acknowledged = [c for c in [await tick(n1, 5.0) for _ in range(3)] if c is not None]
    assert acknowledged == [1, 2, 3]
    old = n1.cluster.failover.holders[agent["id"]]
    assert len(old) == 2
    # Both holders cut off: n1 keeps its quorum lease (n1 and the other two) and, once
    # SWIM declares them failed, wants two other holders.
    for holder in old:
        cuts.isolate(holder)
    await eventually(lambda: all(n1.cluster._live(h) is None for h in old), 20)
    await asyncio.sleep(1.0)  # the re-forming of the replica set had its chance
    for _ in range(3):
        count = await tick(n1, 2.0)
        if count is not None:
            acknowledged.append(count)
    # Now n1 is cut off and the old holders are back: the majority fails n1 over.
    cuts.heal()
    cuts.isolate("n1")
    survivors = [n for n in nodes if n is not n1]
    await eventually(lambda: len(hosts(survivors, "counter")) >= 1, 30)
    answered: list[int] = []
    for _ in range(40):
        for survivor in survivors:
            count = await tick(survivor, 0.5)
            if count is not None:
                answered.append(count)
        if len(answered) >= 8:
            break
    assert answered, "the majority never answered"
    again = sorted(set(answered) & set(acknowledged))
    assert not again, (
        f"counts acknowledged by n1 {acknowledged} were returned again by the copy that "
        f"took over: {again} (answers {answered})"
    )
    assert len(answered) == len(set(answered)), f"two copies answered: {answered}"
    assert min(answered) > max(acknowledged)


async def test_a_removed_copy_offers_its_state_to_a_later_takeover(
    control_links: tuple[NodeFactory, LinkCuts], counter: bytes
) -> None:
    """A copy removed after it lost its ownership must never answer a later promise with
    "the state of generation g, version v" and no keys: the highest (generation,
    version) wins a takeover, so that empty answer could beat the real state of an
    older version (the 100-fault run restarted agents empty). It keeps its rows as the
    holder copy of its generation instead (tests/cluster/test_orphans.py: a later
    takeover may count its promise in a majority and needs what it acknowledged)."""
    (n1, n2, n3), agent_id, cuts = await counter_on_n3(control_links, counter)
    cuts.isolate("n3")  # n3's control calls are cut; SWIM still sees it alive
    taker = taker_of([n1, n2], agent_id)
    await take_over(taker, agent_id)
    assert await tick(n3, 0.5) is None  # its write waits for holders it cannot reach
    cuts.heal()  # its writes are refused now: it is fenced and removed
    await eventually(lambda: hosts([n1, n2, n3], "counter") == [taker.node_id], 20)
    ownership = n3.cluster.failover.ownership
    answer = await ownership.on_promise("t", {"agent_id": agent_id, "generation": 99})
    assert answer[0] == "promised", answer
    generation, version, items = answer[1:4]
    assert (generation, version > 0) == (1, True), answer
    assert {bytes(k): bytes(v) for k, v in items} == await n3.store.load_kv(agent_id)
    assert items, "generation 1 answered with no keys"
