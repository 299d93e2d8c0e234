"""``caxton cluster rebalance``, ``drain`` and ``add-node``: agents between nodes.

``rebalance`` asks a node for the plan (``POST /api/v1/cluster/rebalance`` with
``dry_run``), prints it, then carries the moves out itself, ``--max-parallel`` at once,
each a ``POST /api/v1/agents/{id}/move`` (through the node ``--api-url`` reaches), and
prints each as it completes and the report at the end. See docs/cluster.md, "Moving an
agent" and "Rebalance".
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

import click

from caxton.cli.client import _duration, api_options, complete_nodes, json_option
from caxton.cli.client_http import ApiClient
from caxton.cli.main import emit_json, render_table

__all__ = ["add_node", "drain", "rebalance"]


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{node}={count}" for node, count in sorted(counts.items())) or "-"


@click.command("rebalance")
@click.option(
    "--strategy",
    metavar="NAME",
    help="Placement strategy that ranks the nodes: least-loaded, even-distribution, or "
    "any installed one (default: the node's plugins.placement).",
)
@click.option("--dry-run", is_flag=True, help="Print the plan; move nothing.")
@click.option(
    "--max-parallel",
    type=click.IntRange(1, 64),
    default=4,
    show_default=True,
    help="Moves carried out at once.",
)
@json_option
@api_options
def rebalance(
    client: ApiClient, strategy: str | None, dry_run: bool, max_parallel: int, as_json: bool
) -> None:
    """Even out the agents over the nodes with live moves (plan, progress, report)."""
    body: dict[str, Any] = {"dry_run": True}
    if strategy:
        body["strategy"] = strategy
    plan = client.request("POST", "/api/v1/cluster/rebalance", body)
    moves: list[dict[str, Any]] = plan["plan"]
    if not as_json:
        click.echo(f"Strategy: {plan['strategy']}")
        click.echo(f"Agents per node now: {_counts(plan['before'])}")
        if not moves:
            click.echo("Nothing to move: the agents are balanced")
            return
        click.echo(f"Plan ({len(moves)} moves, then {_counts(plan['after'])}):")
        click.echo(
            render_table(
                ("AGENT", "FROM", "TO"), [(m["agent"], m["source"], m["target"]) for m in moves]
            )
        )
    if dry_run or not moves:
        if as_json:
            emit_json(plan)
        return
    started = time.perf_counter()
    moved: list[dict[str, Any]] = []
    failed: dict[str, str] = {}

    def one(move: dict[str, Any]) -> tuple[dict[str, Any], str | None, float]:
        began = time.perf_counter()
        try:
            client.request(
                "POST", f"/api/v1/agents/{move['agent_id']}/move", {"to": move["target"]}, wait=30
            )
        except click.ClickException as exc:
            return move, exc.format_message(), time.perf_counter() - began
        return move, None, time.perf_counter() - began

    with ThreadPoolExecutor(max_workers=max_parallel) as pool:
        jobs = [pool.submit(one, move) for move in moves]
        for done, job in enumerate(as_completed(jobs), 1):
            move, error, seconds = job.result()
            if error is None:
                moved.append(move)
            else:
                failed[move["agent"]] = error
            if not as_json:
                what = f"{move['agent']}: {move['source']} -> {move['target']}"
                result = f"{seconds * 1000:.0f} ms" if error is None else f"FAILED: {error}"
                click.echo(f"[{done}/{len(moves)}] {what} ({result})")
    seconds = time.perf_counter() - started
    if as_json:
        emit_json({**plan, "dry_run": False, "moved": moved, "failed": failed, "seconds": seconds})
    else:
        click.echo(f"Moved {len(moved)} of {len(moves)} agents in {seconds:.1f}s")
        for name, error in sorted(failed.items()):
            click.echo(f"Not moved: {name}: {error}")
    if failed:
        raise SystemExit(1)


@click.command("drain")
@click.option("--node", shell_complete=complete_nodes, help="The node to drain (default: this).")
@click.option(
    "--timeout",
    callback=_duration,
    default="60s",
    show_default=True,
    metavar="DURATION",
    help="Give up on the agents not moved by then (they are named).",
)
@json_option
@api_options
def drain(client: ApiClient, node: str | None, timeout: float, as_json: bool) -> None:
    """Move every agent of a node to the others; the node stays a member."""
    body: dict[str, Any] = {"timeout_ms": round(timeout * 1000)}
    if node:
        body["node"] = node
    report = client.request("POST", "/api/v1/cluster/drain", body, wait=timeout + 15)
    if as_json:
        emit_json(report)
    else:
        print_drain(report)
    if report.get("stranded"):
        raise SystemExit(1)


def print_drain(report: dict[str, Any]) -> None:
    moved, stranded = report.get("moved") or {}, report.get("stranded") or {}
    click.echo(
        f"Node {report.get('node_id')}: {len(moved)} agents moved"
        + (f" in {report['seconds']:.1f}s" if report.get("seconds") is not None else "")
    )
    for name, where in sorted(moved.items()):
        click.echo(f"  {name} -> {where}")
    for name, why in sorted(stranded.items()):
        click.echo(f"Not moved: {name}: {why}")


@click.command("add-node")
@click.argument("address")
@click.option("--rebalance", "then_rebalance", is_flag=True, help="Rebalance once it joined.")
@json_option
@api_options
def add_node(client: ApiClient, address: str, then_rebalance: bool, as_json: bool) -> None:
    """Bring the node listening at ADDRESS (HOST:PORT, its cluster port; started with
    `caxton server start --cluster`) into this cluster."""
    joined = client.request("POST", "/api/v1/cluster/nodes", {"address": address}, wait=20)
    result: dict[str, Any] = {"node": joined}
    if not as_json:
        verb = "joined" if joined["status"] == "joined" else "is already a member of"
        click.echo(f"Node {joined['node_id']} ({address}) {verb} the cluster")
    if then_rebalance:
        report = client.request("POST", "/api/v1/cluster/rebalance", {}, wait=120)
        result["rebalance"] = report
        if not as_json:
            click.echo(f"Rebalance: {len(report['moved'])} of {len(report['plan'])} agents moved")
    if as_json:
        emit_json(result)
