"""The runbook's emergency commands: ``caxton emergency stop|start``, ``caxton agents
suspend|resume --priority``, ``caxton cluster shed-load|isolate|rejoin`` and
``caxton circuit-breaker activate|reset|status``.

Each drives the node ``--api-url`` names, which acts on every reachable node of its
cluster and reports what each did; the command exits 1 when a node did not confirm.
See docs/operations.md.
"""

from __future__ import annotations

from typing import Any

import click

from caxton.cli.client import _duration, agents_group, api_options, json_option
from caxton.cli.client_http import ApiClient
from caxton.cli.main import emit_json
from caxton.datadir import expand_user

__all__ = ["CLUSTER_COMMANDS", "COMMANDS"]

PRIORITY = click.Choice(["low", "normal", "high", "critical"])


def _report(result: dict[str, Any], as_json: bool, line: Any) -> None:
    """One line per node, then fail if any node did not confirm."""
    if as_json:
        emit_json(result)
    else:
        for node_id, answer in sorted(result["nodes"].items()):
            click.echo(f"{node_id}: {line(answer)}")
    failed = result.get("failed") or {}
    if failed:
        raise click.ClickException(
            "not confirmed by "
            + "; ".join(f"{node}: {reason}" for node, reason in sorted(failed.items()))
        )


def _names(names: list[str]) -> str:
    return ", ".join(names) if names else "none"


# -------------------------------------------------------------------------
# caxton emergency
# -------------------------------------------------------------------------


@click.group("emergency")
def emergency_group() -> None:
    """Emergency procedures."""


@emergency_group.command("stop")
@click.option("--all-agents", is_flag=True, help="Stop every agent of the node (the default).")
@click.option("--cluster", is_flag=True, help="Stop every agent of every reachable node.")
@click.option(
    "--preserve-state",
    is_flag=True,
    help="First write each agent's key/value state, conversations and queued messages.",
)
@click.option(
    "--dump-to",
    type=click.Path(file_okay=False),
    default=None,
    help="With --preserve-state: where (a directory on each node's host; NODE_ID/ inside).",
)
@json_option
@api_options
def emergency_stop(
    client: ApiClient,
    all_agents: bool,
    cluster: bool,
    preserve_state: bool,
    dump_to: str | None,
    as_json: bool,
) -> None:
    """Stop every agent at once, without agent_shutdown (undo: emergency start)."""
    if dump_to and not preserve_state:
        preserve_state = True  # the runbook writes both; --dump-to alone implies it
    if preserve_state and not dump_to:
        raise click.UsageError("--preserve-state needs --dump-to DIR")
    body: dict[str, Any] = {"all_agents": True, "cluster": cluster}
    if preserve_state:
        body.update(preserve_state=True, dump_to=str(expand_user(str(dump_to)).resolve()))
    result = client.request("POST", "/api/v1/emergency/stop", body, wait=120)
    if not as_json and not result.get("nodes"):
        click.echo(f"Emergency stop: {result['stopped']} agents stopped")
        return

    def line(answer: dict[str, Any]) -> str:
        dump = f"; state written to {answer['dump']}" if answer.get("dump") else ""
        return f"{answer['stopped']} agents stopped{dump}"

    if not as_json:
        click.echo(f"Emergency stop: {result['stopped']} agents stopped")
    _report(result, as_json, line)


@emergency_group.command("start")
@click.option("--cluster", is_flag=True, help="On every reachable node.")
@click.option(
    "--replay-from",
    type=click.Path(file_okay=False),
    default=None,
    help="A --dump-to directory: re-send the messages that were queued.",
)
@json_option
@api_options
def emergency_start(
    client: ApiClient, cluster: bool, replay_from: str | None, as_json: bool
) -> None:
    """Start again the agents an emergency stop stopped."""
    body: dict[str, Any] = {"cluster": cluster}
    if replay_from:
        body["replay_from"] = str(expand_user(replay_from).resolve())
    result = client.request("POST", "/api/v1/emergency/start", body, wait=120)
    _report(
        result,
        as_json,
        lambda a: f"started {_names(a['started'])}; {a['replayed']} queued messages re-sent",
    )


# -------------------------------------------------------------------------
# caxton agents suspend|resume --priority
# -------------------------------------------------------------------------


@click.command("suspend")
@click.option("--priority", type=PRIORITY, required=True, help="The priority class.")
@json_option
@api_options
def agents_suspend(client: ApiClient, priority: str, as_json: bool) -> None:
    """Suspend every running agent of a priority class, on every node."""
    result = client.request("POST", "/api/v1/emergency/suspend", {"priority": priority}, wait=60)
    _report(result, as_json, lambda a: f"suspended {_names(a['suspended'])}")


@click.command("resume")
@click.option("--priority", type=PRIORITY, default=None, help="Only this class.")
@json_option
@api_options
def agents_resume(client: ApiClient, priority: str | None, as_json: bool) -> None:
    """Resume the agents suspended by priority or shed, on every node."""
    body = {"priority": priority} if priority else {}
    result = client.request("POST", "/api/v1/emergency/resume", body, wait=60)
    _report(result, as_json, lambda a: f"resumed {_names(a['resumed'])}")


# -------------------------------------------------------------------------
# caxton cluster shed-load|isolate|rejoin
# -------------------------------------------------------------------------


@click.command("shed-load")
@click.option(
    "--percentage",
    type=click.FloatRange(0, 100, min_open=True),
    default=None,
    help="Share of each node's running agents to suspend, lowest priority first.",
)
@click.option("--reset", is_flag=True, help="Resume the agents shed before.")
@json_option
@api_options
def shed_load(client: ApiClient, percentage: float | None, reset: bool, as_json: bool) -> None:
    """Suspend a share of every node's agents, lowest priority first (undo: --reset)."""
    if reset == (percentage is not None):
        raise click.UsageError("give --percentage P, or --reset")
    if reset:
        result = client.request("POST", "/api/v1/emergency/resume", {"reason": "shed"}, wait=60)
        _report(result, as_json, lambda a: f"resumed {_names(a['resumed'])}")
        return
    result = client.request(
        "POST", "/api/v1/emergency/shed-load", {"percentage": percentage}, wait=60
    )
    _report(
        result, as_json, lambda a: f"suspended {_names(a['suspended'])}; {a['running']} running"
    )


def _node_argument(node: str | None, node_option: str | None) -> str:
    chosen = node or node_option
    if not chosen or (node and node_option and node != node_option):
        raise click.UsageError("name the node: NODE or --node NODE")
    return chosen


@click.command("isolate")
@click.argument("node", required=False)
@click.option("--node", "node_option", default=None, help="The node (as the runbook writes).")
@json_option
@api_options
def isolate(client: ApiClient, node: str | None, node_option: str | None, as_json: bool) -> None:
    """Take NODE out of routing and placement without stopping it (undo: rejoin)."""
    target = _node_argument(node, node_option)
    result = client.request("POST", "/api/v1/cluster/isolate", {"node": target})
    _report(result, as_json, lambda a: "isolated: no routing to it, no placement on it")


@click.command("rejoin")
@click.argument("node", required=False)
@click.option("--node", "node_option", default=None, help="The node (as the runbook writes).")
@json_option
@api_options
def rejoin(client: ApiClient, node: str | None, node_option: str | None, as_json: bool) -> None:
    """Bring an isolated NODE back into routing and placement."""
    target = _node_argument(node, node_option)
    result = client.request("POST", "/api/v1/cluster/rejoin", {"node": target})
    _report(result, as_json, lambda a: "rejoined routing and placement")


# -------------------------------------------------------------------------
# caxton circuit-breaker
# -------------------------------------------------------------------------


@click.group("circuit-breaker")
def breaker_group() -> None:
    """Make messages to failing agents fail fast, cluster-wide."""


def _agents(agents: tuple[str, ...], every: bool) -> list[str] | str:
    if every == bool(agents):
        raise click.UsageError("name the agents, or --all")
    return "*" if every else list(agents)


@breaker_group.command("activate")
@click.argument("agents", nargs=-1)
@click.option("--all", "every", is_flag=True, help="Every agent.")
@json_option
@api_options
def breaker_activate(
    client: ApiClient, agents: tuple[str, ...], every: bool, as_json: bool
) -> None:
    """Open the breaker of AGENTS (or --all): messages to them fail at once."""
    body = {"agents": _agents(agents, every)}
    result = client.request("POST", "/api/v1/circuit-breakers/activate", body)
    _report(result, as_json, lambda a: f"open for {_names(a['open'])}")


@breaker_group.command("reset")
@click.argument("agents", nargs=-1)
@click.option("--all", "every", is_flag=True, help="Every breaker (the default).")
@click.option("--gradual", is_flag=True, help="Let messages through more and more.")
@click.option(
    "--duration",
    callback=_duration,
    metavar="DURATION",
    default=None,
    help="With --gradual: how long until all pass (e.g. 10m).",
)
@json_option
@api_options
def breaker_reset(
    client: ApiClient,
    agents: tuple[str, ...],
    every: bool,
    gradual: bool,
    duration: float | None,
    as_json: bool,
) -> None:
    """Close breakers: at once, or --gradual --duration 10m."""
    if gradual and not duration:
        raise click.UsageError("--gradual needs --duration, e.g. --duration 10m")
    body: dict[str, Any] = {"agents": list(agents) if agents and not every else "*"}
    if gradual and duration:
        body["duration_ms"] = round(duration * 1000)
    result = client.request("POST", "/api/v1/circuit-breakers/reset", body)
    _report(
        result,
        as_json,
        lambda a: f"open: {_names(a['open'])}; closing: {_names(a['closing'])}",
    )


@breaker_group.command("status")
@json_option
@api_options
def breaker_status(client: ApiClient, as_json: bool) -> None:
    """The breakers open (or closing) on the node --api-url names."""
    result = client.request("GET", "/api/v1/circuit-breakers")
    if as_json:
        emit_json(result)
        return
    click.echo(f"open: {_names(result['open'])}; closing: {_names(result['closing'])}")


agents_group.add_command(agents_suspend)
agents_group.add_command(agents_resume)

COMMANDS: list[click.Command] = [emergency_group, breaker_group]
#: Added to ``caxton cluster`` (:mod:`caxton.cli.cluster`).
CLUSTER_COMMANDS: list[click.Command] = [shed_load, isolate, rejoin]
