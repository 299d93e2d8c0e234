"""A cluster in which one node runs agents on wasmer and another on wasmtime: the example
agents work together across them (one process, two nodes over the real tcp transport)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import needs_wasmer
from test_node import Client

from caxton.sandbox.wasmtime_sandbox import WasmtimeSandbox
from caxton.testing import NodeFactory
from caxton_sandbox_wasmer.driver import WasmerSandbox

pytest.importorskip(
    "caxton_transport_tcp", reason="the cluster test needs caxton-transport-tcp installed"
)
pytestmark = needs_wasmer

FAST = {
    "transport.plaintext": True,
    "coordination.cluster.gossip_interval": "100ms",
    "coordination.cluster.probe_interval": "250ms",
    "coordination.cluster.probe_timeout": "125ms",
}


async def eventually(check: Callable[[], bool], timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[tuple[Any, Any]]:
    factory = NodeFactory(tmp_path, config=FAST)
    factory.register_driver("transport", "tcp", "caxton_transport_tcp.driver:TcpTransport")
    factory.register_driver("sandbox", "wasmer", WasmerSandbox)
    on_wasmer = factory.build("on-wasmer", bootstrap=True, plugin_options=["sandbox=wasmer"])
    await on_wasmer.start()
    try:
        assert on_wasmer.cluster_address is not None
        seed = f"127.0.0.1:{on_wasmer.cluster_address[1]}"
        on_wasmtime = factory.build("on-wasmtime", join=[seed])
        await on_wasmtime.start()
        await eventually(
            lambda: all(n.membership.cluster_size_estimate() == 2 for n in factory.nodes)
        )
        yield on_wasmer, on_wasmtime
    finally:
        await factory.stop_all()


async def test_contract_net_across_a_wasmer_and_a_wasmtime_node(
    nodes: tuple[Any, Any], example_agents: dict[str, bytes]
) -> None:
    on_wasmer, on_wasmtime = nodes
    assert isinstance(on_wasmer.sandbox, WasmerSandbox)
    assert isinstance(on_wasmtime.sandbox, WasmtimeSandbox)
    client = Client(on_wasmtime.router)
    placed = {"b1": on_wasmer, "b2": on_wasmtime, "b3": on_wasmer}
    for name, node in placed.items():
        await node.agents.deploy(name, example_agents["bidder"])
    await on_wasmtime.agents.deploy("initiator", example_agents["initiator"])
    await on_wasmer.agents.deploy("echo", example_agents["echo_c"])
    await eventually(
        lambda: (
            all(on_wasmtime.cluster.registry.lookup(name) for name in ("b1", "b3", "echo"))
            and bool(on_wasmer.cluster.registry.lookup("initiator"))
        )
    )
    # Through the cluster to the wasmer node and back.
    reply = await client.ask("echo", {"across": "nodes"})
    assert reply.content == {"across": "nodes"}
    for name, price in (("b1", 120), ("b2", 80), ("b3", 60)):
        await on_wasmtime.router.send(client.message(name, {"price": price}, performative="inform"))
    await on_wasmtime.router.send(
        client.message("initiator", {"bidders": ["b1", "b2", "b3"], "task": "paint", "budget": 150})
    )
    result = await client.wait_for(lambda m: m.sender == "initiator")
    assert result.performative == "inform"
    assert result.content == {"winner": "b3", "price": 60}
