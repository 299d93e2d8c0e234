"""The runbook's whole-cluster commands: ``caxton cluster stop --all``, ``caxton cluster
start --verify`` and ``caxton cluster rebuild --node N --from-peers``.

``stop`` and ``rebuild`` drive the node ``--api-url`` names (see
:mod:`caxton.api.lifecycle`); ``start`` starts the nodes of a ``caxton cluster up``
directory itself (elsewhere their service manager starts them) and then checks the
cluster as ``caxton cluster verify`` does. See docs/operations.md.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from caxton.cli.client import _duration, api_options, json_option
from caxton.cli.client_http import ApiClient
from caxton.cli.main import emit_json

__all__ = ["CLUSTER_COMMANDS"]

#: Seconds ``stop`` waits for the node it asked to stop answering.
SELF_STOP_TIMEOUT = 30.0


def _stop_line(node_id: str, answer: dict[str, Any]) -> str:
    agents = answer.get("agents") or []
    queued = answer.get("queued") or 0
    if queued:
        kept = "kept for after the restart" if answer.get("queued_kept") else "dropped"
        left = f"; {queued} messages still queued ({kept})"
    else:
        left = "; queues drained"
    return f"{node_id}: {answer.get('status', 'stopped')} ({len(agents)} agents{left})"


def _gone(client: ApiClient, timeout: float) -> bool:
    """Wait until the node ``client`` asks no longer answers; whether it stopped."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            client.request("GET", "/api/v1/health")
        except click.ClickException:
            return True
        time.sleep(0.1)
    return False


@click.command("stop")
@click.option("--all", "every", is_flag=True, help="Every node of the cluster (required).")
@click.option(
    "--drain-timeout",
    callback=_duration,
    default="30s",
    show_default=True,
    metavar="DURATION",
    help="Wait this long for each node's queued messages before it stops.",
)
@json_option
@api_options
def stop(client: ApiClient, every: bool, drain_timeout: float, as_json: bool) -> None:
    """Stop every node of the cluster cleanly: each drains, none fails over, the node
    --api-url names stops last."""
    if not every:
        raise click.UsageError(
            "name what to stop: --all (the whole cluster); one node leaves with "
            "`caxton cluster leave --node N`"
        )
    body = {"drain_timeout_ms": round(drain_timeout * 1000)}
    result = client.request("POST", "/api/v1/cluster/stop", body, wait=drain_timeout + 60)
    coordinator = result["coordinator"]
    nodes: dict[str, dict[str, Any]] = result["nodes"]
    if coordinator in nodes:
        stopped = _gone(client, SELF_STOP_TIMEOUT)
        nodes[coordinator]["status"] = "stopped" if stopped else "still answering"
        if not stopped:
            result["failed"][coordinator] = f"still answering {SELF_STOP_TIMEOUT:g}s later"
    if as_json:
        emit_json(result)
    else:
        for node_id in sorted(nodes, key=lambda n: (n == coordinator, n)):
            click.echo(_stop_line(node_id, nodes[node_id]))
    failed = result["failed"]
    if failed:
        raise click.ClickException(
            "not stopped: " + "; ".join(f"{node}: {why}" for node, why in sorted(failed.items()))
        )


# -------------------------------------------------------------------------
# start --verify
# -------------------------------------------------------------------------

#: The directory ``caxton cluster up`` uses unless told otherwise.
LOCAL_DIR = "caxton-cluster"


def _local_directory(data_dir: str | None) -> Path | None:
    """The ``cluster up`` directory to start, or None (the nodes are started elsewhere)."""
    if data_dir is not None:
        return Path(data_dir)
    default = Path(LOCAL_DIR)
    return default if (default / "n1" / "config.toml").is_file() else None


def _like(client: ApiClient, url: str) -> ApiClient:
    """A client of ``url`` with ``client``'s credentials."""
    settings = client.client.settings
    return ApiClient(
        url,
        token=settings.token,
        api_key=settings.api_key,
        ca_cert=settings.ca_cert,
        insecure=not settings.verify,
    )


def cluster_problems(
    client: ApiClient, expect: int | None, hosts: dict[str, str] | None = None
) -> tuple[list[str], dict[str, Any]]:
    """What keeps the cluster ``client`` reaches from being started and consistent
    (empty: nothing), and what was found.

    Healthy: the node is ready; it sees ``expect`` members alive (default: every member
    it knows), and ``hosts`` (node id -> API URL: each node's own API) ready too;
    ``cluster verify`` finds the members agreeing; every agent is registered on exactly
    one node, and each node's own agents are in the registry it serves.
    """
    problems: list[str] = []
    try:
        client.request("GET", "/ready")
        members = client.request("GET", "/api/v1/cluster/members")["members"]
        verify = client.request("GET", "/api/v1/cluster/verify", wait=5.0)
        registry = client.request("GET", "/api/v1/cluster/agents")["agents"]
    except click.ClickException as exc:
        return [f"{client.url}: {exc.message}"], {}
    alive = sorted(m["node_id"] for m in members if m["status"] == "alive")
    others = sorted(m["node_id"] for m in members if m["status"] != "alive")
    wanted = expect if expect is not None else len(members)
    if hosts:
        wanted = max(wanted, len(hosts))
        missing = sorted(set(hosts) - set(alive))
        if missing:
            problems.append(f"not alive in the cluster: {', '.join(missing)}")
    if len(alive) < wanted:
        problems.append(
            f"{len(alive)} of {wanted} members alive ({', '.join(alive)}"
            + (f"; not alive: {', '.join(others)}" if others else "")
            + ")"
        )
    for node in verify["nodes"]:
        if not node.get("agrees"):
            problems.append(
                f"{node['node_id']}: {'; '.join(node.get('problems') or ['disagrees'])}"
            )
    where: dict[str, list[str]] = {}
    for entry in registry:
        where.setdefault(entry["name"], []).append(entry["node_id"])
    for name, nodes in sorted(where.items()):
        if len(nodes) > 1:
            problems.append(f"agent {name} is registered on {len(nodes)} nodes: {', '.join(nodes)}")
    agents: dict[str, list[str]] = {}
    for node_id, url in sorted((hosts or {}).items()):
        try:
            own = _like(client, url).request("GET", "/api/v1/agents")
        except click.ClickException as exc:
            problems.append(f"{node_id}: {exc.message}")
            continue
        names = sorted(a["name"] for a in own)
        agents[node_id] = names
        unregistered = [n for n in names if node_id not in where.get(n, ())]
        if unregistered:
            problems.append(
                f"{node_id}: agents not in the registry {client.url} serves: "
                + ", ".join(unregistered)
            )
    found = {"alive": alive, "agents": len(where), "per_node": agents, "verify": verify}
    return problems, found


@click.command("start")
@click.option(
    "--verify",
    is_flag=True,
    help="Wait until every node is ready, sees the others and agrees on the registry.",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    default=None,
    help=f"A `caxton cluster up` directory whose nodes to start (default: ./{LOCAL_DIR} "
    "if it holds one; elsewhere the service manager starts the nodes).",
)
@click.option(
    "--expect",
    type=click.IntRange(1, 10_000),
    default=None,
    help="Members that must be alive (default: every node of the directory, else every "
    "member the node knows).",
)
@click.option(
    "--timeout",
    callback=_duration,
    default="60s",
    show_default=True,
    metavar="DURATION",
    help="How long to wait for the nodes and the checks.",
)
@json_option
@api_options
def start(
    client: ApiClient,
    verify: bool,
    data_dir: str | None,
    expect: int | None,
    timeout: float,
    as_json: bool,
) -> None:
    """Start the cluster's nodes (a `cluster up` directory; otherwise systemd or
    Kubernetes starts them) and, with --verify, check it is whole and consistent."""
    from caxton.cli.local_cluster import start_existing

    directory = _local_directory(data_dir)
    hosts: dict[str, str] = {}
    started = []
    if directory is not None:
        nodes = start_existing(directory, timeout=timeout)
        hosts = {n.node_id: n.api_url for n in nodes}
        started = [{"node_id": n.node_id, "api_url": n.api_url, "pid": n.pid} for n in nodes]
        client = _like(client, nodes[0].api_url)
        if not as_json:
            for node in nodes:
                click.echo(f"{node.node_id}: started (pid {node.pid}, API {node.api_url})")
    elif not verify:
        raise click.UsageError(
            f"no `caxton cluster up` directory here (./{LOCAL_DIR} or --data-dir): start "
            "the nodes with their service manager (systemctl start caxton on each host; "
            "Kubernetes starts the StatefulSet's pods), then run: caxton cluster start --verify"
        )
    result: dict[str, Any] = {"started": started, "verified": None}
    if verify:
        deadline = time.monotonic() + timeout
        while True:
            problems, found = cluster_problems(client, expect, hosts)
            if not problems or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        result.update(verified=not problems, problems=problems, **found)
        if not as_json and not problems:
            click.echo(
                f"Cluster verified: {len(found['alive'])} members alive "
                f"({', '.join(found['alive'])}), registry consistent, {found['agents']} agents"
            )
        if problems and not as_json:
            raise click.ClickException(
                f"cluster not verified after {timeout:g}s: " + "; ".join(problems)
            )
    if as_json:
        emit_json(result)
        if result["verified"] is False:
            raise SystemExit(1)


# -------------------------------------------------------------------------
# rebuild --from-peers
# -------------------------------------------------------------------------


def rebuild_text(report: dict[str, Any]) -> str:
    peers = ", ".join(report.get("peers") or ()) or "none"
    lines = [f"Node {report['node_id']} rebuilt from its peers ({peers}):"]
    for agent in report["recovered"]:
        lines.append(
            f"  recovered {agent['name']} (generation {agent['generation']}, "
            f"{agent['keys']} keys, from {', '.join(agent['from'])})"
        )
    for agent in report["skipped"]:
        lines.append(f"  not taken {agent['name']}: {agent['reason']}")
    if not report["recovered"] and not report["skipped"]:
        lines.append("  no peer keeps a replica of an agent of this node")
    lines.append(
        f"  {report.get('replicas_resent', 0)} replicas of the peers' agents sent to it again; "
        f"registry: {report.get('registry_agents', 0)} agents"
    )
    lines.append(f"  Not from peers: {report.get('not_recovered', '-')}")
    return "\n".join(lines)


@click.command("rebuild")
@click.option("--node", required=True, help="The node whose data directory was lost.")
@click.option(
    "--from-peers",
    is_flag=True,
    help="Take its agents and their state back from the replicas its peers keep (required).",
)
@json_option
@api_options
def rebuild(client: ApiClient, node: str, from_peers: bool, as_json: bool) -> None:
    """Give NODE back, from its peers, the agents and state it lost with its data
    directory (fenced: an agent taken over meanwhile stays where it is)."""
    if not from_peers:
        raise click.UsageError(
            "say where from: --from-peers (a whole node's backup is restored with "
            "`caxton backup restore` on the stopped node)"
        )
    report = client.request("POST", "/api/v1/cluster/rebuild", {"node": node}, wait=120)
    if as_json:
        emit_json(report)
    else:
        click.echo(rebuild_text(report))
    failed = report.get("failed") or {}
    if failed:
        raise click.ClickException(
            "peers that did not answer (their replicas are not taken back): "
            + "; ".join(f"{peer}: {why}" for peer, why in sorted(failed.items()))
        )


#: Added to ``caxton cluster`` (:mod:`caxton.cli.cluster`).
CLUSTER_COMMANDS: list[click.Command] = [stop, start, rebuild]
