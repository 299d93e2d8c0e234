"""Deploying on another node, in one process: three nodes from caxton.testing's factory
over the real tcp transport (plaintext on loopback, a shared gossip key), the echo
agent as the real wasm module."""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from test_cluster_routing import eventually

from caxton.cluster.placement import DeploySpec, NodeUnreachable, deploy_remote
from caxton.drivers import NodeLoad, PlacementRequest
from caxton.messaging import Message, Performative
from caxton.node import Node
from caxton.testing import NodeFactory

GOSSIP_KEY = base64.b64encode(os.urandom(32)).decode()
FAST = {
    "transport.plaintext": True,
    "security.cluster.gossip_keys": [GOSSIP_KEY],
    "coordination.cluster.gossip_interval": "100ms",
    "coordination.cluster.probe_interval": "250ms",
    "coordination.cluster.probe_timeout": "125ms",
}


async def start_cluster(
    factory: NodeFactory, names: tuple[str, ...] = ("n1", "n2", "n3"), **config: Any
) -> list[Node]:
    first = factory.build(names[0], bootstrap=True, config=config)
    await first.start()
    seed = f"127.0.0.1:{first.cluster_address[1]}"
    for name in names[1:]:
        await factory.build(name, join=[seed], config=config).start()
    started = [n for n in factory.nodes if n.state == "running"]
    await eventually(
        lambda: all(n.membership.cluster_size_estimate() == len(names) for n in started)
    )
    return started


@pytest.fixture
async def factory(tmp_path: Path) -> AsyncIterator[NodeFactory]:
    """A node factory over tcp; every node it built is stopped after the test."""
    factory = NodeFactory(tmp_path, config=FAST)
    factory.register_driver("transport", "tcp", "caxton_transport_tcp.driver:TcpTransport")
    yield factory
    await factory.stop_all()


@pytest.fixture
async def nodes(factory: NodeFactory) -> list[Node]:
    return await start_cluster(factory)


async def deploy(
    node: Node, body: dict[str, Any], echo: bytes
) -> tuple[int, dict[str, Any], aiohttp.typedefs.LooseHeaders]:
    assert node.api_address is not None
    host, port = node.api_address
    payload = {"wasm_module": base64.b64encode(echo).decode(), **body}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"http://{host}:{port}/api/v1/agents", json=payload) as response,
    ):
        return response.status, await response.json(), response.headers


async def ask(node: Node, name: str, content: Any) -> Any:
    reply = await node.router.request(
        Message(Performative.REQUEST, sender="", receiver=name, content=content), 5.0
    )
    return reply.content


async def test_target_node_deploys_there_and_answers_with_its_agent(
    nodes: list[Node], echo: bytes
) -> None:
    n1, _, n3 = nodes
    status, agent, headers = await deploy(
        n1,
        {"name": "far", "target_node": "n3", "resource_limits": {"max_fuel": 500_000}},
        echo,
    )
    assert status == 201, agent
    assert agent["node_id"] == "n3"
    assert agent["state"] == "running"
    assert agent["limits"]["max_fuel"] == 500_000
    assert "Location" not in headers  # the agent's resource is on n3's API
    assert "far" in n3.agents
    assert "far" not in n1.agents
    assert n3.agents.get("far").id == agent["id"]
    await eventually(lambda: [e.node_id for e in n1.cluster.registry.lookup("far")] == ["n3"])
    assert await ask(n1, "far", "hello") == "hello"


async def test_the_allow_list_travels_with_the_deploy(nodes: list[Node], echo: bytes) -> None:
    n1, n2, _ = nodes
    status, agent, _ = await deploy(
        n1, {"name": "guarded", "target_node": "n2", "allowed_senders": ["friend"]}, echo
    )
    assert status == 201, agent
    policy = n2.context.services["agent_policy"]
    assert policy.deployed_senders("guarded") == ("friend",)


async def test_the_strategy_ranks_the_gossiped_load(nodes: list[Node], echo: bytes) -> None:
    n1, _, n3 = nodes
    # n1 and n3 already host agents; the least loaded node is n2.
    for node, name in ((n1, "a1"), (n3, "a3")):
        status, body, _ = await deploy(node, {"name": name}, echo)
        assert status == 201, body

    def counted() -> bool:
        loads = {m.node_id: m.meta.get("agents") for m in n1.membership.members()}
        return loads == {"n1": 1, "n2": 0, "n3": 1}

    await eventually(counted)
    status, agent, _ = await deploy(
        n1, {"name": "balanced", "placement_strategy": "least-loaded"}, echo
    )
    assert status == 201, agent
    assert agent["node_id"] == "n2"
    status, agent, _ = await deploy(
        n1, {"name": "preferred", "prefer_nodes": ["n3", "nowhere"]}, echo
    )
    assert status == 201, agent
    assert agent["node_id"] == "n3"


async def test_placement_hooks_filter_and_score_the_members(
    factory: NodeFactory, echo: bytes
) -> None:
    class NotN2:
        from caxton import hookimpl

        @hookimpl
        def caxton_placement_filter(
            self, request: PlacementRequest, candidates: list[NodeLoad]
        ) -> list[str]:
            return ["n2"]

        @hookimpl
        def caxton_placement_score(self, request: PlacementRequest, candidate: NodeLoad) -> float:
            return 10.0 if candidate.node_id == "n3" else 0.0

    factory.register(NotN2(), name="not-n2")
    n1, _, _ = await start_cluster(factory)
    status, agent, _ = await deploy(
        n1, {"name": "scored", "placement_strategy": "least-loaded"}, echo
    )
    assert status == 201, agent
    assert agent["node_id"] == "n3"
    status, error, _ = await deploy(n1, {"name": "filtered", "target_node": "n2"}, echo)
    assert status == 503
    assert "target node 'n2' is not available" in error["details"]


async def test_errors_are_clear_and_never_500(nodes: list[Node], echo: bytes) -> None:
    n1, n2, _ = nodes
    status, error, _ = await deploy(n1, {"name": "x", "target_node": "n9"}, echo)
    assert (status, error["error"]) == (400, "Unknown node")
    assert "unknown node 'n9'" in error["details"]
    assert "n1, n2, n3" in error["details"]

    status, error, _ = await deploy(n1, {"name": "x", "placement_strategy": "no-such"}, echo)
    assert status == 400
    assert "no-such" in error["details"]

    # The remote's own errors pass through with their status.
    status, error, _ = await deploy(n2, {"name": "taken"}, echo)
    assert status == 201
    status, error, _ = await deploy(n1, {"name": "taken", "target_node": "n2"}, echo)
    assert status == 409, error
    assert "an agent named 'taken' runs on node n2" in error["details"]
    status, error, _ = await deploy(n1, {"name": "broken", "target_node": "n2"}, b"\0asm junk")
    assert (status, error["error"]) == (400, "Invalid WebAssembly module"), error
    assert "broken" not in n2.agents


async def test_a_failed_target_is_not_reachable(factory: NodeFactory, echo: bytes) -> None:
    n1, _, n3 = await start_cluster(factory)
    await crash(n3)
    await eventually(lambda: n1.membership.member("n3").status.value == "failed", 15)
    status, error, _ = await deploy(n1, {"name": "x", "target_node": "n3"}, echo)
    assert (status, error["error"]) == (409, "Node not reachable")
    assert "node 'n3' is not reachable: it is failed" in error["details"]
    with pytest.raises(NodeUnreachable):
        await deploy_remote(n1.cluster, "n3", DeploySpec("x"), echo)


async def test_a_peer_without_the_cluster_key_cannot_deploy(
    factory: NodeFactory, echo: bytes
) -> None:
    n1, n2 = await start_cluster(factory, ("n1", "n2"))
    # n2 forgets the key: its sealed deploys no longer open on n1.
    n2.cluster.failover.trust.keyring = type(n2.cluster.failover.trust.keyring)([os.urandom(32)])
    status, error, _ = await deploy(n2, {"name": "intruder", "target_node": "n1"}, echo)
    assert status == 403, error
    assert "not sealed with one of this node's security.cluster.gossip_keys" in error["details"]
    assert "intruder" not in n1.agents


async def test_without_cluster_authentication_remote_deploys_are_refused(
    factory: NodeFactory, echo: bytes
) -> None:
    n1, _ = await start_cluster(factory, ("n1", "n2"), **{"security.cluster.gossip_keys": []})
    status, error, _ = await deploy(n1, {"name": "open", "target_node": "n2"}, echo)
    assert status == 403, error
    assert "authenticates no peer" in error["details"]
    # Local deploys are not affected.
    status, agent, _ = await deploy(n1, {"name": "here", "target_node": "n1"}, echo)
    assert (status, agent["node_id"]) == (201, "n1")


async def crash(node: Node) -> None:
    """Stop ``node``'s membership and transport abruptly, as SIGKILL would (no leave)."""
    await node.membership.close()
    await node.transport.close()
