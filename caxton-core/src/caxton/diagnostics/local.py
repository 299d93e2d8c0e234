"""One node's diagnostic reports, from what the node keeps anyway.

Each report is plain JSON data about this node only, tagged with its ``node_id``;
:mod:`caxton.diagnostics.gather` asks every node for the same report and puts the
answers together. :func:`run` is the entry point of the ``diag`` cluster operation:
``{"report": NAME, ...arguments}`` -> that report.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import math
import os
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from caxton import __version__
from caxton.api.resources import memory_rss_bytes, memory_total_bytes
from caxton.errors import NotFound, ValidationError
from caxton.messaging.message import Message
from caxton.messaging.performatives import Performative
from caxton.samples import Samples, quantile

if TYPE_CHECKING:
    from caxton.node import Node

__all__ = ["MAX_PROFILE_SECONDS", "MIN_PROFILE_SECONDS", "REPORTS", "run"]

#: The shortest and longest ``caxton profile`` a node runs.
MIN_PROFILE_SECONDS = 0.1
MAX_PROFILE_SECONDS = 300.0
#: Stack samples per second of the profiler.
PROFILE_HZ = 100
#: Where the event loop's thread is when it waits for I/O (asyncio's selector; uvloop
#: waits in C under ``asyncio.run``): the profile counts these samples as idle.
IDLE_FRAMES = frozenset({"selectors.py:select", "runners.py:run", "base_events.py:run_forever"})
IDLE = "(idle: the event loop waits for I/O)"
#: Messages of the local routing probe of ``cluster performance``.
PROBE_MESSAGES = 500
#: Performatives that report a failure in a conversation (``trace --error-cascade``).
FAILURE_PERFORMATIVES = frozenset({"failure", "refuse", "not-understood"})
#: Seconds between a crash's failure answer and the crash's record (``errors``).
CRASH_ANSWER_WINDOW = 0.5
_CGROUP_LIMIT = Path("/sys/fs/cgroup/memory.max")


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def _timings(samples: Samples) -> dict[str, Any]:
    """Count and quantiles (milliseconds) of the recent window of ``samples``."""
    values = sorted(samples.recent())
    return _summary(values)


def _summary(ordered: list[float]) -> dict[str, Any]:
    if not ordered:
        return {"samples": 0, "avg_ms": None, "p50_ms": None, "p99_ms": None, "max_ms": None}
    return {
        "samples": len(ordered),
        "avg_ms": _ms(math.fsum(ordered) / len(ordered)),
        "p50_ms": _ms(quantile(ordered, 0.5)),
        "p99_ms": _ms(quantile(ordered, 0.99)),
        "max_ms": _ms(ordered[-1]),
    }


# -------------------------------------------------------------------------
# memory stats / memory gc
# -------------------------------------------------------------------------


def memory_limit_bytes() -> int:
    """The memory this process may use: its cgroup's limit, else the host's memory."""
    total = memory_total_bytes()
    try:
        raw = _CGROUP_LIMIT.read_text().strip()
    except OSError:
        return total
    if raw.isdigit() and (total == 0 or int(raw) < total):
        return int(raw)
    return total


def memory(node: Node, **_: Any) -> dict[str, Any]:
    """The node's resident memory against its limit, and each agent's share."""
    manager = node.agents
    agents = []
    for runtime in manager.runtimes() if manager is not None else ():
        agent = runtime.agent
        agents.append(
            {
                "agent": agent.name,
                "memory_bytes": manager.memory_bytes(agent.name) if manager else 0,
                "memory_limit_bytes": int(agent.limits.max_memory_bytes),
                "state_bytes": runtime.kv_bytes,
                "backlog": len(runtime.backlog),
            }
        )
    agents.sort(key=lambda a: (-a["memory_bytes"], a["agent"]))
    router = node.router
    return {
        "node_id": node.node_id,
        "used_bytes": memory_rss_bytes(),
        "limit_bytes": memory_limit_bytes(),
        "agents": len(agents),
        "agent_memory_bytes": sum(a["memory_bytes"] for a in agents),
        "agent_state_bytes": sum(a["state_bytes"] for a in agents),
        "queued_messages": router.queue_stats(agents=False)["total_queued"] if router else 0,
        "python_objects": len(gc.get_objects()),
        "per_agent": agents,
    }


def _malloc_trim() -> bool:
    """Hand freed heap pages back to the system (glibc only); whether it could."""
    name = ctypes.util.find_library("c")
    if not name or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):
        return False


async def collect_garbage(node: Node, aggressive: bool = False, **_: Any) -> dict[str, Any]:
    """A full garbage collection; ``aggressive`` also frees SQLite's caches and hands
    the freed heap back to the system. Resident memory before and after."""
    before = memory_rss_bytes()
    collected = gc.collect()
    actions = [f"gc.collect(): {collected} unreachable objects"]
    if aggressive:
        store = node.store
        if store is not None:
            await store.connection.execute("PRAGMA shrink_memory")
            actions.append("SQLite: PRAGMA shrink_memory")
        if await asyncio.to_thread(_malloc_trim):
            actions.append("malloc_trim(0): freed heap returned to the system")
    after = memory_rss_bytes()
    return {
        "node_id": node.node_id,
        "aggressive": aggressive,
        "collected_objects": collected,
        "used_bytes_before": before,
        "used_bytes_after": after,
        "freed_bytes": max(0, before - after),
        "actions": actions,
    }


# -------------------------------------------------------------------------
# agents slow
# -------------------------------------------------------------------------


def agents(node: Node, **_: Any) -> dict[str, Any]:
    """Each agent's recent handling times (its last 256 messages) and counters."""
    manager = node.agents
    rows = []
    for runtime in manager.runtimes() if manager is not None else ():
        agent = runtime.agent
        counters = agent.counters
        rows.append(
            {
                "agent": agent.name,
                "state": str(agent.state),
                "messages": counters.messages_handled,
                **_timings(runtime.processing),
                "fuel_used": counters.fuel_used,
                "crashes": counters.crashes,
                "backlog": len(runtime.backlog),
            }
        )
    return {"node_id": node.node_id, "agents": rows}


# -------------------------------------------------------------------------
# trace --conversation-id / --error-cascade
# -------------------------------------------------------------------------


def conversation(node: Node, conversation_id: str = "", **_: Any) -> dict[str, Any]:
    """The messages of ``conversation_id`` this node's router routed, in order (from the
    router's ring of its last conversation messages)."""
    router = node.router
    found = router.conversation(conversation_id) if router is not None else None
    messages = router.conversation_trail(conversation_id) if router is not None else []
    if found is None and not messages:
        return {"node_id": node.node_id, "known": False, "messages": []}
    return {
        "node_id": node.node_id,
        "known": True,
        "protocol": found.protocol if found is not None else None,
        "state": found.state if found is not None else None,
        "messages": [{**message, "node_id": node.node_id} for message in messages],
    }


def errors(node: Node, since: float = 0.0, **_: Any) -> dict[str, Any]:
    """What went wrong here since ``since`` (Unix time): agent crashes, dead letters,
    failure answers routed, and error lines of the agents' logs."""
    events: list[dict[str, Any]] = []
    crashes: list[dict[str, Any]] = []
    recorder = node.diagnostics
    for crash in recorder.crashes if recorder is not None else ():
        if crash["at"] >= since:
            crashes.append(
                {
                    "at": crash["at"],
                    "kind": "crash",
                    "agent": crash["agent"],
                    "text": f"{crash['reason']}: {crash['error']}",
                }
            )
    router = node.router
    if router is not None:
        for letter in router.dead_letters(limit=10_000):
            if letter.at < since:
                break  # newest first
            message = letter.message
            events.append(
                {
                    "at": letter.at,
                    "kind": "dead-letter",
                    "agent": message.receiver,
                    "sender": message.sender,
                    "conversation_id": message.conversation_id,
                    "text": letter.reason,
                }
            )
        for message in router.conversation_messages(since):
            performative = message["performative"]
            if performative in FAILURE_PERFORMATIVES:
                sender, receiver = message["sender"], message["receiver"]
                events.append(
                    {
                        "at": message["at"],
                        "kind": performative,
                        "agent": sender,
                        "receiver": receiver,
                        "conversation_id": message["conversation_id"],
                        "text": f"{sender} answered {performative} to {receiver}",
                    }
                )
    manager = node.agents
    for runtime in manager.runtimes() if manager is not None else ():
        for line in runtime.logbook.since(since):
            if line.level in ("error", "critical"):
                events.append(
                    {
                        "at": line.at,
                        "kind": "agent-log",
                        "agent": runtime.agent.name,
                        "text": line.text,
                    }
                )
    # A crash's failure answer is routed just before the hooks hear of the crash: the
    # crash happened when its answer left, and comes first.
    for crash in crashes:
        answers = [
            e["at"]
            for e in events
            if e["kind"] == "failure"
            and e["agent"] == crash["agent"]
            and 0 <= crash["at"] - e["at"] <= CRASH_ANSWER_WINDOW
        ]
        if answers:
            crash["at"] = min(answers)
    events += crashes
    for event in events:
        event["node_id"] = node.node_id
    events.sort(key=lambda e: (e["at"], e["kind"] != "crash"))
    return {"node_id": node.node_id, "events": events}


def messages(node: Node, since: float = 0.0, **_: Any) -> dict[str, Any]:
    """What this node recorded of the messages since ``since`` (``analyze messages``):
    the conversation messages its router routed (who, to whom, which performative; the
    router keeps no contents) and the :func:`errors` events (dead letters with their
    reasons, failure answers, crashes, agents' error log lines)."""
    router = node.router
    routed = router.conversation_messages(since) if router is not None else []
    return {
        "node_id": node.node_id,
        "messages": [{**message, "node_id": node.node_id} for message in routed],
        "events": errors(node, since)["events"],
    }


# -------------------------------------------------------------------------
# cluster performance / analyze / analyze-gossip
# -------------------------------------------------------------------------


async def _routing_probe(node: Node, count: int) -> dict[str, Any]:
    """Send ``count`` messages between two probe endpoints registered with this node's
    router (not agents, not announced to the cluster); time each send to its delivery,
    then the whole batch sent at once (throughput)."""
    router = node.router
    if router is None:
        return {}
    tag = os.urandom(4).hex()
    sender, receiver = f"caxton-probe-{tag}-a", f"caxton-probe-{tag}-b"
    waits: list[float] = []
    done = asyncio.Event()
    expected = [0]

    def deliver(message: Message) -> None:
        waits.append(time.perf_counter() - float(message.content))
        if len(waits) >= expected[0]:
            done.set()

    router.register(sender, lambda _message: None)
    router.register(receiver, deliver)
    try:
        expected[0] = count
        for _ in range(count):
            await router.send(
                Message(Performative.INFORM, sender, receiver, content=time.perf_counter()),
                local_only=True,
            )
        await asyncio.wait_for(done.wait(), 30.0)
        latency = sorted(waits)
        waits.clear()
        done.clear()
        expected[0] = count
        started = time.perf_counter()
        for _ in range(count):
            router.send_nowait(
                Message(Performative.INFORM, sender, receiver, content=time.perf_counter()),
                local_only=True,
            )
        await asyncio.wait_for(done.wait(), 30.0)
        elapsed = time.perf_counter() - started
    finally:
        router.unregister(sender)
        router.unregister(receiver)
    return {
        "messages": count,
        **_summary(latency),
        "throughput_per_second": round(count / elapsed) if elapsed > 0 else None,
    }


async def performance(node: Node, probe: bool = True, **_: Any) -> dict[str, Any]:
    """The figures of the product documents' targets table as this node sees them: the
    recorded samples (routing, forwarding, startup, handling, gossip convergence) and,
    with ``probe``, a routing probe through this node's router."""
    router, manager, cluster = node.router, node.agents, node.cluster
    for runtime in manager.runtimes() if manager is not None else ():
        runtime.processing.fold()  # each agent's times reach the node-wide samples
    report: dict[str, Any] = {
        "node_id": node.node_id,
        "routing": _timings(router.latency) if router else _summary([]),
        "remote_routing": _timings(router.forward_latency) if router else _summary([]),
        "agent_startup": _timings(manager.startup_times) if manager else _summary([]),
        "message_processing": _timings(manager.processing_times) if manager else _summary([]),
        "gossip_convergence": _timings(cluster.convergence) if cluster else _summary([]),
        "transport_rtt_ms": {},
    }
    if cluster is not None:
        peers = [m for m in cluster.membership.members() if m.node_id != node.node_id]
        pings = await asyncio.gather(
            *(cluster.ping(m.node_id) for m in peers if m.status.value == "alive"),
            return_exceptions=True,
        )
        report["transport_rtt_ms"] = {
            p["node_id"]: p.get("transport_rtt_ms") for p in pings if isinstance(p, dict)
        }
    if probe:
        report["probe"] = await _routing_probe(node, PROBE_MESSAGES)
    return report


def load(node: Node, **_: Any) -> dict[str, Any]:
    """Agents, messages and their rates on this node (``cluster analyze``)."""
    manager, router = node.agents, node.router
    hot = []
    for runtime in manager.runtimes() if manager is not None else ():
        counters = runtime.agent.counters
        hot.append(
            {
                "agent": runtime.agent.name,
                "messages": counters.messages_handled,
                "fuel_used": counters.fuel_used,
                "backlog": len(runtime.backlog),
                **_timings(runtime.processing),
            }
        )
    count = len(hot)
    hot = [a for a in hot if a["messages"]]
    hot.sort(key=lambda a: (-a["messages"], a["agent"]))
    stats = router.queue_stats(agents=False) if router is not None else {"totals": {}}
    totals = stats["totals"]
    uptime = max(time.time() - (node.started_at or time.time()), 1e-9)
    return {
        "node_id": node.node_id,
        "agents": count,
        "messages_delivered": totals.get("delivered", 0),
        "messages_forwarded": totals.get("forwarded", 0),
        "messages_per_second": round(
            (totals.get("delivered", 0) + totals.get("forwarded", 0)) / uptime, 3
        ),
        "queued": stats.get("total_queued", 0),
        "dead_letters": stats.get("dead_letters", 0),
        "uptime_seconds": round(uptime, 3),
        "hot_agents": hot[:10],
        "gossip": gossip(node),
    }


def gossip(node: Node, **_: Any) -> dict[str, Any]:
    """SWIM traffic, probe health and convergence as this node sees them."""
    settings = node.config["coordination.cluster"]
    report: dict[str, Any] = {
        "node_id": node.node_id,
        "settings": {
            key: settings.get(key)
            for key in (
                "gossip_interval",
                "gossip_fanout",
                "probe_interval",
                "probe_timeout",
                "suspicion_multiplier",
                "push_pull_interval",
            )
        },
    }
    membership, cluster = node.membership, node.cluster
    if membership is None or cluster is None:
        return {**report, "clustered": False}
    stats: dict[str, Any] = membership.stats() if hasattr(membership, "stats") else {}
    uptime = max(time.time() - (node.started_at or time.time()), 1e-9)
    statuses = Counter(m.status.value for m in membership.members())
    return {
        **report,
        "clustered": True,
        "members": dict(statuses),
        "probes": stats.get("probes", 0),
        "probes_failed": stats.get("probes_failed", 0),
        "suspicions": stats.get("suspicions", 0),
        "refutations": stats.get("refutations", 0),
        "messages_sent": stats.get("messages_sent", 0),
        "messages_received": stats.get("messages_received", 0),
        "bytes_sent": stats.get("bytes_sent", 0),
        "bytes_received": stats.get("bytes_received", 0),
        "bytes_per_second": round(
            (stats.get("bytes_sent", 0) + stats.get("bytes_received", 0)) / uptime, 1
        ),
        "syncs_failed": stats.get("syncs_failed", 0),
        "health_score": stats.get("health_score", 0),
        "probe_rtt_ms": round(float(stats.get("probe_rtt_ms", 0.0)), 3),
        "convergence": _timings(cluster.convergence),
    }


# -------------------------------------------------------------------------
# config diff, debug dump, cluster verify --deep
# -------------------------------------------------------------------------


def configuration(node: Node, **_: Any) -> dict[str, Any]:
    """The running configuration and its defaults, secrets masked, and where each key
    came from."""
    config = node.config
    defaults = {path: section.defaults() for path, section in config.sections.items()}
    masked_defaults: dict[str, Any] = {}
    for path, values in sorted(defaults.items()):
        target = masked_defaults
        for part in path.split("."):
            target = target.setdefault(part, {})
        target.update(values)
    return {
        "node_id": node.node_id,
        "version": __version__,
        "config": config.to_dict(mask_secrets=True),
        "defaults": masked_defaults,
        "sources": dict(sorted(config.sources.items())),
    }


def status(node: Node, **_: Any) -> dict[str, Any]:
    """Versions, membership, registry and queues: what a support bundle starts with."""
    cluster, router = node.cluster, node.router
    report: dict[str, Any] = {
        "node_id": node.node_id,
        "version": __version__,
        "python": sys.version.split()[0],
        "platform": sys.platform,
        "pid": os.getpid(),
        "started_at": node.started_at,
        "agents": [a.to_dict() for a in node.agents.list()] if node.agents else [],
        "queues": router.queue_stats() if router is not None else None,
        "dead_letters": [d.to_dict() for d in router.dead_letters(100)] if router else [],
    }
    if cluster is not None:
        report["cluster"] = cluster.status()
        report["members"] = cluster.members()
        report["registry"] = [
            {"name": e.name, "node_id": e.node_id, "state": e.state, "agent_id": e.agent_id}
            for e in cluster.registry.entries()
        ]
        report["events"] = [e.to_dict() for e in cluster.events.recent(200)]
    return report


def metrics_text(node: Node, **_: Any) -> dict[str, Any]:
    """The node's Prometheus exposition, as a scrape would read it."""
    from caxton.metrics import build_registry, exposition

    return {"node_id": node.node_id, "text": exposition(build_registry(node)).decode()}


def logs(node: Node, since: float = 0.0, **_: Any) -> dict[str, Any]:
    """The node's recent log lines and each agent's own."""
    recorder = node.diagnostics
    agent_lines = {}
    for runtime in node.agents.runtimes() if node.agents is not None else ():
        name = runtime.agent.name
        agent_lines[name] = [line.to_dict(name) for line in runtime.logbook.since(since)]
    return {
        "node_id": node.node_id,
        "node": recorder.log_lines(since) if recorder is not None else [],
        "agents": agent_lines,
    }


async def holdings(node: Node, integrity: bool = False, **_: Any) -> dict[str, Any]:
    """What ``cluster verify --deep`` compares: this node's registry entries, the
    agents it hosts with their replica holders, the replicas it holds, and (with
    ``integrity``) SQLite's integrity check of its state store."""
    cluster = node.cluster
    report: dict[str, Any] = {"node_id": node.node_id}
    if cluster is not None:
        registry: dict[str, dict[str, list[Any]]] = {}
        for entry in cluster.registry.entries():
            registry.setdefault(entry.node_id, {})[entry.name] = [entry.agent_id, entry.state]
        failover = cluster.failover
        report["registry"] = registry
        report["hosted"] = {
            agent.id: {
                "name": agent.name,
                "generation": failover.generation(agent.id),
                "module_sha256": agent.module_sha256,
                "holders": list(failover.holders.get(agent.id, ())),
            }
            for agent in (node.agents.list() if node.agents is not None else ())
        }
        report["replicas"] = {
            r.agent_id: {
                "name": r.name,
                "owner": r.owner,
                "generation": r.generation,
                "module_sha256": r.module_sha256,
            }
            for r in failover.replicas.values()
        }
    if integrity and node.store is not None:
        rows = await node.store.connection.execute_fetchall("PRAGMA integrity_check")
        found = [str(row[0]) for row in rows]
        report["integrity"] = [] if found == ["ok"] else found
    return report


# -------------------------------------------------------------------------
# profile
# -------------------------------------------------------------------------


def _sample_stacks(thread_id: int, seconds: float, stop: threading.Event) -> Counter[str]:
    """Collapsed stacks (``outer;inner;leaf``) of thread ``thread_id``, sampled at
    :data:`PROFILE_HZ` for ``seconds``."""
    stacks: Counter[str] = Counter()
    deadline = time.monotonic() + seconds
    while not stop.wait(1 / PROFILE_HZ) and time.monotonic() < deadline:
        frame = sys._current_frames().get(thread_id)
        if frame is None:
            continue
        summary = traceback.extract_stack(frame)
        stacks[";".join(f"{Path(f.filename).name}:{f.name}:{f.lineno}" for f in summary)] += 1
    return stacks


async def profile(
    node: Node, seconds: float = 10.0, agent: str | None = None, **_: Any
) -> dict[str, Any]:
    """Sample the node's event loop thread for ``seconds`` (where its time goes: the
    top functions and collapsed stacks for a flame graph), and what each agent (or
    ``agent`` only) handled and burnt meanwhile."""
    if not MIN_PROFILE_SECONDS <= seconds <= MAX_PROFILE_SECONDS:
        raise ValidationError(
            f"a profile lasts from {MIN_PROFILE_SECONDS:g}s to {MAX_PROFILE_SECONDS:g}s"
        )
    manager = node.agents
    runtimes = list(manager.runtimes()) if manager is not None else []
    if agent is not None:
        runtimes = [r for r in runtimes if agent in (r.agent.name, r.agent.id)]
        if not runtimes:
            raise NotFound(f"Agent not found on node {node.node_id}: {agent}")

    def counters() -> dict[str, tuple[int, int, int]]:
        return {
            r.agent.name: (
                r.agent.counters.messages_handled,
                r.agent.counters.fuel_used,
                r.agent.counters.crashes,
            )
            for r in runtimes
        }

    before, cpu_before, started = counters(), time.process_time(), time.monotonic()
    stop = threading.Event()
    loop_thread = threading.get_ident()
    sampler = asyncio.to_thread(_sample_stacks, loop_thread, seconds, stop)
    try:
        stacks = await sampler
    finally:
        stop.set()
    elapsed = max(time.monotonic() - started, 1e-9)
    cpu = time.process_time() - cpu_before
    after = counters()
    per_agent = []
    for r in runtimes:
        name = r.agent.name
        b = before.get(name, (0, 0, 0))
        a = after.get(name, b)
        handled = a[0] - b[0]
        per_agent.append(
            {
                "agent": name,
                "messages": handled,
                "messages_per_second": round(handled / elapsed, 3),
                "fuel_used": a[1] - b[1],
                "fuel_per_message": round((a[1] - b[1]) / handled) if handled else None,
                "crashes": a[2] - b[2],
                **_timings(r.processing),
            }
        )
    functions: Counter[str] = Counter()
    total = sum(stacks.values())
    for stack, count in stacks.items():
        leaf = stack.rsplit(";", 1)[-1].rsplit(":", 1)[0]  # file:function
        functions[IDLE if leaf in IDLE_FRAMES else leaf] += count
    return {
        "node_id": node.node_id,
        "seconds": round(elapsed, 3),
        "cpu_seconds": round(cpu, 3),
        "cpu_percent": round(100 * cpu / elapsed, 1),
        "samples": total,
        "top": [
            {"function": name, "samples": n, "percent": round(100 * n / total, 1)}
            for name, n in functions.most_common(20)
        ]
        if total
        else [],
        "stacks": dict(stacks.most_common(200)),
        "agents": per_agent,
    }


async def bundle(node: Node, **_: Any) -> dict[str, Any]:
    """This node's part of ``caxton debug dump`` (:mod:`caxton.diagnostics.dump`)."""
    from caxton.diagnostics.dump import node_files

    return await node_files(node)


#: The reports the ``diag`` operation answers: name -> function(node, **arguments).
REPORTS: Mapping[str, Callable[..., Any]] = {
    "memory": memory,
    "gc": collect_garbage,
    "agents": agents,
    "conversation": conversation,
    "errors": errors,
    "messages": messages,
    "performance": performance,
    "load": load,
    "gossip": gossip,
    "config": configuration,
    "status": status,
    "metrics": metrics_text,
    "logs": logs,
    "holdings": holdings,
    "profile": profile,
    "bundle": bundle,
}


async def run(node: Node, body: Mapping[str, Any]) -> Any:
    """The report ``body["report"]`` of this node, with the rest of ``body`` as its
    arguments."""
    name = body.get("report")
    report = REPORTS.get(name) if isinstance(name, str) else None
    if report is None:
        raise ValidationError(f"unknown diagnostic report {name!r}; known: {', '.join(REPORTS)}")
    arguments = {k: v for k, v in body.items() if k != "report"}
    result = report(node, **arguments)
    if isinstance(result, Awaitable):
        result = await result
    return result
