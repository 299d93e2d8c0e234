"""Operator commands that drive a running node through its REST API.

``caxton deploy``, ``caxton agents list``, ``caxton agent get|start|stop|suspend|resume|
update|remove``, ``caxton message send``, ``caxton queue stats|drain``,
``caxton resources`` and ``caxton emergency stop``. Each takes ``--api-url``
(``CAXTON_API_URL``), ``--token`` (``CAXTON_TOKEN``) and ``--api-key``
(``CAXTON_API_KEY``); read commands take ``--json``. See docs/cli.md.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click
from click.shell_completion import CompletionItem

from caxton.cli.client_http import DEFAULT_API_URL, ApiClient, ApiError
from caxton.cli.main import emit_json, output_options, render_table
from caxton.units import format_size, parse_duration, parse_size

__all__ = ["COMMANDS"]

F = TypeVar("F", bound=Callable[..., Any])

#: Reply performatives that make ``caxton message send --wait`` exit with status 1.
FAILED_REPLIES = frozenset({"failure", "refuse", "not-understood"})
T = TypeVar("T")


# -------------------------------------------------------------------------
# Shared options and helpers
# -------------------------------------------------------------------------


def api_options(command: F) -> F:
    """``--api-url`` (one URL, or several separated by commas: a request a node refuses
    with 503 goes to the next), ``--token``, ``--api-key``, ``--ca-cert``, ``--insecure``;
    the command receives ``client``."""

    @click.option(
        "--api-url",
        envvar="CAXTON_API_URL",
        default=DEFAULT_API_URL,
        show_default=True,
        metavar="URL",
        help="The node's REST API (env CAXTON_API_URL).",
    )
    @click.option(
        "--token", envvar="CAXTON_TOKEN", default=None, help="Bearer token (env CAXTON_TOKEN)."
    )
    @click.option(
        "--api-key", envvar="CAXTON_API_KEY", default=None, help="API key (env CAXTON_API_KEY)."
    )
    @click.option(
        "--ca-cert",
        envvar="CAXTON_CA_CERT",
        type=click.Path(dir_okay=False, exists=True),
        default=None,
        help="CA certificate (PEM) to verify an https:// API with (env CAXTON_CA_CERT).",
    )
    @click.option(
        "--insecure", is_flag=True, help="Do not verify the API's TLS certificate (testing only)."
    )
    @functools.wraps(command)
    def wrapper(
        *args: Any,
        api_url: str,
        token: str | None,
        api_key: str | None,
        ca_cert: str | None,
        insecure: bool,
        **kwargs: Any,
    ) -> Any:
        client = ApiClient(
            api_url, token=token, api_key=api_key, ca_cert=ca_cert, insecure=insecure
        )
        return command(*args, client=client, **kwargs)

    return wrapper  # type: ignore[return-value]


json_option = output_options


def _completion_client(ctx: click.Context) -> ApiClient:
    """The API the command line being completed names (its options, else the env)."""
    params = ctx.params
    return ApiClient(
        params.get("api_url") or os.environ.get("CAXTON_API_URL") or DEFAULT_API_URL,
        token=params.get("token") or os.environ.get("CAXTON_TOKEN"),
        api_key=params.get("api_key") or os.environ.get("CAXTON_API_KEY"),
        ca_cert=params.get("ca_cert") or os.environ.get("CAXTON_CA_CERT"),
        insecure=bool(params.get("insecure")),
        timeout=2.0,
    )


def _complete(
    ctx: click.Context, path: str, key: str, field: str, incomplete: str
) -> list[CompletionItem]:
    """The ``field`` of each item under ``key`` of ``GET path`` that starts with
    ``incomplete`` (nothing when the node cannot be reached)."""
    try:
        items = _completion_client(ctx).request("GET", path)[key]
        values = {str(item[field]) for item in items}
    except (click.ClickException, KeyError, TypeError):
        return []
    return [CompletionItem(v) for v in sorted(values) if v.startswith(incomplete)]


def complete_agents(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """Shell completion: the names of the cluster's agents."""
    return _complete(ctx, "/api/v1/cluster/agents", "agents", "name", incomplete)


def complete_nodes(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """Shell completion: the cluster's member node ids."""
    return _complete(ctx, "/api/v1/cluster/members", "members", "node_id", incomplete)


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _size(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _names(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [name.strip() for name in value.split(",") if name.strip()]


def limit_options(command: F) -> F:
    for option in reversed(
        (
            click.option(
                "--max-memory",
                callback=_size,
                metavar="SIZE",
                help="Memory limit, e.g. 10MB (max_memory_bytes).",
            ),
            click.option("--max-fuel", type=click.IntRange(min=1), help="Fuel per delivery."),
            click.option(
                "--timeout",
                "timeout",
                callback=_duration,
                metavar="DURATION",
                help="Wall time per delivery, e.g. 5s (max_execution_time_ms).",
            ),
        )
    ):
        command = option(command)
    return command


def _limits(max_memory: int | None, max_fuel: int | None, timeout: float | None) -> dict[str, int]:
    limits: dict[str, int] = {}
    if max_memory is not None:
        limits["max_memory_bytes"] = max_memory
    if max_fuel is not None:
        limits["max_fuel"] = max_fuel
    if timeout is not None:
        limits["max_execution_time_ms"] = round(timeout * 1000)
    return limits


def _read_module(path: str) -> str:
    try:
        return base64.b64encode(Path(path).read_bytes()).decode("ascii")
    except OSError as exc:
        raise click.ClickException(f"cannot read {path}: {exc.strerror or exc}") from None


def _show_progress() -> bool:
    return sys.stderr.isatty()


@contextmanager
def _progress(items: Sequence[T], label: str, *, show: bool) -> Iterator[Iterable[T]]:
    """``items``, with a progress bar on stderr when ``show`` and stderr is a terminal."""
    if not (show and _show_progress()):
        yield items
        return
    with click.progressbar(items, label=label, file=sys.stderr) as bar:
        yield bar


@contextmanager
def _waiting(label: str, seconds: float) -> Iterator[None]:
    """A progress bar on stderr while a blocking call runs (only on a terminal)."""
    if not _show_progress() or seconds <= 0:
        yield
        return
    done = threading.Event()

    def tick() -> None:
        steps = max(1, int(seconds * 5))
        with click.progressbar(length=steps, label=label, file=sys.stderr) as bar:
            for _ in range(steps):
                if done.wait(0.2):
                    break
                bar.update(1)

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _agent_line(agent: dict[str, Any]) -> str:
    return (
        f"{agent['name']} ({agent['id']}) on node {agent.get('node_id') or '-'}: {agent['state']}"
    )


# -------------------------------------------------------------------------
# caxton deploy
# -------------------------------------------------------------------------


@click.command("deploy")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--name", help="Agent name (default: the file name without .wasm).")
@limit_options
@click.option("--placement-strategy", help="Placement strategy, e.g. least-loaded.")
@click.option("--prefer-nodes", callback=_names, metavar="NODES", help="Nodes to favour: a,b.")
@click.option("--target-node", shell_complete=complete_nodes, help="Deploy on exactly this node.")
@click.option("--no-start", is_flag=True, help="Deploy without starting.")
@click.option(
    "--replace",
    is_flag=True,
    help="Replace the agent of this name wherever it runs (else: refused, naming its node).",
)
@click.option(
    "--fail-fast", is_flag=True, help="Stop at the first file that fails (default: go on)."
)
@json_option
@api_options
def deploy(
    client: ApiClient,
    files: tuple[str, ...],
    name: str | None,
    max_memory: int | None,
    max_fuel: int | None,
    timeout: float | None,
    placement_strategy: str | None,
    prefer_nodes: list[str] | None,
    target_node: str | None,
    no_start: bool,
    replace: bool,
    fail_fast: bool,
    as_json: bool,
) -> None:
    """Deploy the agent(s) in FILES (compiled .wasm modules).

    Several files are deployed one by one and reported per file; a file that fails does
    not stop the others unless --fail-fast. The exit status is 1 when any failed.
    """
    if name is not None and len(files) > 1:
        raise click.UsageError("--name names one agent; deploy several files without --name")
    limits = _limits(max_memory, max_fuel, timeout)
    options: dict[str, Any] = {"resource_limits": limits} if limits else {}
    for key, value in (
        ("placement_strategy", placement_strategy),
        ("prefer_nodes", prefer_nodes),
        ("target_node", target_node),
    ):
        if value is not None:
            options[key] = value
    if no_start:
        options["start"] = False
    if replace:
        options["replace"] = True

    def deploy_one(path: str) -> dict[str, Any]:
        body = {"name": name or Path(path).stem, "wasm_module": _read_module(path), **options}
        agent: dict[str, Any] = client.request("POST", "/api/v1/agents", body)
        return agent

    if len(files) == 1:  # one file: the agent, or the error as it is
        agent = deploy_one(files[0])
        if as_json:
            emit_json(agent)
        else:
            click.echo(f"Deployed agent {_agent_line(agent)}")
        return
    reports: list[dict[str, Any]] = []
    with _progress(files, "Deploying", show=not as_json) as paths:
        for path in paths:
            if fail_fast and any(r["result"] == "failed" for r in reports):
                reports.append({"file": path, "result": "skipped"})
                continue
            try:
                reports.append({"file": path, "result": "deployed", "agent": deploy_one(path)})
            except click.ClickException as exc:
                failed: dict[str, Any] = {
                    "file": path,
                    "result": "failed",
                    "error": exc.format_message(),
                }
                if isinstance(exc, ApiError):
                    failed["status"] = exc.status
                reports.append(failed)
    if as_json:
        emit_json(reports)
    else:
        for report in reports:
            if report["result"] == "deployed":
                click.echo(f"Deployed agent {_agent_line(report['agent'])}")
            elif report["result"] == "failed":
                click.echo(f"Failed {report['file']}: {report['error']}")
            else:
                click.echo(f"Skipped {report['file']} (--fail-fast)")
    failures = sum(r["result"] == "failed" for r in reports)
    if failures:
        skipped = sum(r["result"] == "skipped" for r in reports)
        raise click.ClickException(
            f"{failures} of {len(files)} files failed to deploy"
            + (f", {skipped} not tried (--fail-fast)" if skipped else "")
        )


# -------------------------------------------------------------------------
# caxton agents / caxton agent
# -------------------------------------------------------------------------


@click.group("agents")
def agents_group() -> None:
    """List agents."""


@agents_group.command("list")
@click.option(
    "--cluster", "whole_cluster", is_flag=True, help="Every node's agents, not this node's."
)
@click.option("--by-node", is_flag=True, help="Count the cluster's agents per node and state.")
@click.option("--state", help="Only agents in this state.")
@click.option(
    "--node",
    "node_id",
    metavar="NODE",
    shell_complete=complete_nodes,
    help="Only agents on NODE (implies --cluster).",
)
@click.option("--name", "name_glob", metavar="GLOB", help="Only names matching, e.g. 'echo-*'.")
@click.option("--limit", type=click.IntRange(min=1, max=10_000), help="At most this many agents.")
@click.option("--offset", type=click.IntRange(min=0), help="Skip this many agents first.")
@json_option
@api_options
def agents_list(
    client: ApiClient,
    whole_cluster: bool,
    by_node: bool,
    state: str | None,
    node_id: str | None,
    name_glob: str | None,
    limit: int | None,
    offset: int | None,
    as_json: bool,
) -> None:
    """List this node's agents (``--cluster``: every node's; ``--by-node``: counts per node)."""
    if by_node:
        registry = client.request("GET", "/api/v1/cluster/agents")["agents"]
        agents = [a for a in registry if state is None or a["state"] == state]
    else:
        agents = client.request(
            "GET",
            "/api/v1/agents",
            query={
                "scope": "cluster" if whole_cluster or node_id else None,
                "state": state,
                "node": node_id,
                "name": name_glob,
                "limit": limit,
                "offset": offset,
            },
        )
    if by_node:
        nodes: dict[str, Counter[str]] = defaultdict(Counter)
        for agent in agents:
            nodes[agent.get("node_id") or "-"][agent["state"]] += 1
        if as_json:
            emit_json({node: dict(states) for node, states in sorted(nodes.items())})
            return
        click.echo(
            render_table(
                ("NODE", "AGENTS", "STATES"),
                [
                    (
                        node,
                        sum(states.values()),
                        ", ".join(f"{s}={n}" for s, n in sorted(states.items())),
                    )
                    for node, states in sorted(nodes.items())
                ],
            )
        )
        return
    if as_json:
        emit_json(agents)
        return
    click.echo(
        render_table(
            ("NAME", "ID", "STATE", "NODE", "MEMORY", "MESSAGES", "RESTARTS"),
            [
                (
                    a["name"],
                    a["id"],
                    a["state"],
                    a.get("node_id") or "-",
                    format_size(a["limits"]["max_memory_bytes"]) if "limits" in a else "-",
                    a.get("counters", {}).get("messages_handled", 0),
                    a.get("counters", {}).get("restarts", 0),
                )
                for a in agents
            ],
        )
    )


@click.group("agent")
def agent_group() -> None:
    """Inspect and control one agent (by name or id)."""


@agent_group.command("get")
@click.argument("name", shell_complete=complete_agents)
@json_option
@api_options
def agent_get(client: ApiClient, name: str, as_json: bool) -> None:
    """Show one agent (its detail comes from the node that runs it)."""
    agent = client.request("GET", f"/api/v1/agents/{client.agent(name)['id']}")
    if as_json:
        emit_json(agent)
        return
    limits = agent.get("limits", {})
    rows = [
        ("Name", agent["name"]),
        ("ID", agent["id"]),
        ("State", agent["state"]),
        ("Node", agent.get("node_id") or "-"),
        ("Module", agent.get("module_sha256", "")),
        ("Memory limit", format_size(limits.get("max_memory_bytes", 0))),
        ("Fuel limit", limits.get("max_fuel")),
        ("Time limit", f"{limits.get('max_execution_time_ms')}ms"),
    ]
    rows += [
        (key.replace("_", " ").capitalize(), v) for key, v in agent.get("counters", {}).items()
    ]
    if agent.get("last_error"):
        rows.append(("Last error", agent["last_error"]))
    replication = agent.get("replication")
    if replication:
        holders = ", ".join(replication["holders"]) or "none"
        confirmed = "confirmed" if replication["replicated"] else "not yet confirmed"
        rows += [
            ("Replicas", f"{holders} ({confirmed})"),
            ("Durability", replication["durability"]),
            ("Generation", replication["generation"]),
        ]
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        click.echo(f"{label + ':':<{width + 1}} {value}")


def _lifecycle_command(action: str, help_text: str) -> click.Command:
    @click.argument("name", shell_complete=complete_agents)
    @json_option
    @api_options
    def command(client: ApiClient, name: str, as_json: bool, **options: Any) -> None:
        agent = client.agent(name)
        query = {}
        if options.get("drain") is not None:
            query["drain_timeout_ms"] = round(options["drain"] * 1000)
        changed = client.request(
            "POST",
            f"/api/v1/agents/{agent['id']}/{action}",
            query=query,
            wait=options.get("drain") or 0.0,
        )
        if as_json:
            emit_json(changed)
        else:
            click.echo(f"Agent {_agent_line(changed)}")

    command.__doc__ = help_text
    if action == "stop":
        command = click.option(
            "--drain",
            callback=_duration,
            metavar="DURATION",
            help="Let in-flight conversations finish first, up to this long (e.g. 5s).",
        )(command)
    return click.command(action)(command)


for _action, _help in (
    ("start", "Start a loaded, stopped or failed agent."),
    ("stop", "Stop an agent (agent_shutdown runs; its state is kept)."),
    ("suspend", "Pause delivery to an agent; messages wait."),
    ("resume", "Resume a suspended agent."),
):
    agent_group.add_command(_lifecycle_command(_action, _help))


@agent_group.command("move")
@click.argument("name", shell_complete=complete_agents)
@click.option("--to", "target", required=True, help="The node to move the agent to.")
@json_option
@api_options
def agent_move(client: ApiClient, name: str, target: str, as_json: bool) -> None:
    """Move a running agent to another node (live: its state, queued messages and
    timers go along; a message sent meanwhile is delivered once)."""
    agent = client.agent(name)
    moved = client.request("POST", f"/api/v1/agents/{agent['id']}/move", {"to": target}, wait=30)
    if as_json:
        emit_json(moved)
    else:
        click.echo(
            f"Moved agent {moved['name']} from {moved['moved_from']} to {moved['node_id']} "
            f"({float(moved.get('seconds') or 0) * 1000:.0f} ms)"
        )


@agent_group.command("update")
@click.argument("name", shell_complete=complete_agents)
@click.option("--wasm", "wasm_path", type=click.Path(dir_okay=False), help="New module.")
@limit_options
@json_option
@api_options
def agent_update(
    client: ApiClient,
    name: str,
    wasm_path: str | None,
    max_memory: int | None,
    max_fuel: int | None,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Hot-swap an agent's module and/or limits (same id, name and state)."""
    body: dict[str, Any] = {}
    if wasm_path is not None:
        body["wasm_module"] = _read_module(wasm_path)
    limits = _limits(max_memory, max_fuel, timeout)
    if limits:
        body["resource_limits"] = limits
    if not body:
        raise click.UsageError("nothing to update: give --wasm and/or a limit option")
    agent = client.agent(name)
    updated = client.request("PUT", f"/api/v1/agents/{agent['id']}", body)
    if as_json:
        emit_json(updated)
    else:
        click.echo(f"Updated agent {_agent_line(updated)}")


@agent_group.command("remove")
@click.argument("name", shell_complete=complete_agents)
@json_option
@api_options
def agent_remove(client: ApiClient, name: str, as_json: bool) -> None:
    """Stop and remove an agent, with its state."""
    agent = client.agent(name)
    client.request("DELETE", f"/api/v1/agents/{agent['id']}")
    if as_json:
        emit_json({"removed": agent})
    else:
        click.echo(f"Removed agent {agent['name']} ({agent['id']})")


# -------------------------------------------------------------------------
# caxton message
# -------------------------------------------------------------------------


@click.group("message")
def message_group() -> None:
    """Send messages to agents."""


@message_group.command("send")
@click.option(
    "--to", "receiver", required=True, shell_complete=complete_agents, help="Receiving agent."
)
@click.option("--content", help="Content, sent as a JSON string.")
@click.option("--content-json", help="Content given as JSON (an object, a number...).")
@click.option("--performative", default="request", show_default=True)
@click.option(
    "--wait", callback=_duration, metavar="DURATION", help="Wait this long for the reply, e.g. 5s."
)
@click.option("--sender", help="Sender name (default: a temporary client-... name).")
@click.option("--conversation-id", help="Conversation to send in.")
@click.option("--protocol", help="Interaction protocol, e.g. fipa-request.")
@click.option("--priority", type=click.Choice(["critical", "high", "normal", "low"]), default=None)
@json_option
@api_options
def message_send(
    client: ApiClient,
    receiver: str,
    content: str | None,
    content_json: str | None,
    performative: str,
    wait: float | None,
    sender: str | None,
    conversation_id: str | None,
    protocol: str | None,
    priority: str | None,
    as_json: bool,
) -> None:
    """Send a FIPA-ACL message; with --wait, print the reply."""
    if content is not None and content_json is not None:
        raise click.UsageError("give --content or --content-json, not both")
    body: dict[str, Any] = {"performative": performative, "receiver": receiver}
    if content_json is not None:
        try:
            body["content"] = json.loads(content_json)
        except ValueError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="--content-json") from None
    elif content is not None:
        body["content"] = content
    for key, value in (
        ("sender", sender),
        ("conversation_id", conversation_id),
        ("protocol", protocol),
        ("priority", priority),
    ):
        if value is not None:
            body[key] = value
    if wait:
        body["wait_ms"] = round(wait * 1000)
    result = client.request("POST", "/api/v1/messages", body, wait=wait or 0.0)
    if as_json:
        emit_json(result)
        if (result.get("reply") or {}).get("performative") in FAILED_REPLIES:
            raise click.exceptions.Exit(1)
        return
    reply = result.get("reply")
    if reply is None:
        click.echo(f"Sent {performative} to {receiver} (message {result['message_id']})")
        return
    content_text = reply.get("content")
    if not isinstance(content_text, str):
        content_text = json.dumps(content_text)
    click.echo(f"Reply from {reply['sender']} ({reply['performative']}): {content_text}")
    if reply.get("performative") in FAILED_REPLIES:
        raise click.exceptions.Exit(1)


# -------------------------------------------------------------------------
# caxton queue, caxton resources, caxton emergency
# -------------------------------------------------------------------------


@click.group("queue")
def queue_group() -> None:
    """Message queues."""


@queue_group.command("stats")
@json_option
@api_options
def queue_stats(client: ApiClient, as_json: bool) -> None:
    """Queue depth per agent and priority, and dead letters."""
    stats = client.request("GET", "/api/v1/queues")
    if as_json:
        emit_json(stats)
        return
    priorities = list(stats.get("priorities", {}))
    rows = [
        (
            name,
            box.get("queued", 0),
            *(box.get(p, 0) for p in priorities),
            "yes" if box.get("held") else "no",
            box.get("delivered", 0),
        )
        for name, box in sorted(stats.get("agents", {}).items())
    ]
    headers = ("AGENT", "QUEUED", *(p.upper() for p in priorities), "HELD", "DELIVERED")
    click.echo(render_table(headers, rows))
    totals = stats.get("totals", {})
    click.echo(
        f"\nQueued: {totals.get('queued', sum(r[1] for r in rows))}    "
        f"Dead letters: {stats.get('dead_letters', 0)}"
    )
    if stats.get("queued_writes"):
        click.echo(f"Queued writes (partition): {stats['queued_writes']}")


@queue_group.command("drain")
@click.option(
    "--timeout",
    "timeout",
    callback=_duration,
    default="60s",
    show_default=True,
    metavar="DURATION",
    help="Give up after this long.",
)
@json_option
@api_options
def queue_drain(client: ApiClient, timeout: float, as_json: bool) -> None:
    """Wait until every queue is empty, up to --timeout; exit 1 if not drained."""
    started = time.monotonic()
    with _waiting("Draining", 0 if as_json else timeout):
        result = client.request(
            "POST", "/api/v1/queues/drain", {"timeout_ms": round(timeout * 1000)}, wait=timeout
        )
    if as_json:
        emit_json(result)
    if not result["drained"]:
        raise click.ClickException(
            f"queues not drained within {timeout:g}s: {result['remaining']} messages remain"
        )
    if not as_json:
        click.echo(f"Drained in {time.monotonic() - started:.1f}s: 0 messages remain")


@click.command("resources")
@json_option
@api_options
def resources(client: ApiClient, as_json: bool) -> None:
    """CPU, memory and agents of the node."""
    data = client.request("GET", "/api/v1/resources")
    if as_json:
        emit_json(data)
        return
    click.echo(
        render_table(
            ("NODE", "CPU", "MEMORY", "AGENTS"),
            [
                (
                    n["node_id"],
                    f"{n['cpu_percent']:.0f}%",
                    format_size(n["memory_rss_bytes"]),
                    n["agents"],
                )
                for n in data["nodes"]
            ],
        )
    )


COMMANDS: list[click.Command] = [
    deploy,
    agents_group,
    agent_group,
    message_group,
    queue_group,
    resources,
]
