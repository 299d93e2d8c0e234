"""The cluster's answer to each diagnostic command, put together from the nodes' reports
(:func:`caxton.diagnostics.gather.gather`): the slow agents, a conversation's messages
in order, an error cascade, the targets table, the analyses and their suggestions, and
the deep verification.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "TARGETS",
    "analyze",
    "analyze_gossip",
    "error_cascade",
    "message_patterns",
    "performance",
    "slow_agents",
    "trace",
    "verify_deep",
]

#: The product documents' targets table: (metric, quantile, target ms, report key).
TARGETS: tuple[tuple[str, str, float, str], ...] = (
    ("Message routing P50", "p50_ms", 0.1, "routing"),
    ("Message routing P99", "p99_ms", 1.0, "routing"),
    ("Remote routing P50", "p50_ms", 5.0, "remote_routing"),
    ("Remote routing P99", "p99_ms", 50.0, "remote_routing"),
    ("Agent startup P50", "p50_ms", 10.0, "agent_startup"),
    ("Agent startup P99", "p99_ms", 100.0, "agent_startup"),
    ("Message processing P50", "p50_ms", 1.0, "message_processing"),
    ("Message processing P99", "p99_ms", 10.0, "message_processing"),
    ("Gossip convergence", "p99_ms", 5000.0, "gossip_convergence"),
)
#: Thresholds of the analyses' suggestions.
GOSSIP_RTT_HIGH_MS = 50.0
PROBE_FAILURES_HIGH = 0.05
GOSSIP_BYTES_HIGH = 1_000_000.0
QUEUE_HIGH = 1000
IMBALANCE_HIGH = 1.5
#: Refutations per probe sent: one at a join is normal; more means false suspicions.
REFUTATIONS_HIGH = 0.01


def _worst(
    reports: Iterable[Mapping[str, Any]], key: str, quantile: str
) -> tuple[float | None, str | None]:
    """The highest ``quantile`` of ``key`` among the nodes that have samples, and which."""
    worst: tuple[float | None, str | None] = (None, None)
    for report in reports:
        value = (report.get(key) or {}).get(quantile)
        if value is not None and (worst[0] is None or value > worst[0]):
            worst = (float(value), str(report["node_id"]))
    return worst


def performance(gathered: Mapping[str, Any]) -> dict[str, Any]:
    """The targets table: each figure is the worst node's (a cluster meets a target when
    every node does). Local routing is the routing probe each node ran just now; the
    other figures are what the nodes recorded from live traffic (none yet: no data)."""
    reports = gathered["nodes"]
    probes = [{"node_id": r["node_id"], "routing": r.get("probe") or {}} for r in reports]
    rows = []
    for metric, quantile, target, key in TARGETS:
        source = probes if key == "routing" and any(p["routing"] for p in probes) else reports
        actual, node_id = _worst(source, key, quantile)
        if actual is None and key == "remote_routing":
            # no forward recorded yet: the transport round trips are the probe
            rtts = sorted(
                float(v)
                for r in reports
                for v in (r.get("transport_rtt_ms") or {}).values()
                if v is not None
            )
            if rtts:
                actual = rtts[len(rtts) // 2] if quantile == "p50_ms" else rtts[-1]
        status = "no-data" if actual is None else ("pass" if actual <= target else "fail")
        rows.append(
            {
                "metric": metric,
                "target_ms": target,
                "actual_ms": actual,
                "node_id": node_id,
                "status": status,
            }
        )
    throughputs = [
        (r["probe"]["throughput_per_second"], r["node_id"])
        for r in reports
        if (r.get("probe") or {}).get("throughput_per_second")
    ]
    return {
        "targets": rows,
        "passed": all(row["status"] != "fail" for row in rows),
        "throughput_per_second": min(throughputs)[0] if throughputs else None,
        "nodes": reports,
        "unreachable": gathered["unreachable"],
    }


def slow_agents(gathered: Mapping[str, Any], threshold_ms: float) -> dict[str, Any]:
    """Agents whose recent P99 handling time is at least ``threshold_ms``, slowest first."""
    slow = [
        {"node_id": report["node_id"], **agent}
        for report in gathered["nodes"]
        for agent in report["agents"]
        if agent.get("p99_ms") is not None and agent["p99_ms"] >= threshold_ms
    ]
    slow.sort(key=lambda a: (-a["p99_ms"], a["agent"]))
    return {"threshold_ms": threshold_ms, "agents": slow, "unreachable": gathered["unreachable"]}


def trace(gathered: Mapping[str, Any], conversation_id: str) -> dict[str, Any]:
    """Every node's record of the conversation's messages, merged in time order; each
    step says how long after the previous one it was routed (``+ms``)."""
    messages = sorted(
        (m for report in gathered["nodes"] for m in report["messages"]),
        key=lambda m: (m["at"], m["node_id"]),
    )
    first = messages[0]["at"] if messages else 0.0
    previous = first
    for message in messages:
        message["offset_ms"] = round((message["at"] - first) * 1000, 3)
        message["delta_ms"] = round((message["at"] - previous) * 1000, 3)
        previous = message["at"]
    known = [r for r in gathered["nodes"] if r.get("known")]
    return {
        "conversation_id": conversation_id,
        "found": bool(known),
        "protocol": next((r.get("protocol") for r in known if r.get("protocol")), None),
        "nodes": sorted(r["node_id"] for r in known),
        "messages": messages,
        "duration_ms": round((messages[-1]["at"] - first) * 1000, 3) if messages else 0.0,
        "unreachable": gathered["unreachable"],
    }


def error_cascade(gathered: Mapping[str, Any], last_seconds: float) -> dict[str, Any]:
    """The errors of the last ``last_seconds`` on every node in time order; the first
    one is the likely root, and each agent appears once in ``cascade``, in the order it
    started failing."""
    events = sorted(
        (e for report in gathered["nodes"] for e in report["events"]),
        key=lambda e: (e["at"], e["node_id"]),
    )
    cascade: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for event in events:
        key = (event["node_id"], str(event.get("agent")))
        if key not in seen:
            seen.add(key)
            cascade.append(
                {
                    "agent": event.get("agent"),
                    "node_id": event["node_id"],
                    "first_at": event["at"],
                    "first": event["kind"],
                    "text": event["text"],
                }
            )
    counts = Counter((e["node_id"], str(e.get("agent"))) for e in events)
    for step in cascade:
        step["errors"] = counts[(step["node_id"], str(step["agent"]))]
    return {
        "last_seconds": last_seconds,
        "root": events[0] if events else None,
        "cascade": cascade,
        "by_kind": dict(Counter(e["kind"] for e in events)),
        "events": events,
        "unreachable": gathered["unreachable"],
    }


#: The most matching records ``analyze messages`` lists (the counts cover all of them).
MATCHES_SHOWN = 100


def message_patterns(
    gathered: Mapping[str, Any], pattern: re.Pattern[str], last_seconds: float
) -> dict[str, Any]:
    """The records of the last ``last_seconds`` whose text ``pattern`` finds, counted by
    kind, agent and node, with the newest :data:`MATCHES_SHOWN` of them.

    A routed message reads ``PERFORMATIVE SENDER -> RECEIVER conversation ID``; an error
    event reads ``KIND AGENT: TEXT`` (a dead letter's reason, a crash, a failure answer,
    an agent's error log line)."""
    records = []
    for report in gathered["nodes"]:
        for message in report["messages"]:
            text = (
                f"{message['performative']} {message['sender']} -> {message['receiver']} "
                f"conversation {message['conversation_id']}"
            )
            records.append(
                {
                    "at": message["at"],
                    "node_id": message["node_id"],
                    "kind": "message",
                    "agent": message["receiver"],
                    "text": text,
                }
            )
        for event in report["events"]:
            text = f"{event['kind']} {event.get('agent') or '-'}: {event['text']}"
            records.append(
                {
                    "at": event["at"],
                    "node_id": event["node_id"],
                    "kind": event["kind"],
                    "agent": event.get("agent"),
                    "text": text,
                }
            )
    matched = sorted((r for r in records if pattern.search(r["text"])), key=lambda r: r["at"])
    return {
        "pattern": pattern.pattern,
        "last_seconds": last_seconds,
        "scanned": len(records),
        "matched": len(matched),
        "by_kind": dict(Counter(r["kind"] for r in matched).most_common()),
        "by_agent": dict(Counter(str(r["agent"]) for r in matched).most_common(20)),
        "by_node": dict(Counter(r["node_id"] for r in matched).most_common()),
        "matches": matched[-MATCHES_SHOWN:],
        "unreachable": gathered["unreachable"],
    }


def _gossip_suggestions(gossip: Iterable[Mapping[str, Any]]) -> list[str]:
    suggestions = []
    for g in gossip:
        if not g.get("clustered"):
            continue
        node_id = g["node_id"]
        if g.get("probe_rtt_ms", 0) > GOSSIP_RTT_HIGH_MS:
            suggestions.append(
                f"High gossip latency on {node_id} ({g['probe_rtt_ms']:.1f} ms): check the "
                f"network between nodes; reduce coordination.cluster.gossip_fanout"
            )
        probes = g.get("probes", 0)
        if probes and g.get("probes_failed", 0) / probes > PROBE_FAILURES_HIGH:
            suggestions.append(
                f"{node_id}: {g['probes_failed']} of {probes} probes unanswered: packet loss "
                f"or overloaded nodes; raise coordination.cluster.probe_timeout"
            )
        p99 = (g.get("convergence") or {}).get("p99_ms")
        if p99 is not None and p99 > 5000:
            suggestions.append(
                f"Slow convergence seen by {node_id} (P99 {p99 / 1000:.1f}s > 5s): decrease "
                f"coordination.cluster.gossip_interval"
            )
        if g.get("bytes_per_second", 0) > GOSSIP_BYTES_HIGH:
            suggestions.append(
                f"Gossip storm on {node_id} ({g['bytes_per_second'] / 1e6:.1f} MB/s): "
                f"increase coordination.cluster.gossip_interval or reduce gossip_fanout"
            )
        if g.get("health_score", 0) > 0:
            suggestions.append(
                f"{node_id} is slow to answer probes (Lifeguard health {g['health_score']}): "
                f"check its CPU (caxton resources) and its event loop (caxton profile)"
            )
        if probes and g.get("refutations", 0) / probes > REFUTATIONS_HIGH:
            suggestions.append(
                f"{node_id} refuted {g['refutations']} suspicions of itself: members "
                f"suspected it wrongly; raise coordination.cluster.suspicion_multiplier"
            )
    return suggestions


def analyze_gossip(gathered: Mapping[str, Any]) -> dict[str, Any]:
    """Each node's gossip load, probe health and convergence, and what to change."""
    gossip = gathered["nodes"]
    suggestions = _gossip_suggestions(gossip)
    return {
        "nodes": gossip,
        "suggestions": suggestions or ["No gossip problems found"],
        "unreachable": gathered["unreachable"],
    }


def analyze(gathered: Mapping[str, Any]) -> dict[str, Any]:
    """Imbalance between nodes, the hottest agents, gossip load, queues and dead
    letters, with suggestions as the clustering guide writes them."""
    reports = gathered["nodes"]
    counts = {r["node_id"]: r["agents"] for r in reports}
    mean = sum(counts.values()) / len(counts) if counts else 0.0
    busiest = max(counts, key=lambda n: (counts[n], n)) if counts else None
    imbalance = round(counts[busiest] / mean, 2) if busiest is not None and mean else 1.0
    hot = sorted(
        ({"node_id": r["node_id"], **a} for r in reports for a in r["hot_agents"]),
        key=lambda a: (-a["messages"], a["agent"]),
    )[:10]
    suggestions = []
    if busiest is not None and imbalance > IMBALANCE_HIGH and counts[busiest] >= 2:
        suggestions.append(
            f"Imbalance: {busiest} runs {counts[busiest]} agents, {imbalance}x the mean of "
            f"{mean:.1f}: place new agents elsewhere (placement strategy least-loaded)"
        )
    for r in reports:
        if r["queued"] > QUEUE_HIGH:
            suggestions.append(
                f"{r['node_id']}: {r['queued']} messages queued: check slow agents "
                f"(caxton agents slow)"
            )
        if r["dead_letters"]:
            suggestions.append(
                f"{r['node_id']}: {r['dead_letters']} dead letters: see caxton trace "
                f"--error-cascade and GET /api/v1/dead-letters"
            )
    suggestions += _gossip_suggestions(r["gossip"] for r in reports)
    return {
        "agents_per_node": counts,
        "mean_agents": round(mean, 2),
        "imbalance": imbalance,
        "hot_agents": hot,
        "nodes": reports,
        "suggestions": suggestions or ["No problems found"],
        "unreachable": gathered["unreachable"],
    }


def verify_deep(gathered: Mapping[str, Any], only: str | None = None) -> dict[str, Any]:
    """Compare what the nodes hold: each node's registry against what each owner says
    it runs, each hosted agent's replicas against its holders, and every store's
    integrity. ``only``: the problems that concern that node."""
    reports = {r["node_id"]: r for r in gathered["nodes"]}
    problems: dict[str, list[str]] = {node_id: [] for node_id in reports}
    owned = {
        node_id: {spec["name"]: agent_id for agent_id, spec in (report.get("hosted") or {}).items()}
        for node_id, report in reports.items()
    }
    for node_id, report in reports.items():
        for bad in report.get("integrity") or ():
            problems[node_id].append(f"state store corrupt: {bad}")
        registry = report.get("registry") or {}
        for owner, agents in owned.items():
            held = {name: entry[0] for name, entry in (registry.get(owner) or {}).items()}
            missing = sorted(set(agents) - set(held))
            extra = sorted(set(held) - set(agents))
            wrong = sorted(n for n in set(agents) & set(held) if held[n] != agents[n])
            if missing:
                problems[node_id].append(f"registry lacks {owner}'s {', '.join(missing)}")
            if extra:
                problems[node_id].append(
                    f"registry lists {', '.join(extra)} on {owner}, which does not run them"
                )
            if wrong:
                problems[node_id].append(f"registry has other ids for {owner}'s {', '.join(wrong)}")
    replicas_checked = 0
    for owner, report in reports.items():
        for agent_id, spec in (report.get("hosted") or {}).items():
            for holder in spec["holders"]:
                if holder == owner or holder not in reports:
                    continue
                replicas_checked += 1
                copy = (reports[holder].get("replicas") or {}).get(agent_id)
                if copy is None:
                    problems[holder].append(f"holds no replica of {spec['name']} ({owner})")
                elif copy["generation"] != spec["generation"]:
                    problems[holder].append(
                        f"replica of {spec['name']} at generation {copy['generation']}, "
                        f"{owner} runs generation {spec['generation']}"
                    )
                elif copy["module_sha256"] != spec["module_sha256"]:
                    problems[holder].append(f"replica of {spec['name']} has another module")
    nodes = [
        {
            "node_id": node_id,
            "reachable": True,
            "agents": len(reports[node_id].get("hosted") or {}),
            "replicas": len(reports[node_id].get("replicas") or {}),
            "integrity": "ok" if not reports[node_id].get("integrity") else "CORRUPT",
            "agrees": not problems[node_id],
            "problems": problems[node_id],
        }
        for node_id in sorted(reports)
    ]
    nodes += [
        {
            "node_id": u["node_id"],
            "reachable": False,
            "agents": None,
            "replicas": None,
            "integrity": None,
            "agrees": False,
            "problems": [f"unreachable: {u['error']}"],
        }
        for u in gathered["unreachable"]
    ]
    if only is not None:
        nodes = [n for n in nodes if n["node_id"] == only]
    return {
        "consistent": all(n["agrees"] for n in nodes),
        "replicas_checked": replicas_checked,
        "nodes": nodes,
    }
