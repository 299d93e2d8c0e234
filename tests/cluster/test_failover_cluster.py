"""Replication and failover, in one process: three nodes over the real tcp transport,
the echo agent as the real wasm module; a node "dies" by losing its membership and
transport abruptly (no leave), as SIGKILL would do."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from test_cluster_routing import eventually
from test_placement_cluster import ask, crash, deploy, start_cluster
from test_placement_cluster import factory as factory  # the fixture

from caxton import hookimpl
from caxton.cluster.failover import Replica
from caxton.cluster.placement import DeploySpec, deploy_local
from caxton.drivers.partition import ClusterView, PartitionDecision, PartitionMode
from caxton.node import Node
from caxton.testing import NodeFactory


def hosts(nodes: list[Node], name: str) -> list[str]:
    return [n.node_id for n in nodes if n.agents is not None and name in n.agents]


def all_alive(node: Node, count: int) -> bool:
    members = node.membership.members()
    return len(members) == count and all(m.status.value == "alive" for m in members)


def texts(node: Node) -> list[str]:
    return [e.text for e in node.cluster.recent_events(1000)]


async def replicated(nodes: list[Node], agent_id: str, holders: int = 2) -> None:
    await eventually(lambda: sum(agent_id in n.cluster.failover.replicas for n in nodes) == holders)


async def stopped_to_restart(factory: NodeFactory, node: Node, seed: Node) -> Node:
    """Stop ``node`` and build it again, not started: the same name and data directory
    and the same cluster address (a restart), joining through ``seed``."""
    address, seed_address = node.cluster_address, seed.cluster_address
    assert address is not None
    assert seed_address is not None
    await node.stop()
    return factory.build(
        node.node_id,
        join=[f"127.0.0.1:{seed_address[1]}"],
        config={"coordination.cluster.bind_addr": f"127.0.0.1:{address[1]}"},
    )


async def test_agents_are_replicated_with_their_module_stored_once(
    factory: NodeFactory, echo: bytes
) -> None:
    n1, n2, n3 = await start_cluster(factory)
    ids = []
    for name in ("e1", "e2"):
        status, agent, _ = await deploy(
            n3, {"name": name, "resource_limits": {"max_fuel": 123_456}}, echo
        )
        assert status == 201, agent
        ids.append(agent["id"])
    for agent_id in ids:
        await replicated([n1, n2], agent_id)
    replica = n1.cluster.failover.replicas[ids[0]]
    assert replica.owner == "n3"
    assert replica.generation == 1
    assert replica.spec.limits is not None
    assert replica.spec.limits["max_fuel"] == 123_456
    assert set(replica.holders) == {"n1", "n2"}
    assert n2.cluster.failover.replicas[ids[0]].holders == replica.holders
    assert await n1.store.module_count() == 1  # two replicas, one module
    # Removing the agent drops its replicas; the module goes with the last one.
    await n3.agents.remove("e1")
    await eventually(lambda: ids[0] not in n1.cluster.failover.replicas)
    await n3.agents.remove("e2")
    await eventually(lambda: not n1.cluster.failover.replicas)
    await eventually(lambda: not n2.cluster.failover.replicas)
    assert await n1.store.module_count() == 0


async def test_a_failed_nodes_agent_restarts_on_exactly_one_survivor(
    factory: NodeFactory, echo: bytes
) -> None:
    n1, n2, n3 = await start_cluster(factory)
    status, agent, _ = await deploy(n1, {"name": "worker", "target_node": "n3"}, echo)
    assert status == 201, agent
    await replicated([n1, n2], agent["id"])
    taker = n1.cluster.failover.replicas[agent["id"]].holders[0]
    await crash(n3)
    survivors = [n1, n2]
    await eventually(lambda: hosts(survivors, "worker") == [taker], 20)
    moved = next(n for n in survivors if n.node_id == taker).agents.get("worker")
    assert moved.id == agent["id"]  # the same agent, under its id
    for node in survivors:
        await eventually(
            lambda node=node: [e.node_id for e in node.cluster.registry.lookup("worker")] == [taker]
        )
    other = next(n for n in survivors if n.node_id != taker)
    assert await ask(other, "worker", "still there?") == "still there?"
    for node in survivors:
        await eventually(
            lambda node=node: any(
                t.startswith("All agents successfully redistributed") for t in texts(node)
            )
        )
        lines = texts(node)
        assert f"Agent 'worker' migrated to {taker}" in lines
    # The taker decided to act (the others may see the agent running before they do).
    assert "Redistributing 1 agents from n3" in texts(
        next(n for n in survivors if n.node_id == taker)
    )

    # The taker replicates it in turn, one generation higher.
    def replicated_by_taker() -> bool:
        replica = other.cluster.failover.replicas.get(agent["id"])
        return replica is not None and replica.owner == taker  # not n3's old one

    await eventually(replicated_by_taker)
    assert other.cluster.failover.replicas[agent["id"]].generation == 2
    assert hosts(survivors, "worker") == [taker]


async def test_the_old_node_restarted_with_its_data_drops_its_stale_copy(
    factory: NodeFactory, echo: bytes
) -> None:
    n1, n2, n3 = await start_cluster(factory)
    status, agent, _ = await deploy(n3, {"name": "once"}, echo)
    assert status == 201, agent
    await replicated([n1, n2], agent["id"])
    await crash(n3)
    await eventually(lambda: len(hosts([n1, n2], "once")) == 1, 20)
    taker = hosts([n1, n2], "once")[0]
    again = await stopped_to_restart(factory, n3, seed=n1)
    await again.start()
    everyone = [n1, n2, again]
    await eventually(lambda: all(all_alive(n, 3) for n in everyone), 20)
    await eventually(lambda: any("removed the stale copy on n3" in t for t in texts(again)), 20)
    assert hosts(everyone, "once") == [taker]
    for node in everyone:
        await eventually(
            lambda node=node: [e.node_id for e in node.cluster.registry.lookup("once")] == [taker]
        )
    assert await ask(again, "once", "which one?") == "which one?"
    assert hosts(everyone, "once") == [taker]


async def test_failover_can_be_turned_off(factory: NodeFactory, echo: bytes) -> None:
    n1, n2, n3 = await start_cluster(factory, **{"coordination.cluster.failover": False})
    status, agent, _ = await deploy(n3, {"name": "stays"}, echo)
    assert status == 201, agent
    await replicated([n1, n2], agent["id"])
    await crash(n3)
    for node in (n1, n2):
        await eventually(
            lambda node=node: "1 agents of n3 dropped from the registry" in texts(node), 20
        )
    await asyncio.sleep(1.0)  # a takeover would have started by now
    assert hosts([n1, n2], "stays") == []
    assert not any("Redistributing" in t for t in texts(n1) + texts(n2))


class ReadOnly:
    """Every node believes it is in a minority."""

    @hookimpl(tryfirst=True)
    def caxton_partition_decision(self, node: Node, view: ClusterView) -> PartitionDecision:
        return PartitionDecision(PartitionMode.READ_ONLY, "test: minority")


async def test_a_node_in_a_minority_does_not_fail_over(factory: NodeFactory, echo: bytes) -> None:
    n1, n2, n3 = await start_cluster(factory)
    status, agent, _ = await deploy(n3, {"name": "kept"}, echo)
    assert status == 201, agent
    await replicated([n1, n2], agent["id"])
    for node in (n1, n2):
        node.host.register(ReadOnly(), name="read-only")
    await crash(n3)
    for node in (n1, n2):
        await eventually(
            lambda node=node: any(
                t.startswith("Not redistributing 1 agents of n3") for t in texts(node)
            ),
            20,
        )
    assert hosts([n1, n2], "kept") == []


async def test_unauthenticated_or_forged_replicas_are_refused(
    factory: NodeFactory, echo: bytes
) -> None:
    n1, n2 = await start_cluster(factory, ("n1", "n2"))
    member = n2.cluster._live("n1")
    assert member is not None
    forged: Any = n2.cluster.failover.trust.keyring.__class__([b"k" * 32]).seal(b"anything")
    answer = await n2.cluster._control(member.address, 5.0, "replica", forged)
    assert answer[:2] == ["error", 403]
    answer = await n2.cluster._control(member.address, 5.0, "claim", base64.b64encode(b"x"))
    assert answer[:2] == ["error", 403]
    # Sealed, but the module is not what its sha256 says.
    replica = Replica("id-1", "fake", "n2", 1, "0" * 64, DeploySpec("fake"), ("n1",))
    sealed = n2.cluster.failover.trust.seal({**replica.to_wire(), "wasm": echo})
    answer = await n2.cluster._control(member.address, 5.0, "replica", sealed)
    assert answer[:2] == ["error", 400]
    assert "do not match its sha256" in answer[3]
    assert not n1.cluster.failover.replicas


async def test_two_copies_of_one_placement_settle_on_the_lower_node_id(
    factory: NodeFactory, echo: bytes
) -> None:
    # Two survivors that disagreed about who takes an agent both start it with the
    # same generation: the lower node id keeps it.
    n1, n2 = await start_cluster(factory, ("n1", "n2"))
    status, agent, _ = await deploy(n2, {"name": "twin"}, echo)
    assert status == 201, agent
    spec = DeploySpec("twin", agent_id=agent["id"])
    await deploy_local(n1, spec, echo)
    await eventually(lambda: any("removed the stale copy on n2" in t for t in texts(n2)))
    assert hosts([n1, n2], "twin") == ["n1"]
    await eventually(lambda: [e.node_id for e in n2.cluster.registry.lookup("twin")] == ["n1"])
    assert await ask(n2, "twin", "one") == "one"


async def test_a_failed_holder_is_replaced(factory: NodeFactory, echo: bytes) -> None:
    nodes = await start_cluster(factory, ("n1", "n2", "n3", "n4"))
    n1 = nodes[0]
    status, agent, _ = await deploy(n1, {"name": "kept"}, echo)
    assert status == 201, agent
    await replicated(nodes[1:], agent["id"])
    lost = n1.cluster.failover.holders[agent["id"]][0]
    await crash(next(n for n in nodes if n.node_id == lost))
    others = [n for n in nodes[1:] if n.node_id != lost]
    await replicated(others, agent["id"], holders=2)
    holders = n1.cluster.failover.holders[agent["id"]]
    assert lost not in holders
    assert sorted(holders) == sorted(n.node_id for n in others)
    for node in others:  # every holder knows the new takeover order
        await eventually(
            lambda node=node: node.cluster.failover.replicas[agent["id"]].holders == holders
        )


async def holders_have(holders: list[Node], agent_id: str, count: bytes) -> None:
    """Wait until every holder keeps ``count`` as the replicated counter's count."""

    async def kept() -> list[bytes | None]:
        return [(await n.store.load_kv(agent_id)).get(b"count") for n in holders]

    for _ in range(100):
        if await kept() == [count] * len(holders):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"holders keep {await kept()}, not {count!r}")


async def test_the_agents_key_value_state_moves_with_it(
    factory: NodeFactory, tmp_path_factory: Any
) -> None:
    """The counter keeps its count in its KV store: replicated to the holders shortly
    after each change, it carries on from there on the survivor."""
    from caxton.testing.sandbox import build_example_agents

    counter = build_example_agents(tmp_path_factory.mktemp("agents"))["counter"]
    n1, n2, n3 = await start_cluster(factory)
    status, agent, _ = await deploy(n1, {"name": "counter", "target_node": "n3"}, counter)
    assert status == 201, agent
    await replicated([n1, n2], agent["id"])
    for expected in (1, 2, 3):
        assert await ask(n1, "counter", "tick") == {"count": expected}

    await holders_have([n1, n2], agent["id"], b"3")
    await crash(n3)
    await eventually(lambda: len(hosts([n1, n2], "counter")) == 1, 20)
    assert await ask(n1, "counter", "tick") == {"count": 4}
    # The survivor that did not take it over now holds the new owner's replica, state too.
    (other,) = [n for n in (n1, n2) if n.agents is not None and "counter" not in n.agents]
    await eventually(lambda: agent["id"] in other.cluster.failover.replicas, 20)
    for _ in range(100):
        if (await other.store.load_kv(agent["id"])).get(b"count") == b"4":
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the remaining holder never got the count after the failover")


async def test_an_at_least_once_message_sent_as_its_node_dies_follows_the_agent(
    factory: NodeFactory, tmp_path_factory: Any
) -> None:
    """Forwarding fails while the node is dying: an at-least-once message is tried again,
    re-resolved, until it reaches the agent where the failover restarted it."""
    from caxton.messaging import Message, Performative
    from caxton.testing.sandbox import build_example_agents

    counter = build_example_agents(tmp_path_factory.mktemp("agents"))["counter"]
    config = {"messaging.delivery_guarantee": "at-least-once"}
    n1, n2, n3 = await start_cluster(factory, **config)
    status, agent, _ = await deploy(n1, {"name": "counter", "target_node": "n3"}, counter)
    assert status == 201, agent
    await replicated([n1, n2], agent["id"])
    assert await ask(n1, "counter", "tick") == {"count": 1}
    await holders_have([n1, n2], agent["id"], b"1")
    await crash(n3)
    # n3 is suspect: its connection is gone, and the registry still routes there.
    await eventually(lambda: n1.membership.member("n3").status.value == "suspect", 20)
    await n1.router.send(Message(Performative.INFORM, "tester", "counter", "sent as n3 died"))
    await eventually(lambda: len(hosts([n1, n2], "counter")) == 1, 20)
    # The inform arrived after the failover (count 2), then this request (count 3).
    for _ in range(50):
        if n1.router.queue_stats()["totals"]["forwarding"] == 0:
            break
        await asyncio.sleep(0.1)
    assert await ask(n1, "counter", "tick") == {"count": 3}
    # (the counter's replies to "tester", who is nobody, are the only dead letters)
    assert [d.message.receiver for d in n1.router.dead_letters()] in ([], ["tester"])
