"""``caxton agent state list|get|set|delete``: an agent's key/value state, from
whichever node runs it (``/api/v1/agents/{agent_id}/state``, docs/api.md).

Importing this module adds the ``state`` group to ``caxton agent``.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any, TypeVar

import click

from caxton.cli.client import agent_group, api_options, complete_agents, json_option
from caxton.cli.client_http import ApiClient, cli_errors
from caxton.cli.main import emit_json, render_table
from caxton.units import format_size

__all__ = ["COMMANDS", "state_group"]

F = TypeVar("F", bound=Callable[..., Any])


@agent_group.group("state")
def state_group() -> None:
    """Read and change an agent's key/value state (values need the update permission)."""


def _key(key: str, as_base64: bool) -> str | bytes:
    if not as_base64:
        return key
    try:
        return base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raise click.BadParameter(f"{key!r} is not base64", param_hint="KEY") from None


def _shown(text: str | None, encoded: str) -> str:
    return text if text is not None else f"(base64) {encoded}"


@state_group.command("list")
@click.argument("name", shell_complete=complete_agents)
@click.option("--prefix", default=None, help="Only keys starting with this text.")
@click.option("--limit", type=click.IntRange(1, 1000), default=None, help="At most this many.")
@click.option("--after", default=None, metavar="NEXT", help="Continue after this (next) key.")
@json_option
@api_options
def state_list(
    client: ApiClient,
    name: str,
    prefix: str | None,
    limit: int | None,
    after: str | None,
    as_json: bool,
) -> None:
    """List NAME's keys with the size of their values."""
    agent = client.agent(name)
    with cli_errors():
        answer: dict[str, Any] = client.client.agent_state(
            agent["id"], prefix=prefix, after=after, limit=limit
        )
    if as_json:
        emit_json(answer)
        return
    rows = [(_shown(e["key"], e["key_base64"]), format_size(e["size"])) for e in answer["entries"]]
    click.echo(render_table(("KEY", "SIZE"), rows))
    if answer.get("next"):
        click.echo(f"(more: --after {answer['next']})")


def _one_key(command: F) -> F:
    """NAME KEY [--base64], the output options and the API options."""
    for decorate in (
        api_options,
        json_option,
        click.option("--base64", "as_base64", is_flag=True, help="KEY is base64 (not text)."),
        click.argument("key"),
        click.argument("name", shell_complete=complete_agents),
    ):
        command = decorate(command)
    return command


@state_group.command("get")
@_one_key
def state_get(client: ApiClient, name: str, key: str, as_base64: bool, as_json: bool) -> None:
    """Print the value of KEY (base64 when it is not text)."""
    agent = client.agent(name)
    with cli_errors():
        entry: dict[str, Any] = client.client.get_agent_state(agent["id"], _key(key, as_base64))
    if as_json:
        emit_json(entry)
    else:
        click.echo(_shown(entry["value"], entry["value_base64"]))


@state_group.command("set")
@click.argument("name", shell_complete=complete_agents)
@click.argument("key")
@click.argument("value")
@click.option(
    "--base64", "as_base64", is_flag=True, help="KEY and VALUE are base64 (bytes, not text)."
)
@json_option
@api_options
def state_set(
    client: ApiClient, name: str, key: str, value: str, as_base64: bool, as_json: bool
) -> None:
    """Set KEY to VALUE, as the agent's own kv_store would (answered once durable)."""
    agent = client.agent(name)
    data = _key(value, as_base64) if as_base64 else value
    with cli_errors():
        entry: dict[str, Any] = client.client.set_agent_state(
            agent["id"], _key(key, as_base64), data
        )
    if as_json:
        emit_json(entry)
    else:
        shown = _shown(entry["key"], entry["key_base64"])
        click.echo(f"Set {shown} of agent {agent['name']} ({format_size(entry['size'])})")


@state_group.command("delete")
@_one_key
def state_delete(client: ApiClient, name: str, key: str, as_base64: bool, as_json: bool) -> None:
    """Delete KEY from the agent's state."""
    agent = client.agent(name)
    with cli_errors():
        client.client.delete_agent_state(agent["id"], _key(key, as_base64))
    if as_json:
        emit_json({"deleted": key, "agent": agent["name"]})
    else:
        click.echo(f"Deleted {key} of agent {agent['name']}")


#: Nothing at the top level: the group joins ``caxton agent`` when this module loads.
COMMANDS: list[click.Command] = []
