"""Prometheus metrics of a node, served on ``networking.metrics_address`` at ``/metrics``.

Values are read from the node's components when Prometheus scrapes (a collector), so
the message hot path does no metrics work. The names are those of the product
documents (``caxton_cluster_nodes_alive``, ``caxton_agent_crashes_total``, ...).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from caxton.errors import ConfigError
from caxton.units import parse_address

if TYPE_CHECKING:
    from caxton.node import Node

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def memory_available_bytes() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


class CpuSampler:
    """Process CPU use in percent of one core since the previous sample."""

    def __init__(self) -> None:
        self._last = (time.monotonic(), time.process_time())

    def percent(self) -> float:
        now = (time.monotonic(), time.process_time())
        wall, cpu = now[0] - self._last[0], now[1] - self._last[1]
        self._last = now
        return 100.0 * cpu / wall if wall > 0 else 0.0


class NodeCollector(Collector):
    def __init__(self, node: Node) -> None:
        self.node = node
        self.cpu = CpuSampler()

    def collect(self) -> Iterator[Metric]:
        node = self.node
        prefix = node.config["observability"]["metrics_prefix"]
        yield _gauge(f"{prefix}_memory_used_bytes", "Resident memory of the node", rss_bytes())
        cpu = self.cpu.percent()
        yield _gauge(f"{prefix}_cpu_usage_percent", "Node CPU use (% of one core)", cpu)
        yield _gauge(f"{prefix}_system_cpu_usage_percent", "Node CPU use (% of one core)", cpu)
        yield _gauge(
            f"{prefix}_system_memory_available_bytes",
            "Host memory available",
            memory_available_bytes(),
        )
        yield _gauge(
            f"{prefix}_up_seconds",
            "Seconds since the node started",
            time.time() - (node.started_at or time.time()),
        )
        yield from self._agents(prefix)
        yield from self._cluster(prefix)
        yield from self._router(prefix)
        backups = self.node.backups
        if backups is not None:
            yield _gauge(
                f"{prefix}_backup_last_success_timestamp_seconds",
                "Unix time of the newest backup of this node (0: none)",
                backups.last_success or 0,
            )

    def _agents(self, prefix: str) -> Iterator[Metric]:
        manager = self.node.agents
        if manager is None:
            return
        agents = list(manager.list())
        yield _gauge(f"{prefix}_agents_total", "Agents on this node", len(agents))
        processed = CounterMetricFamily(
            f"{prefix}_agents_messages_processed", "Messages handled by agents", labels=["agent"]
        )
        crashes = CounterMetricFamily(f"{prefix}_agent_crashes", "Agent crashes", labels=["agent"])
        fuel = CounterMetricFamily(
            f"{prefix}_agent_fuel_used", "Fuel consumed by agents", labels=["agent"]
        )
        memory = GaugeMetricFamily(
            f"{prefix}_agent_memory_used_bytes", "Linear memory of each agent", labels=["agent"]
        )
        for agent in agents:
            counters = agent.counters
            processed.add_metric([agent.name], counters.messages_handled)
            crashes.add_metric([agent.name], counters.crashes)
            fuel.add_metric([agent.name], counters.fuel_used)
            memory.add_metric([agent.name], manager.memory_bytes(agent.name))
        yield processed
        yield crashes
        yield fuel
        yield memory

    def _cluster(self, prefix: str) -> Iterator[Metric]:
        membership = self.node.membership
        if membership is None:
            members = 1
            alive = 1
            failed = 0
        else:
            states = [m.status.value for m in membership.members()]
            members = len([s for s in states if s != "left"])
            alive = states.count("alive")
            failed = states.count("failed")
        yield _gauge(f"{prefix}_cluster_nodes_total", "Known cluster members", members)
        yield _gauge(f"{prefix}_cluster_nodes_alive", "Alive cluster members", alive)
        yield _gauge(f"{prefix}_cluster_nodes_failed", "Failed cluster members", failed)
        cluster = self.node.cluster
        if cluster is not None:
            agents = cluster.registry.count()
        else:
            agents = len(self.node.agents.list()) if self.node.agents is not None else 0
        yield _gauge(f"{prefix}_cluster_agents_total", "Agents known in the cluster", agents)
        queued = cluster.partition.queued if cluster is not None else 0
        yield _gauge(
            f"{prefix}_cluster_queued_writes",
            "Messages queued for nodes out of reach in a partition, replayed when it heals",
            queued,
        )

    def _router(self, prefix: str) -> Iterator[Metric]:
        router = self.node.router
        if router is None:
            return
        stats = router.queue_stats(agents=False)
        yield _gauge(
            f"{prefix}_queue_depth",
            "Messages waiting in agent queues",
            stats.get("total_queued", 0),
        )
        yield _gauge(
            f"{prefix}_dead_letters",
            "Messages in the dead-letter queue",
            stats.get("dead_letters", 0),
        )
        latency = router.routing_latency()
        summary = GaugeMetricFamily(
            f"{prefix}_routing_latency_seconds",
            "Local send-to-deliver latency (quantiles of a recent sample)",
            labels=["quantile"],
        )
        for quantile, key in (("0.5", "p50"), ("0.9", "p90"), ("0.99", "p99")):
            summary.add_metric([quantile], float(latency[key]))
        yield summary


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


async def start_metrics(node: Node, stack: contextlib.AsyncExitStack) -> tuple[str, int] | None:
    """Serve ``/metrics`` when ``observability.enable_metrics``; return the bound address."""
    if not node.config["observability"]["enable_metrics"]:
        return None
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(node))

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    host, port = parse_address(node.config["networking"]["metrics_address"])
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        raise ConfigError(
            f"cannot serve metrics on {host}:{port}: {exc.strerror or exc} "
            f"(networking.metrics_address; is another node using the port?)"
        ) from exc
    bound = runner.addresses[0] if runner.addresses else (host, port)
    return str(bound[0]), int(bound[1])
