"""``caxton cluster``: members, status, detect-partition, watch, ping, verify,
verify-auth, leave and remove (rolling-restart and upgrade: :mod:`caxton.cli.upgrade`; the
diagnostic ones: :mod:`caxton.cli.diagnostics`).

Every command drives a running node through its REST API (``/api/v1/cluster/...``) and
takes ``--api-url``, ``--token`` and ``--api-key`` like the other operator commands. See
docs/cluster.md.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import click

from caxton.cli.client import _duration, api_options, complete_nodes, json_option
from caxton.cli.client_http import ApiClient
from caxton.cli.cluster_moves import add_node as cluster_add_node
from caxton.cli.cluster_moves import drain as cluster_drain
from caxton.cli.cluster_moves import print_drain
from caxton.cli.cluster_moves import rebalance as cluster_rebalance
from caxton.cli.join_tokens import token_group
from caxton.cli.local_cluster import cluster_down, cluster_up
from caxton.cli.main import emit_json, render_table
from caxton.cli.upgrade import cluster_upgrade, rolling_restart
from caxton.units import format_size

__all__ = ["cluster"]


@click.group("cluster")
def cluster() -> None:
    """Inspect and operate the cluster this node belongs to."""


cluster.add_command(cluster_up)
cluster.add_command(cluster_down)
cluster.add_command(token_group)
cluster.add_command(rolling_restart)
cluster.add_command(cluster_upgrade)
for _command in (cluster_rebalance, cluster_drain, cluster_add_node):  # cli.cluster_moves
    cluster.add_command(_command)


# -------------------------------------------------------------------------
# members, status
# -------------------------------------------------------------------------


def _cpu(value: Any) -> str:
    return "-" if value is None else f"{value:g}%"


def _memory(value: Any) -> str:
    return "-" if value is None else format_size(int(value))


def members_table(members: list[dict[str, Any]]) -> str:
    """NODE-ID STATUS ADDRESS AGENTS CPU MEMORY, as the clustering guide prints it, and
    the release each node runs (VERSION: what a rolling upgrade changes)."""
    return render_table(
        ("NODE-ID", "STATUS", "ADDRESS", "AGENTS", "CPU", "MEMORY", "VERSION"),
        [
            (
                m["node_id"],
                m["status"],
                m.get("address") or "-",
                "-" if m.get("agents") is None else m["agents"],
                _cpu(m.get("cpu")),
                _memory(m.get("memory")),
                m.get("version") or "-",
            )
            for m in members
        ],
    )


@cluster.command("members")
@json_option
@api_options
def members(client: ApiClient, as_json: bool) -> None:
    """List the members: status, address, agents, CPU, memory and release."""
    data = client.request("GET", "/api/v1/cluster/members")
    if as_json:
        emit_json(data["members"])
        return
    click.echo(members_table(data["members"]))


def status_text(status: dict[str, Any]) -> str:
    lines = [
        f"Status: {status['status']} ({status.get('partition', '-')} partition)"
        if status.get("partition") != "standalone"
        else f"Status: {status['status']} (standalone: this node does not cluster)",
        f"Operations: {str(status['mode']).upper()}",
        f"Nodes: {status['nodes_reachable']}/{status['nodes_known']} active",
    ]
    if status.get("reason"):
        lines.append(f"Reason: {status['reason']}")
    if status.get("agents_total") is not None:
        lines.append(f"Agents: {status['agents_total']}")
    if status.get("mode") != "read-write" or status.get("queued_writes"):
        lines.append(f"Queued writes: {status.get('queued_writes', 0)}")
    for pending in status.get("pending_failovers") or ():
        waiting = f": waiting, {pending['waiting']}" if pending.get("waiting") else ""
        lines.append(
            f"Failover of {pending['node_id']} pending ({len(pending['agents'])} agents, "
            f"{pending['seconds']:.1f}s){waiting}"
        )
    return "\n".join(lines)


@cluster.command("status")
@json_option
@api_options
def status(client: ApiClient, as_json: bool) -> None:
    """Health (HEALTHY/DEGRADED), operations (READ-WRITE/READ-ONLY), nodes active."""
    data = client.request("GET", "/api/v1/cluster/status")
    if as_json:
        emit_json(data)
        return
    click.echo(status_text(data))


def partition_text(report: dict[str, Any]) -> str:
    """The partitions as the operations guide prints them, lettered A, B..."""
    sides = report["partitions"]
    if not report["partitioned"]:
        count = len(sides[0]["nodes"]) if sides else 1
        return f"No network partition detected: {count}/{count} nodes reachable"
    lines = ["WARNING: Network partition detected"]
    for letter, side in zip("ABCDEFGHIJ", sides, strict=False):
        size = "majority" if side["majority"] else "minority"
        lines.append(f"Partition {letter}: [{', '.join(side['nodes'])}] ({size})")
    mode = str(report.get("mode", "-")).upper()
    lines.append(
        f"This node: {report['node_id']} ({mode}, queued writes: {report.get('queued_writes', 0)})"
    )
    return "\n".join(lines)


@cluster.command("detect-partition")
@json_option
@api_options
def detect_partition(client: ApiClient, as_json: bool) -> None:
    """Show the partitions this node can tell apart; exit 1 when partitioned.

    This node's side is the members it reaches; the other side, the known members it
    cannot reach (a crashed node looks the same from here).
    """
    data = client.request("GET", "/api/v1/cluster/partition")
    if as_json:
        emit_json(data)
    else:
        click.echo(partition_text(data))
    if data["partitioned"]:
        sys.exit(1)


# -------------------------------------------------------------------------
# watch
# -------------------------------------------------------------------------


def event_line(event: dict[str, Any]) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(float(event.get("at", 0))))
    return f"{stamp} [{str(event.get('level', 'info')).upper()}] {event.get('text', '')}"


@cluster.command("watch")
@click.option(
    "--history",
    type=click.IntRange(0, 1000),
    default=10,
    show_default=True,
    help="Recent events to show first.",
)
@click.option("--no-follow", is_flag=True, help="Print the recent events and exit.")
@json_option
@api_options
def watch(client: ApiClient, history: int, no_follow: bool, as_json: bool) -> None:
    """Print membership, registry and mode events as they happen (Ctrl-C stops)."""
    query = {"limit": history, "follow": "false" if no_follow else "true"}
    try:
        for event in client.stream("/api/v1/cluster/events/stream", query):
            click.echo(json.dumps(event) if as_json else event_line(event))
            sys.stdout.flush()
    except KeyboardInterrupt:
        return


# -------------------------------------------------------------------------
# ping, verify-auth
# -------------------------------------------------------------------------


def _ms(value: Any) -> str:
    return "no answer" if value is None else f"{value:.2f} ms"


@cluster.command("ping")
@click.argument("node", shell_complete=complete_nodes)
@click.option("--count", "-c", type=click.IntRange(1, 1000), default=1, show_default=True)
@json_option
@api_options
def ping(client: ApiClient, node: str, count: int, as_json: bool) -> None:
    """Probe NODE: a SWIM ping and a round trip over the transport."""
    quoted = urllib.parse.quote(node, safe="")
    results = []
    for _ in range(count):
        result = client.request("GET", f"/api/v1/cluster/members/{quoted}/ping")
        results.append(result)
        if not as_json:
            click.echo(
                f"{result['node_id']} ({result.get('address') or '-'}, {result['status']}): "
                f"gossip {_ms(result.get('gossip_rtt_ms'))}, "
                f"transport {_ms(result.get('transport_rtt_ms'))}"
            )
    if as_json:
        emit_json(results[0] if count == 1 else results)
    if not all(r.get("reachable", True) for r in results):
        sys.exit(1)


def agreement_table(
    headers: tuple[str, ...],
    nodes: list[dict[str, Any]],
    columns: Callable[[dict[str, Any]], tuple[Any, ...]],
) -> str:
    """One row per node (``columns``), then whether it agrees and its problems."""
    return render_table(
        (*headers, "AGREES", "PROBLEMS"),
        [
            (
                *columns(n),
                "yes" if n.get("agrees") else "NO",
                "; ".join(n.get("problems") or ()) or "-",
            )
            for n in nodes
        ],
    )


@cluster.command("verify-auth")
@json_option
@api_options
def verify_auth(client: ApiClient, as_json: bool) -> None:
    """Check that the members' certificates and gossip keys agree and that no node
    refused a peer (or was refused) at TLS in the last five minutes (exit 1 if not)."""
    data = client.request("GET", "/api/v1/cluster/auth", wait=5.0)
    if as_json:
        emit_json(data)
    else:
        click.echo(
            agreement_table(
                ("NODE-ID", "MODE", "CA", "GOSSIP-KEYS"),
                data["nodes"],
                lambda n: (
                    n.get("node_id", "-"),
                    n.get("mode", "-"),
                    (n.get("ca_fingerprint") or "-")[:16],
                    ",".join(n.get("gossip_keys") or ()) or "-",
                ),
            )
        )
        click.echo("keys and certificates agree" if data["agree"] else "MISMATCH: see PROBLEMS")
    if not data["agree"]:
        sys.exit(1)


def _changes(version: Any) -> str:
    """A registry version as its counter: the node's changes since it started."""
    return "-" if not version else str(version[1])


@cluster.command("verify")
@click.option("--deep", is_flag=True, help="Also compare registries, replicas and state stores.")
@click.option("--node", help="Verify this member (deeply) only.")
@json_option
@api_options
def verify(client: ApiClient, deep: bool, node: str | None, as_json: bool) -> None:
    """Check that the reachable members agree on the membership and on every node's
    registry version (exit 1 if not); --deep also that every node's registry holds
    what each node runs, that each agent's replicas are where and at the generation
    its node says, and that every state store passes SQLite's integrity check."""
    query = {"deep": "true"} if deep else {}
    if node:
        query["node"] = node
    data = client.request("GET", "/api/v1/cluster/verify", query=query, wait=30.0)
    if as_json:
        emit_json(data)
    elif data.get("deep"):
        click.echo(
            agreement_table(
                ("NODE-ID", "ALIVE", "REGISTRY-VERSION", "AGENTS", "REPLICAS", "STORE"),
                data["nodes"],
                lambda n: (
                    n["node_id"],
                    "-" if n.get("members_alive") is None else n["members_alive"],
                    _changes(n.get("registry_version")),
                    "-" if n.get("agents") is None else n["agents"],
                    "-" if n.get("replicas") is None else n["replicas"],
                    n.get("integrity") or "-",
                ),
            )
        )
    else:
        click.echo(
            agreement_table(
                ("NODE-ID", "ALIVE", "REGISTRY-VERSION"),
                data["nodes"],
                lambda n: (
                    n["node_id"],
                    "-" if n.get("members_alive") is None else n["members_alive"],
                    _changes(n.get("registry_version")),
                ),
            )
        )
    if not as_json:
        what = "registry, replicas and stores" if data.get("deep") else "registry"
        click.echo(
            f"Cluster consistent: members and {what} agree"
            if data["consistent"]
            else "INCONSISTENT: see PROBLEMS (gossip converges within seconds; run again)"
        )
    if not data["consistent"]:
        sys.exit(1)


# -------------------------------------------------------------------------
# leave, remove
# -------------------------------------------------------------------------


@cluster.command("leave")
@click.option("--node", help="The member to leave (default: the node --api-url reaches).")
@click.option(
    "--drain-timeout",
    callback=_duration,
    default="60s",
    show_default=True,
    metavar="DURATION",
    help="Move the agents to other nodes and deliver queued messages for up to this "
    "long before leaving; agents that could not move are named.",
)
@json_option
@api_options
def leave(client: ApiClient, node: str | None, drain_timeout: float, as_json: bool) -> None:
    """Leave gracefully: move the agents off (placement decides where), drain queued
    messages, announce the leave (members record it as left, not failed), stop the node."""
    body: dict[str, Any] = {"drain_timeout_ms": round(drain_timeout * 1000)}
    if node:
        body["node"] = node
    data = client.request("POST", "/api/v1/cluster/leave", body, wait=drain_timeout + 15)
    if as_json:
        emit_json(data)
        return
    if data.get("moved") or data.get("stranded"):
        print_drain(data)
    remaining = data.get("remaining")
    extra = f" ({remaining} messages still queued)" if remaining else ""
    click.echo(f"Node {data['node_id']} {data['status']} the cluster{extra}")


@cluster.command("remove")
@click.option("--node", required=True, help="The failed member to remove.")
@click.option("--force", is_flag=True, help="Required: removal is for dead nodes only.")
@json_option
@api_options
def remove(client: ApiClient, node: str, force: bool, as_json: bool) -> None:
    """Force a failed member out of the cluster (every node records it as left)."""
    if not force:
        raise click.UsageError(
            "removing a member needs --force; a live node leaves with `caxton cluster leave`"
        )
    data = client.request("POST", "/api/v1/cluster/remove", {"node": node, "force": True})
    if as_json:
        emit_json(data)
        return
    click.echo(f"Removed {data['node_id']} (now {data['status']})")


# Snapshots, emergency measures, diagnostics and whole-cluster stop/start/rebuild live
# with their own commands.
for _module in (
    "caxton.cli.backup",
    "caxton.cli.emergency",
    "caxton.cli.diagnostics",
    "caxton.cli.lifecycle",
):
    for _command in importlib.import_module(_module).CLUSTER_COMMANDS:
        cluster.add_command(_command)
