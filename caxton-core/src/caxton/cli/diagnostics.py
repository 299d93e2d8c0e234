"""The diagnostic commands of the runbook and the tuning guide: ``caxton cluster
performance|analyze|analyze-gossip``, ``caxton agents slow``, ``caxton memory
stats|gc``, ``caxton trace``, ``caxton profile``, ``caxton debug dump`` and ``caxton
config diff``.

Each drives the node ``--api-url`` names, which asks every reachable node
(``/api/v1/diagnostics/...``), so any node answers for the cluster. See
docs/observability.md, "Diagnostics".
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from caxton.cli.backup import download
from caxton.cli.client import _duration, agents_group, api_options, json_option
from caxton.cli.client_http import ApiClient
from caxton.cli.main import config_group, emit_json, render_table
from caxton.units import format_size

__all__ = ["CLUSTER_COMMANDS", "COMMANDS"]


def _ms(value: Any) -> str:
    """Milliseconds as the documents print them: 87μs, 0.9ms, 2.1s, 5m, 1h."""
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.0f}μs"
    if value < 1000:
        return f"{value:.3g}ms"
    if value < 60_000:
        return f"{value / 1000:.3g}s"
    if value < 3_600_000:
        return f"{value / 60_000:.3g}m"
    return f"{value / 3_600_000:.3g}h"


def _unreachable(data: dict[str, Any]) -> None:
    for entry in data.get("unreachable") or ():
        click.echo(f"Warning: {entry['node_id']} did not answer: {entry['error']}", err=True)


def _suggestions(data: dict[str, Any]) -> None:
    click.echo("\nSuggestions:")
    for suggestion in data["suggestions"]:
        click.echo(f"- {suggestion}")
    _unreachable(data)


def _node_query(node: str | None) -> dict[str, Any]:
    return {"node": node} if node else {}


_NODE_OPTION = click.option("--node", help="Only this member (default: every reachable one).")


# -------------------------------------------------------------------------
# caxton cluster performance / analyze / analyze-gossip
# -------------------------------------------------------------------------

_STATUS = {"pass": "✓ PASS", "fail": "✗ FAIL", "no-data": "- no data yet"}


@click.command("performance")
@click.option("--no-probe", is_flag=True, help="Only the recorded figures; send no probe.")
@json_option
@api_options
def cluster_performance(client: ApiClient, no_probe: bool, as_json: bool) -> None:
    """Measure the cluster against the performance targets (exit 1 if one fails)."""
    query = {"probe": "false"} if no_probe else None
    data = client.request("GET", "/api/v1/diagnostics/performance", query=query, wait=60)
    if as_json:
        emit_json(data)
    else:
        rows = [
            (
                row["metric"],
                ("<" if row["metric"] == "Gossip convergence" else "") + _ms(row["target_ms"]),
                _ms(row["actual_ms"]),
                _STATUS[row["status"]],
                row["node_id"] or "-",
            )
            for row in data["targets"]
        ]
        click.echo(render_table(("METRIC", "TARGET", "ACTUAL", "STATUS", "WORST-NODE"), rows))
        if data.get("throughput_per_second"):
            click.echo(f"Throughput (routing probe): {data['throughput_per_second']:,} msg/s")
        _unreachable(data)
    if not data["passed"]:
        sys.exit(1)


@click.command("analyze")
@json_option
@api_options
def cluster_analyze(client: ApiClient, as_json: bool) -> None:
    """Imbalance, hot agents, queues and gossip load, with suggestions."""
    data = client.request("GET", "/api/v1/diagnostics/analyze", wait=10)
    if as_json:
        emit_json(data)
        return
    click.echo(
        render_table(
            ("NODE", "AGENTS", "MSG/S", "QUEUED", "DEAD-LETTERS", "GOSSIP-B/S"),
            [
                (
                    n["node_id"],
                    n["agents"],
                    f"{n['messages_per_second']:g}",
                    n["queued"],
                    n["dead_letters"],
                    f"{n['gossip'].get('bytes_per_second', 0):g}",
                )
                for n in data["nodes"]
            ],
        )
    )
    click.echo(f"\nImbalance: {data['imbalance']}x the mean of {data['mean_agents']} agents")
    if data["hot_agents"]:
        click.echo("\nHot agents:")
        click.echo(
            render_table(
                ("AGENT", "NODE", "MESSAGES", "P99"),
                [
                    (a["agent"], a["node_id"], a["messages"], _ms(a["p99_ms"]))
                    for a in data["hot_agents"]
                ],
            )
        )
    _suggestions(data)


@click.command("analyze-gossip")
@json_option
@api_options
def cluster_analyze_gossip(client: ApiClient, as_json: bool) -> None:
    """Gossip traffic, probe health and convergence per node, with suggestions."""
    data = client.request("GET", "/api/v1/diagnostics/gossip", wait=10)
    if as_json:
        emit_json(data)
        return
    click.echo(
        render_table(
            ("NODE", "PROBES", "FAILED", "SUSPICIONS", "RTT", "BYTES/S", "CONVERGENCE-P99"),
            [
                (
                    g["node_id"],
                    g.get("probes", "-"),
                    g.get("probes_failed", "-"),
                    g.get("suspicions", "-"),
                    _ms(g.get("probe_rtt_ms")),
                    f"{g.get('bytes_per_second', 0):g}",
                    _ms((g.get("convergence") or {}).get("p99_ms")),
                )
                for g in data["nodes"]
            ],
        )
    )
    _suggestions(data)


# -------------------------------------------------------------------------
# caxton agents slow
# -------------------------------------------------------------------------


@click.command("slow")
@click.option(
    "--threshold",
    callback=_duration,
    default="100ms",
    show_default=True,
    metavar="DURATION",
    help="List agents whose recent P99 handling time is at least this.",
)
@_NODE_OPTION
@json_option
@api_options
def agents_slow(client: ApiClient, threshold: float, node: str | None, as_json: bool) -> None:
    """Agents slower than --threshold (P99 of their last 256 messages)."""
    query = {"threshold_ms": round(threshold * 1000), **_node_query(node)}
    data = client.request("GET", "/api/v1/diagnostics/agents", query=query)
    if as_json:
        emit_json(data)
        return
    click.echo(
        render_table(
            ("AGENT-ID", "NODE", "AVG-LATENCY", "P99-LATENCY", "MESSAGES"),
            [
                (a["agent"], a["node_id"], _ms(a["avg_ms"]), _ms(a["p99_ms"]), a["messages"])
                for a in data["agents"]
            ],
        )
    )
    _unreachable(data)


agents_group.add_command(agents_slow)


# -------------------------------------------------------------------------
# caxton memory stats|gc
# -------------------------------------------------------------------------


@click.group("memory")
def memory_group() -> None:
    """Memory used by each node and agent; garbage collection."""


@memory_group.command("stats")
@click.option("--agents", "per_agent", is_flag=True, help="Also one line per agent.")
@_NODE_OPTION
@json_option
@api_options
def memory_stats(client: ApiClient, per_agent: bool, node: str | None, as_json: bool) -> None:
    """Memory used per node against its limit (and per agent with --agents)."""
    data = client.request("GET", "/api/v1/diagnostics/memory", query=_node_query(node))
    if as_json:
        emit_json(data)
        return
    click.echo(
        render_table(
            ("NODE", "USED", "LIMIT", "AGENTS", "AGENT-MEMORY", "AGENT-STATE"),
            [
                (
                    n["node_id"],
                    format_size(n["used_bytes"]),
                    format_size(n["limit_bytes"]),
                    n["agents"],
                    format_size(n["agent_memory_bytes"]),
                    format_size(n["agent_state_bytes"]),
                )
                for n in data["nodes"]
            ],
        )
    )
    if per_agent:
        click.echo()
        click.echo(
            render_table(
                ("AGENT", "NODE", "MEMORY", "LIMIT", "STATE", "BACKLOG"),
                [
                    (
                        a["agent"],
                        n["node_id"],
                        format_size(a["memory_bytes"]),
                        format_size(a["memory_limit_bytes"]),
                        format_size(a["state_bytes"]),
                        a["backlog"],
                    )
                    for n in data["nodes"]
                    for a in n["per_agent"]
                ],
            )
        )
    _unreachable(data)


@memory_group.command("gc")
@click.option("--aggressive", is_flag=True, help="Also free SQLite's caches and return freed heap.")
@_NODE_OPTION
@json_option
@api_options
def memory_gc(client: ApiClient, aggressive: bool, node: str | None, as_json: bool) -> None:
    """Collect garbage on every node (or --node): memory before and after."""
    body: dict[str, Any] = {"aggressive": aggressive, **_node_query(node)}
    data = client.request("POST", "/api/v1/diagnostics/memory/gc", body, wait=30)
    if as_json:
        emit_json(data)
        return
    click.echo(
        render_table(
            ("NODE", "BEFORE", "AFTER", "FREED", "OBJECTS"),
            [
                (
                    n["node_id"],
                    format_size(n["used_bytes_before"]),
                    format_size(n["used_bytes_after"]),
                    format_size(n["freed_bytes"]),
                    n["collected_objects"],
                )
                for n in data["nodes"]
            ],
        )
    )
    _unreachable(data)


# -------------------------------------------------------------------------
# caxton trace
# -------------------------------------------------------------------------


def _clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at)) + f".{int(at * 1000) % 1000:03d}"


@click.command("trace")
@click.option("--conversation-id", help="Every message of this conversation, across nodes.")
@click.option("--error-cascade", is_flag=True, help="The errors of --last, root first.")
@click.option(
    "--last",
    callback=_duration,
    default="5m",
    show_default=True,
    metavar="DURATION",
    help="How far back --error-cascade looks.",
)
@json_option
@api_options
def trace(
    client: ApiClient,
    conversation_id: str | None,
    error_cascade: bool,
    last: float,
    as_json: bool,
) -> None:
    """Follow a conversation across nodes, or find where a cascade of errors began."""
    if bool(conversation_id) == error_cascade:
        raise click.UsageError("give either --conversation-id ID or --error-cascade")
    if conversation_id:
        _trace_conversation(client, conversation_id, as_json)
    else:
        _trace_errors(client, last, as_json)


def _trace_conversation(client: ApiClient, conversation_id: str, as_json: bool) -> None:
    import urllib.parse

    quoted = urllib.parse.quote(conversation_id, safe="")
    data = client.request("GET", f"/api/v1/diagnostics/conversations/{quoted}")
    if as_json:
        emit_json(data)
    else:
        if not data["found"]:
            raise click.ClickException(
                f"no node knows conversation {conversation_id} (forgotten after "
                f"messaging.conversation_ttl, or never routed)"
            )
        click.echo(
            f"Conversation {conversation_id} ({data['protocol'] or 'no protocol'}): "
            f"{len(data['messages'])} messages on {', '.join(data['nodes'])}, "
            f"{_ms(data['duration_ms'])}"
        )
        click.echo(
            render_table(
                ("TIME", "+MS", "NODE", "PERFORMATIVE", "FROM", "TO", "MESSAGE-ID"),
                [
                    (
                        _clock(m["at"]),
                        f"{m['offset_ms']:.3f}",
                        m["node_id"],
                        m["performative"],
                        m["sender"],
                        m["receiver"],
                        m["message_id"],
                    )
                    for m in data["messages"]
                ],
            )
        )
    _unreachable(data)


def _trace_errors(client: ApiClient, last: float, as_json: bool) -> None:
    data = client.request("GET", "/api/v1/diagnostics/errors", query={"last": max(1, round(last))})
    if as_json:
        emit_json(data)
    elif data["root"] is None:
        click.echo(f"No errors in the last {_ms(last * 1000)}")
    else:
        root = data["root"]
        click.echo(
            f"Root: {_clock(root['at'])} {root['node_id']} {root.get('agent') or '-'}: "
            f"{root['kind']}: {root['text']}"
        )
        click.echo(
            render_table(
                ("FIRST-ERROR", "NODE", "AGENT", "ERRORS", "FIRST", "TEXT"),
                [
                    (
                        _clock(step["first_at"]),
                        step["node_id"],
                        step["agent"] or "-",
                        step["errors"],
                        step["first"],
                        step["text"][:80],
                    )
                    for step in data["cascade"]
                ],
            )
        )
    _unreachable(data)


# -------------------------------------------------------------------------
# caxton profile
# -------------------------------------------------------------------------


@click.command("profile")
@click.argument("kind", required=False, type=click.Choice(["cpu"]))
@click.option("--agent", help="Profile the node running this agent; report its work.")
@_NODE_OPTION
@click.option(
    "--duration",
    callback=_duration,
    default="10s",
    show_default=True,
    metavar="DURATION",
    help="How long to sample (at most 300s).",
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the collapsed stacks here (flamegraph.pl, speedscope).",
)
@json_option
@api_options
def profile(
    client: ApiClient,
    kind: str | None,
    agent: str | None,
    node: str | None,
    duration: float,
    output: Path | None,
    as_json: bool,
) -> None:
    """Sample where the node's time goes (CPU), and each agent's messages and fuel."""
    body: dict[str, Any] = {"seconds": duration, **_node_query(node)}
    if agent:
        body["agent"] = agent
    started = client.request("POST", "/api/v1/diagnostics/profile", body)
    data = _wait_for_profile(client, started["profile_id"], duration)
    if output is not None:
        with output.open("w") as out:
            for report in data["nodes"]:
                for stack, count in report["stacks"].items():
                    out.write(f"{report['node_id']};{stack} {count}\n")
    if as_json:
        emit_json(data)
        return
    for report in data["nodes"]:
        click.echo(
            f"{report['node_id']}: {report['seconds']:g}s, CPU {report['cpu_percent']:g}% "
            f"({report['samples']} samples)"
        )
        click.echo(
            render_table(
                ("FUNCTION", "SAMPLES", "%"),
                [(t["function"], t["samples"], t["percent"]) for t in report["top"][:10]],
            )
        )
        if report["agents"]:
            click.echo(
                render_table(
                    ("AGENT", "MESSAGES", "MSG/S", "FUEL", "FUEL/MSG", "P99"),
                    [
                        (
                            a["agent"],
                            a["messages"],
                            a["messages_per_second"],
                            a["fuel_used"],
                            a["fuel_per_message"] or "-",
                            _ms(a["p99_ms"]),
                        )
                        for a in report["agents"]
                    ],
                )
            )
        click.echo()
    if output is not None:
        click.echo(f"Collapsed stacks written to {output}")
    _unreachable(data)


def _wait_for_profile(client: ApiClient, profile_id: str, duration: float) -> dict[str, Any]:
    deadline = time.monotonic() + duration + 60
    time.sleep(min(duration, 1.0))
    while True:
        data: dict[str, Any] = client.request("GET", f"/api/v1/diagnostics/profile/{profile_id}")
        if data["status"] == "done":
            return data
        if data["status"] == "failed":
            raise click.ClickException(f"profile {profile_id} failed: {data.get('error')}")
        if time.monotonic() > deadline:
            raise click.ClickException(f"profile {profile_id} did not finish in time")
        time.sleep(0.5)


# -------------------------------------------------------------------------
# caxton debug dump
# -------------------------------------------------------------------------


@click.group("debug")
def debug_group() -> None:
    """Support bundles."""


@debug_group.command("dump")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Archive to write (default: caxton-debug-<time>.tar.gz here).",
)
@json_option
@api_options
def debug_dump(client: ApiClient, output: Path | None, as_json: bool) -> None:
    """One .tar.gz with every node's configuration (secrets masked), versions,
    membership, registry, queues, metrics, recent logs and errors."""
    target = output or Path(f"caxton-debug-{int(time.time())}.tar.gz")
    download(client, "/api/v1/diagnostics/dump", target)
    if as_json:
        emit_json({"path": str(target), "size": target.stat().st_size})
    else:
        click.echo(f"Wrote {target} ({format_size(target.stat().st_size)})")


# -------------------------------------------------------------------------
# caxton config diff
# -------------------------------------------------------------------------


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix: data}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


#: Keys that differ between the nodes of a healthy cluster (left out of --other-node
#: unless --all).
PER_NODE_KEYS = frozenset(
    {
        "node.id",
        "node.data_dir",
        "node.zone",
        "node.region",
        "networking.bind_address",
        "networking.metrics_address",
        "coordination.cluster.bind_addr",
        "coordination.cluster.advertise_addr",
        "coordination.cluster.seeds",
        "coordination.local_state_path",
        "security.cluster.mtls.node_cert",
        "security.cluster.mtls.node_key",
        "observability.log_file",
    }
)


def _baseline_file(path: str) -> dict[str, Any]:
    from caxton.node import Node, build_host_and_config

    host, config = build_host_and_config(path)
    Node(config, host).check_drivers()  # the selected drivers' sections, as a node has
    return config.to_dict(mask_secrets=True)


@config_group.command("diff")
@click.option(
    "--baseline",
    type=click.Path(dir_okay=False, exists=True),
    help="Compare with what this config file gives (default: with the defaults).",
)
@click.option("--other-node", help="Compare with this member's running configuration.")
@click.option("--all", "all_keys", is_flag=True, help="With --other-node: also the per-node keys.")
@_NODE_OPTION
@json_option
@api_options
def config_diff(
    client: ApiClient,
    baseline: str | None,
    other_node: str | None,
    all_keys: bool,
    node: str | None,
    as_json: bool,
) -> None:
    """Where the running configuration of a node (--node, default: the one --api-url
    reaches) differs from a file, another node, or the defaults (exit 1 if it does)."""
    if baseline and other_node:
        raise click.UsageError("give --baseline FILE or --other-node N, not both")
    running = client.request("GET", "/api/v1/diagnostics/config", query=_node_query(node))
    if baseline:
        against, label, header = _baseline_file(baseline), baseline, "BASELINE"
    elif other_node:
        other = client.request("GET", "/api/v1/diagnostics/config", query={"node": other_node})
        against, label = other["config"], other["node_id"]
        header = other["node_id"].upper()
    else:
        against, label, header = running["defaults"], "defaults", "DEFAULT"
    mine, theirs = _flatten(running["config"]), _flatten(against)
    keys = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    if other_node and not all_keys:
        keys = [k for k in keys if k not in PER_NODE_KEYS]
    changes = [
        {
            "key": key,
            "running": mine.get(key),
            "other": theirs.get(key),
            "source": running["sources"].get(key),
        }
        for key in keys
    ]
    if as_json:
        emit_json({"node_id": running["node_id"], "against": label, "differences": changes})
    elif not changes:
        click.echo(f"{running['node_id']}: no differences from {label}")
    else:
        click.echo(
            render_table(
                ("KEY", f"RUNNING ({running['node_id']})", header, "SOURCE"),
                [
                    (
                        c["key"],
                        json.dumps(c["running"]),
                        json.dumps(c["other"]),
                        c["source"] or "-",
                    )
                    for c in changes
                ],
            )
        )
    if changes and (baseline or other_node):
        sys.exit(1)


@click.group("analyze")
def analyze_group() -> None:
    """Look for patterns in what the nodes recorded."""


@analyze_group.command("messages")
@click.option(
    "--pattern",
    required=True,
    help="A regular expression, e.g. 'timeout|error'; matched against each routed "
    "message ('PERFORMATIVE SENDER -> RECEIVER conversation ID') and each error event "
    "('KIND AGENT: TEXT': dead letters with their reasons, crashes, failure answers, "
    "agents' error log lines).",
)
@click.option(
    "--last",
    callback=_duration,
    default="1h",
    show_default=True,
    metavar="DURATION",
    help="How far back to look.",
)
@json_option
@api_options
def analyze_messages(client: ApiClient, pattern: str, last: float, as_json: bool) -> None:
    """Count and list the recent messages and errors, on every node, that PATTERN finds."""
    data = client.request(
        "GET",
        "/api/v1/diagnostics/messages",
        query={"pattern": pattern, "last": max(1, round(last))},
    )
    if as_json:
        emit_json(data)
    else:
        click.echo(
            f"{data['matched']} of {data['scanned']} records of the last "
            f"{_ms(last * 1000)} match {pattern!r}"
        )
        if data["matched"]:
            counts = ", ".join(f"{kind} {count}" for kind, count in data["by_kind"].items())
            agents = ", ".join(f"{agent} {count}" for agent, count in data["by_agent"].items())
            click.echo(f"By kind: {counts}")
            click.echo(f"By agent: {agents}")
            click.echo(
                render_table(
                    ("TIME", "NODE", "KIND", "TEXT"),
                    [
                        (_clock(m["at"]), m["node_id"], m["kind"], m["text"][:100])
                        for m in data["matches"]
                    ],
                )
            )
    _unreachable(data)


COMMANDS: list[click.Command] = [memory_group, trace, profile, debug_group, analyze_group]
#: Added to ``caxton cluster`` (:mod:`caxton.cli.cluster`).
CLUSTER_COMMANDS: list[click.Command] = [
    cluster_performance,
    cluster_analyze,
    cluster_analyze_gossip,
]
