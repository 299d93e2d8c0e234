"""Prometheus metrics of a node, served on ``networking.metrics_address`` at ``/metrics``.

Values are read from the node's components when Prometheus scrapes (a collector), so
the message hot path does no metrics work beyond the ``deque.append`` of a timing
(:mod:`caxton.samples`): latencies are histograms built at scrape time from those
samples, with ``observability.histogram_buckets``. The names are those of the product
documents (``caxton_cluster_nodes_alive``, ``caxton_agent_crashes_total``, ...); every
metric is listed in docs/observability.md, which a test checks against this output.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    CollectorRegistry,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    UntypedMetricFamily,
)
from prometheus_client.registry import Collector

from caxton import __version__
from caxton.api.resources import CpuSampler, memory_rss_bytes
from caxton.errors import CaxtonError, ConfigError
from caxton.samples import Samples, quantile
from caxton.units import format_address, parse_address

if TYPE_CHECKING:
    from caxton.node import Node

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Partition modes, one ``caxton_cluster_mode`` series each.
MODES = ("read-write", "read-only", "local-only")


def memory_available_bytes() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


class HostCpuSampler:
    """The whole host's CPU use (all processes, ``/proc/stat``) between two calls, in
    percent of all its cores; calls closer than ``min_interval`` repeat the figure."""

    def __init__(self, min_interval: float = 1.0) -> None:
        self.min_interval = min_interval
        self._last = (time.monotonic(), *self._times())
        self._percent = 0.0

    @staticmethod
    def _times() -> tuple[int, int]:
        try:
            with open("/proc/stat", encoding="ascii") as stat:
                fields = [int(v) for v in stat.readline().split()[1:]]
        except (OSError, ValueError):
            return (0, 0)
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return (sum(fields), idle)

    def percent(self) -> float:
        now = time.monotonic()
        then, total_then, idle_then = self._last
        if now - then >= self.min_interval:
            total, idle = self._times()
            if total > total_then:
                busy = (total - total_then) - (idle - idle_then)
                self._percent = max(0.0, 100.0 * busy / (total - total_then))
            self._last = (now, total, idle)
        return round(self._percent, 1)


class RateMeter:
    """Events per second between scrapes at least ``min_interval`` apart."""

    def __init__(self, min_interval: float = 1.0) -> None:
        self.min_interval = min_interval
        self._last: tuple[float, float] | None = None
        self._rate = 0.0

    def rate(self, total: float) -> float:
        now = time.monotonic()
        if self._last is None:
            self._last = (now, total)
        elif now - self._last[0] >= self.min_interval:
            self._rate = max(0.0, (total - self._last[1]) / (now - self._last[0]))
            self._last = (now, total)
        return self._rate


class NodeCollector(Collector):
    """Everything a node exports but the standard ``process_*`` and ``python_*``."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.cpu = CpuSampler(min_interval=1.0)
        self.host_cpu = HostCpuSampler()
        self.messages = RateMeter()
        observability = node.config["observability"]
        self.prefix: str = observability["metrics_prefix"]
        self.bounds = tuple(sorted(float(b) for b in observability["histogram_buckets"]))
        self.legacy = bool(observability.get("legacy_metric_names", True))

    def collect(self) -> Iterator[Metric]:
        node, p = self.node, self.prefix
        yield _info(
            f"{p}_node",
            "This node: its id and Caxton's version",
            {
                "node_id": node.node_id,
                "version": __version__,
            },
        )
        yield _gauge(f"{p}_memory_used_bytes", "Resident memory of the node", memory_rss_bytes())
        yield _gauge(
            f"{p}_cpu_usage_percent",
            "CPU used by this node's process, in percent of all the host's cores",
            self.cpu.percent(),
        )
        yield _gauge(
            f"{p}_system_cpu_usage_percent",
            "CPU used on the host by all processes, in percent of all its cores",
            self.host_cpu.percent(),
        )
        yield _gauge(
            f"{p}_system_memory_available_bytes",
            "Host memory available",
            memory_available_bytes(),
        )
        yield _gauge(
            f"{p}_up_seconds",
            "Seconds since the node started",
            time.time() - (node.started_at or time.time()),
        )
        yield from self._http()
        yield from self._agents()
        yield from self._router()
        yield from self._cluster()
        yield from self._membership()
        yield from self._transport()
        yield from self._certificates()
        backups = getattr(node, "backups", None)
        if backups is not None:
            yield _gauge(
                f"{p}_backup_last_success_timestamp_seconds",
                "Unix time of the newest backup of this node (0: none)",
                backups.last_success or 0,
            )

    def histogram(self, name: str, doc: str, samples: Samples) -> HistogramMetricFamily:
        snapshot = samples.histogram(self.bounds)
        return HistogramMetricFamily(
            name,
            doc,
            buckets=[(_le(bound), count) for bound, count in snapshot.buckets],
            sum_value=snapshot.sum,
        )

    # -- the parts -----------------------------------------------------------------

    def _http(self) -> Iterator[Metric]:
        stats, p = self.node.http_stats, self.prefix
        requests = CounterMetricFamily(
            f"{p}_http_requests",
            "REST requests answered, by method, route template and status",
            labels=["method", "route", "status"],
        )
        for (method, route, status), count in sorted(stats.requests.items()):
            requests.add_metric([method, route, str(status)], count)
        yield requests
        yield self.histogram(
            f"{p}_http_request_duration_seconds",
            "Time to answer a REST request (sampled)",
            stats.durations,
        )

    def _agents(self) -> Iterator[Metric]:
        manager, p = self.node.agents, self.prefix
        if manager is None:
            return
        runtimes = list(manager.runtimes())
        yield _gauge(f"{p}_agents", "Agents on this node", len(runtimes))
        yield UntypedMetricFamily(
            f"{p}_agents_total",
            "Agents on this node (the older name of caxton_agents; a gauge)",
            value=len(runtimes),
        )
        by_state = GaugeMetricFamily(
            f"{p}_agents_by_state", "Agents on this node by state", labels=["state"]
        )
        states: dict[str, int] = {}
        for runtime in runtimes:
            state = str(runtime.agent.state)
            states[state] = states.get(state, 0) + 1
        for state, count in sorted(states.items()):
            by_state.add_metric([state], count)
        yield by_state
        family: dict[str, CounterMetricFamily | GaugeMetricFamily] = {
            "processed": CounterMetricFamily(
                f"{p}_agents_messages_processed", "Messages handled by each agent", labels=["agent"]
            ),
            "crashes": CounterMetricFamily(
                f"{p}_agent_crashes",
                "Crashes of each agent (traps, fuel, memory, time)",
                labels=["agent"],
            ),
            "restarts": CounterMetricFamily(
                f"{p}_agent_restarts", "Restarts of each agent after a crash", labels=["agent"]
            ),
            "fuel": CounterMetricFamily(
                f"{p}_agent_fuel_used", "Fuel consumed by each agent", labels=["agent"]
            ),
            "memory": GaugeMetricFamily(
                f"{p}_agent_memory_used_bytes", "Linear memory of each agent", labels=["agent"]
            ),
            "state": GaugeMetricFamily(
                f"{p}_agent_state_bytes", "Key/value state held by each agent", labels=["agent"]
            ),
            "queue": GaugeMetricFamily(
                f"{p}_agent_backlog", "Messages waiting in each agent's backlog", labels=["agent"]
            ),
            "p99": GaugeMetricFamily(
                f"{p}_agent_message_latency_p99",
                "99th percentile of each agent's recent message handling times, seconds",
                labels=["agent"],
            ),
        }
        for runtime in runtimes:
            agent = runtime.agent
            counters, labels = agent.counters, [agent.name]
            family["processed"].add_metric(labels, counters.messages_handled)
            family["crashes"].add_metric(labels, counters.crashes)
            family["restarts"].add_metric(labels, counters.restarts)
            family["fuel"].add_metric(labels, counters.fuel_used)
            family["memory"].add_metric(labels, manager.memory_bytes(agent.name))
            family["state"].add_metric(labels, runtime.kv_bytes)
            family["queue"].add_metric(labels, len(runtime.backlog))
            times = sorted(runtime.processing.recent())
            family["p99"].add_metric(labels, quantile(times, 0.99))
        yield from family.values()
        yield self.histogram(
            f"{p}_message_processing_time_seconds",
            "Time an agent spent handling one message (all agents; sampled)",
            manager.processing_times,
        )
        yield self.histogram(
            f"{p}_agent_startup_time_seconds",
            "Time from instantiating an agent to it running (init included)",
            manager.startup_times,
        )

    def _router(self) -> Iterator[Metric]:
        router, p = self.node.router, self.prefix
        if router is None:
            return
        stats = router.queue_stats(agents=False)
        yield _gauge(
            f"{p}_queue_depth", "Messages waiting in agent queues", stats.get("total_queued", 0)
        )
        by_priority = GaugeMetricFamily(
            f"{p}_queue_depth_by_priority", "Messages waiting, by priority", labels=["priority"]
        )
        for priority, depth in stats["priorities"].items():
            by_priority.add_metric([priority], depth)
        yield by_priority
        totals = stats["totals"]
        yield _gauge(
            f"{p}_queue_forwarding",
            "Messages waiting to be forwarded to other nodes",
            totals["forwarding"],
        )
        yield _gauge(
            f"{p}_dead_letters", "Messages in the dead-letter queue", stats.get("dead_letters", 0)
        )
        yield _gauge(f"{p}_conversations", "Conversations tracked", stats["conversations"])
        outcomes = CounterMetricFamily(
            f"{p}_messages", "Messages seen by the router, by outcome", labels=["outcome"]
        )
        for outcome in (
            "sent",
            "delivered",
            "forwarded",
            "dead_lettered",
            "expired",
            "duplicates",
            "delivery_errors",
            "not_understood",
            "refused",
            "timeouts",
            "late_replies",
        ):
            outcomes.add_metric([outcome], totals.get(outcome, 0))
        yield outcomes
        handled = totals.get("delivered", 0) + totals.get("forwarded", 0)
        yield _gauge(
            f"{p}_messages_per_second",
            "Messages delivered or forwarded per second, between scrapes",
            self.messages.rate(handled),
        )
        yield self.histogram(
            f"{p}_routing_latency_seconds",
            "Local send-to-deliver wait of a message (sampled)",
            router.latency,
        )
        yield self.histogram(
            f"{p}_remote_routing_latency_seconds",
            "Time to forward a message to the node running its agent",
            router.forward_latency,
        )

    def _cluster(self) -> Iterator[Metric]:
        node, p = self.node, self.prefix
        membership, cluster = node.membership, node.cluster
        if membership is None:
            members, alive, failed, suspect = 1, 1, 0, 0
        else:
            states = [m.status.value for m in membership.members()]
            members = len([s for s in states if s != "left"])
            alive = states.count("alive")
            failed = states.count("failed")
            suspect = states.count("suspect")
        yield _gauge(f"{p}_cluster_nodes", "Known cluster members (not left)", members)
        yield UntypedMetricFamily(
            f"{p}_cluster_nodes_total",
            "Known cluster members (the product documents' name; a gauge)",
            value=members,
        )
        yield _gauge(f"{p}_cluster_nodes_alive", "Alive cluster members", alive)
        yield _gauge(f"{p}_cluster_nodes_suspect", "Suspected cluster members", suspect)
        yield _gauge(f"{p}_cluster_nodes_failed", "Failed cluster members", failed)
        if cluster is not None:
            agents = cluster.registry.count()
        else:
            agents = len(node.agents.list()) if node.agents is not None else 0
        yield _gauge(f"{p}_cluster_agents", "Agents known in the cluster", agents)
        yield UntypedMetricFamily(
            f"{p}_cluster_agents_total",
            "Agents known in the cluster (the product documents' name; a gauge)",
            value=agents,
        )
        if cluster is None:
            return
        yield _gauge(
            f"{p}_cluster_queued_writes",
            "Messages queued for nodes out of reach in a partition, replayed when it heals",
            cluster.partition.queued,
        )
        decision = cluster.decision()
        current = decision.mode.value if decision is not None else "read-write"
        mode = GaugeMetricFamily(
            f"{p}_cluster_mode",
            "1 for this node's partition mode, 0 for the others",
            labels=["mode"],
        )
        for name in MODES:
            mode.add_metric([name], 1.0 if current == name else 0.0)
        yield mode
        events = CounterMetricFamily(
            f"{p}_cluster_events",
            "Cluster events recorded by this node, by kind (joined, suspect, failed, "
            "redistributed, mode...)",
            labels=["kind"],
        )
        for kind, count in sorted(cluster.events.counts.items()):
            events.add_metric([kind], count)
        yield events
        counts = cluster.counts
        for key, doc in (
            ("pushes", "Registry changes pushed to the other members"),
            ("pulls", "Registry pulls from other members"),
            ("lookups", "Agents looked up on other members"),
        ):
            yield CounterMetricFamily(f"{p}_registry_{key}", doc, value=counts.get(key, 0))
        messages = CounterMetricFamily(
            f"{p}_cluster_messages", "Messages between nodes, by outcome", labels=["outcome"]
        )
        for key in ("forwarded", "received", "undeliverable", "refused"):
            messages.add_metric([key], counts.get(key, 0))
        yield messages
        convergence = cluster.convergence
        yield self.histogram(
            f"{p}_gossip_convergence_time_seconds",
            "Time from a member's metadata update to this node hearing it by gossip",
            convergence,
        )
        recent = sorted(convergence.recent())
        if self.legacy:
            yield GaugeMetricFamily(
                f"{p}_cluster_convergence_time_ms",
                "99th percentile of recent gossip convergence times, milliseconds",
                value=1000 * quantile(recent, 0.99),
            )

    def _membership(self) -> Iterator[Metric]:
        membership, p = self.node.membership, self.prefix
        if membership is None or not hasattr(membership, "stats"):
            return
        stats: dict[str, Any] = membership.stats()
        for key, name, doc in (
            ("probes", "swim_probes", "SWIM probes sent"),
            ("probes_failed", "swim_probes_failed", "SWIM probes unanswered in time"),
            ("suspicions", "swim_suspicions", "Members this node began to suspect"),
            ("refutations", "swim_refutations", "Suspicions of this node it refuted"),
            ("messages_sent", "swim_messages_sent", "SWIM messages sent"),
            ("messages_received", "swim_messages_received", "SWIM messages received"),
            ("bytes_sent", "swim_sent_bytes", "Gossip bytes sent (datagrams and syncs)"),
            ("bytes_received", "swim_received_bytes", "Gossip bytes received"),
            ("syncs_sent", "swim_syncs", "Push-pull state syncs started"),
            ("syncs_failed", "swim_syncs_failed", "Push-pull state syncs that failed"),
            ("malformed", "swim_malformed", "Gossip datagrams that could not be read"),
        ):
            if key in stats:
                yield CounterMetricFamily(f"{p}_{name}", doc, value=stats[key])
        if "health_score" in stats:
            yield _gauge(
                f"{p}_swim_health_score",
                "Lifeguard local health (0 is healthy)",
                stats["health_score"],
            )
        rtt_ms = float(stats.get("probe_rtt_ms", 0.0))
        yield _gauge(
            f"{p}_cluster_gossip_latency_seconds",
            "Smoothed round trip of direct SWIM probes",
            rtt_ms / 1000,
        )
        if self.legacy:
            yield _gauge(
                f"{p}_cluster_gossip_latency_ms",
                "Smoothed round trip of direct SWIM probes, milliseconds",
                rtt_ms,
            )

    def _transport(self) -> Iterator[Metric]:
        transport, p = self.node.transport, self.prefix
        if transport is None:
            return
        peers = transport.peer_stats()
        family = {
            key: CounterMetricFamily(f"{p}_transport_{name}", doc, labels=["peer"])
            for key, name, doc in (
                ("frames_sent", "frames_sent", "Frames sent to each peer"),
                ("frames_received", "frames_received", "Frames received from each peer"),
                ("bytes_sent", "sent_bytes", "Bytes sent to each peer"),
                ("bytes_received", "received_bytes", "Bytes received from each peer"),
                ("errors", "errors", "Send and connection errors with each peer"),
                ("connects", "connects", "Connections made with each peer"),
            )
        }
        rtt = GaugeMetricFamily(
            f"{p}_transport_rtt_seconds", "Round trip to each peer", labels=["peer"]
        )
        for address, stats in sorted(peers.items(), key=lambda item: str(item[0])):
            label = [format_address(address)]
            for key, metric in family.items():
                metric.add_metric(label, getattr(stats, key))
            if stats.rtt_ms is not None:
                rtt.add_metric(label, stats.rtt_ms / 1000)
        yield from family.values()
        yield rtt

    def _certificates(self) -> Iterator[Metric]:
        """When each certificate of the node's mutual TLS stops being valid."""
        mtls = self.node.config["security.cluster.mtls"]
        if not mtls.get("enabled"):
            return
        from caxton.security.pki import load_certificate

        expiry = GaugeMetricFamily(
            f"{self.prefix}_tls_certificate_expiry_timestamp_seconds",
            "Unix time at which the node's certificate (node) or its CA (ca) expires",
            labels=["certificate"],
        )
        for label, key in (("node", "node_cert"), ("ca", "ca_cert")):
            with contextlib.suppress(CaxtonError):
                if mtls.get(key):
                    cert = load_certificate(mtls[key])
                    expiry.add_metric([label], cert.not_valid_after_utc.timestamp())
        yield expiry


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _info(name: str, doc: str, labels: dict[str, str]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(f"{name}_info", doc, labels=list(labels))
    family.add_metric(list(labels.values()), 1)
    return family


def build_registry(node: Node) -> CollectorRegistry:
    """The node's collector plus the standard ``process_*``, ``python_*`` and GC ones."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(node))
    ProcessCollector(registry=registry)
    registry.register(PLATFORM_COLLECTOR)
    registry.register(GC_COLLECTOR)
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


async def start_metrics(node: Node, stack: contextlib.AsyncExitStack) -> tuple[str, int] | None:
    """Serve ``/metrics`` when ``observability.enable_metrics``; return the bound address."""
    if not node.config["observability"]["enable_metrics"]:
        return None
    registry = build_registry(node)

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
