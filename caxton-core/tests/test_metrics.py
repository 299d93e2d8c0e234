"""The /metrics endpoint: product-document names, values read from the live node,
Prometheus naming (promtool), histograms from samples, and docs/observability.md."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import aiohttp
import pytest

from caxton.messaging import Message, Performative
from caxton.testing import NodeFactory


def parse(text: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


async def scrape_text(address: tuple[str, int]) -> str:
    url = f"http://{address[0]}:{address[1]}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return await response.text()


async def scrape(address: tuple[str, int]) -> dict[str, float]:
    return parse(await scrape_text(address))


def types(text: str) -> dict[str, str]:
    """Family name -> type, from the ``# TYPE`` lines."""
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))


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
        assert after["caxton_routing_latency_seconds_count"] >= 1
        assert (
            after['caxton_routing_latency_seconds_bucket{le="+Inf"}']
            == (after["caxton_routing_latency_seconds_count"])
        )
        assert after["caxton_message_processing_time_seconds_count"] == 3
        assert after["caxton_agent_startup_time_seconds_count"] == 1
        assert after['caxton_messages_total{outcome="delivered"}'] >= 3
        assert after['caxton_agent_message_latency_p99{agent="echo"}'] > 0
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


#: The metrics the product documents name (docs/observability.md) that a single node
#: exports too, and their types (latencies are histograms named with ``_seconds``). The
#: gossip ones are checked on a real cluster (tests/cluster/test_prometheus.py).
SEED_METRICS = {
    "caxton_routing_latency_seconds": "histogram",
    "caxton_remote_routing_latency_seconds": "histogram",
    "caxton_agent_startup_time_seconds": "histogram",
    "caxton_message_processing_time_seconds": "histogram",
    "caxton_messages_per_second": "gauge",
    "caxton_agents_messages_processed_total": "counter",
    "caxton_memory_used_bytes": "gauge",
    "caxton_cpu_usage_percent": "gauge",
    "caxton_cluster_nodes_total": "untyped",
    "caxton_cluster_nodes_alive": "gauge",
    "caxton_cluster_nodes_failed": "gauge",
    "caxton_cluster_agents_total": "untyped",
    "caxton_agent_message_latency_p99": "gauge",
    "caxton_agent_crashes_total": "counter",
    "caxton_agent_memory_used_bytes": "gauge",
    "caxton_system_cpu_usage_percent": "gauge",
    "caxton_system_memory_available_bytes": "gauge",
}


async def test_every_product_document_metric_is_exported_with_its_type(tmp_path: Path) -> None:
    factory = NodeFactory(tmp_path)
    async with factory.node("m4", config={}) as node:
        assert node.metrics_address is not None
        exported = types(await scrape_text(node.metrics_address))
    for name, kind in SEED_METRICS.items():
        assert exported.get(name) == kind, f"{name}: {exported.get(name)!r}, want {kind}"
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"):
        assert name in exported, name


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing: .ci/run installs the Debian package prometheus")
        pytest.skip("needs promtool (Debian package prometheus)")
    return found


def check_metrics(text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )


async def test_promtool_accepts_the_metrics_of_a_busy_node(
    tmp_path: Path, example_agents: dict[str, bytes]
) -> None:
    factory = NodeFactory(tmp_path)
    config = {"observability.legacy_metric_names": False}
    async with factory.node("m5", config=config) as node:
        assert node.metrics_address is not None
        assert node.api_address is not None
        await node.agents.deploy("echo", example_agents["echo"])
        node.router.register("client", lambda message: None)
        await node.router.send(
            Message(Performative.REQUEST, sender="client", receiver="echo", content=1)
        )
        await node.router.drain(5)
        api = f"http://{node.api_address[0]}:{node.api_address[1]}"
        async with aiohttp.ClientSession() as session:
            for path in ("/health", "/api/v1/agents", "/api/v1/agents/nobody", "/nowhere"):
                async with session.get(api + path) as response:
                    await response.read()
        text = await scrape_text(node.metrics_address)
    result = check_metrics(text)
    assert result.returncode == 0, result.stdout + result.stderr
    values = parse(text)
    assert values['caxton_http_requests_total{method="GET",route="/health",status="200"}'] == 1
    assert values['caxton_http_requests_total{method="GET",route="unmatched",status="404"}'] == 1
    assert any(
        key.startswith('caxton_http_requests_total{method="GET",route="/api/v1/agents/{agent_id}"')
        for key in values
    )


async def test_histogram_buckets_come_from_the_configuration(
    tmp_path: Path, example_agents: dict[str, bytes]
) -> None:
    factory = NodeFactory(tmp_path)
    config = {"observability.histogram_buckets": [0.5, 0.000001]}
    async with factory.node("m7", config=config) as node:
        assert node.metrics_address is not None
        await node.agents.deploy("echo", example_agents["echo"])
        values = await scrape(node.metrics_address)
    buckets = [k for k in values if k.startswith("caxton_agent_startup_time_seconds_bucket")]
    assert buckets == [
        'caxton_agent_startup_time_seconds_bucket{le="1e-06"}',
        'caxton_agent_startup_time_seconds_bucket{le="0.5"}',
        'caxton_agent_startup_time_seconds_bucket{le="+Inf"}',
    ]
    assert values['caxton_agent_startup_time_seconds_bucket{le="1e-06"}'] == 0
    assert values['caxton_agent_startup_time_seconds_bucket{le="+Inf"}'] == 1


DOC = Path(__file__).resolve().parents[2] / "docs" / "observability.md"


def documented_metrics() -> dict[str, str]:
    """Family -> type, from the tables of docs/observability.md."""
    return dict(re.findall(r"^\| `([a-z0-9_]+)` \| ([a-z]+) \|", DOC.read_text(), re.MULTILINE))


async def test_every_exported_metric_is_documented(tmp_path: Path) -> None:
    """docs/observability.md has a row per family: `name` | type | labels | meaning."""
    rows = documented_metrics()
    factory = NodeFactory(tmp_path)
    async with factory.node("m8", config={}) as node:
        assert node.metrics_address is not None
        exported = types(await scrape_text(node.metrics_address))
    for name, kind in exported.items():
        if name.startswith(("process_", "python_")):
            continue
        assert rows.get(name) == kind, f"docs/observability.md: `{name}` | {kind} | ..."
    # (that every documented one is exported is checked on a cluster, where all are)
