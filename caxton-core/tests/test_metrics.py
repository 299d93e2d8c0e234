"""The /metrics endpoint: product-document names, values read from the live node."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from caxton.messaging import Message, Performative
from caxton.testing import NodeFactory


def parse(text: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


async def scrape(address: tuple[str, int]) -> dict[str, float]:
    url = f"http://{address[0]}:{address[1]}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return parse(await response.text())


async def test_metrics_report_agents_messages_and_cluster(
    tmp_path: Path, example_agents: dict[str, bytes]
) -> None:
    factory = NodeFactory(tmp_path)
    async with factory.node("m1") as node:
        assert node.metrics_address is not None
        before = await scrape(node.metrics_address)
        assert before["caxton_agents_total"] == 0
        assert before["caxton_cluster_nodes_alive"] == 1
        assert before["caxton_cluster_agents_total"] == 0
        assert before["caxton_memory_used_bytes"] > 0

        await node.agents.deploy("echo", example_agents["echo"])
        replies: list[Message] = []
        node.router.register("client", replies.append)
        for i in range(3):
            await node.router.send(
                Message(Performative.REQUEST, sender="client", receiver="echo", content=i)
            )
        await node.router.drain(5)

        after = await scrape(node.metrics_address)
        assert after["caxton_agents_total"] == 1
        assert after["caxton_cluster_agents_total"] == 1
        assert after['caxton_agents_messages_processed_total{agent="echo"}'] == 3
        assert after['caxton_agent_crashes_total{agent="echo"}'] == 0
        assert 'caxton_routing_latency_seconds{quantile="0.99"}' in after
        assert after['caxton_agent_memory_used_bytes{agent="echo"}'] >= 65536


async def test_metrics_can_be_switched_off(tmp_path: Path) -> None:
    factory = NodeFactory(tmp_path)
    async with factory.node("m2", config={"observability.enable_metrics": False}) as node:
        assert node.metrics_address is None


async def test_a_taken_metrics_port_is_a_config_error(tmp_path: Path) -> None:
    import socket

    import pytest

    from caxton.errors import ConfigError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        node = NodeFactory(tmp_path).build(
            "m3", config={"networking.metrics_address": f"127.0.0.1:{port}"}
        )
        with pytest.raises(ConfigError, match=r"networking.metrics_address"):
            await node.start()
        assert node.state == "failed"
