"""``caxton logs AGENT [--follow] [--since]``: what an agent wrote with its ``log`` host
function, from whichever node runs it (``GET /api/v1/agents/{agent_id}/logs``)."""

from __future__ import annotations

import time
from typing import Any

import click

from caxton.cli.client import api_options, json_option
from caxton.cli.client_http import ApiClient
from caxton.cli.main import emit_json
from caxton.units import parse_duration

__all__ = ["COMMANDS"]


def _since(value: str | None) -> float:
    """The Unix time ``value`` (``10m``, ``1h``) ago; 0 for everything kept."""
    if not value:
        return 0.0
    try:
        return time.time() - parse_duration(value)
    except (ValueError, TypeError):
        raise click.BadParameter(f"expected a duration such as 10m or 1h, got {value!r}") from None


def _line(entry: dict[str, Any]) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(entry["at"])))
    return f"{stamp} {entry['level'].upper():<7} {entry['text']}"


@click.command("logs")
@click.argument("agent")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines as they come.")
@click.option("--since", metavar="AGO", help="Only lines of the last AGO: 10m, 1h...")
@json_option
@api_options
def logs(
    client: ApiClient, agent: str, follow: bool, since: str | None, as_json: bool, **_: Any
) -> None:
    """Print the log lines AGENT wrote (its node keeps the last 1,000)."""
    found = client.agent(agent)
    path = f"/api/v1/agents/{found['id']}/logs"
    query: dict[str, Any] = {"since": _since(since)}
    if follow:
        query["follow"] = "true"
        try:
            for entry in client.stream(path, query):
                click.echo(_json_line(entry) if as_json else _line(entry))
        except KeyboardInterrupt:
            pass
        return
    answer = client.request("GET", path, query=query) or {}
    lines = answer.get("lines", [])
    if as_json:
        emit_json(answer)
        return
    for entry in lines:
        click.echo(_line(entry))


def _json_line(entry: dict[str, Any]) -> str:
    import json

    return json.dumps(entry)


COMMANDS = [logs]
