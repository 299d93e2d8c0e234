"""``caxton security api-key ...`` on a node's store, and the CLI's credentials."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from caxton.api import PERMISSIONS
from caxton.auth.rbac import CLI_PERMISSIONS, LOCAL
from caxton.cli.main import make_cli
from caxton.plugins import PluginHost
from caxton.testing import NodeFactory


def run(args: list[str], env: dict[str, str] | None = None) -> Result:
    cli = make_cli(PluginHost(use_entry_points=False, env={}))
    return CliRunner().invoke(cli, args, env={"CAXTON_CONFIG_PATH": "", **(env or {})})


def cli_run(*args: Any, **kwargs: Any) -> Result:
    """:func:`run` from a test that already runs an event loop (the CLI starts its own)."""
    return asyncio.get_running_loop().run_in_executor(None, lambda: run(*args, **kwargs))  # type: ignore[return-value]


def create(data_dir: Path, *extra: str) -> Result:
    return run(["security", "api-key", "create", "--data-dir", str(data_dir), *extra])


def test_create_list_revoke(tmp_path: Path) -> None:
    made = create(tmp_path, "--role", "operator", "--expires", "30d", "--name", "ci")
    assert made.exit_code == 0, made.output
    key = made.stdout.strip().splitlines()[0]
    assert key.startswith("cxk_")
    key_id = key.split("_")[1]
    listed = run(["security", "api-key", "list", "--data-dir", str(tmp_path), "--json"])
    rows = json.loads(listed.stdout)
    assert [(r["id"], r["role"], r["name"], r["status"]) for r in rows] == [
        (key_id, "operator", "ci", "active")
    ]
    assert key.split("_", 2)[2] not in listed.output
    table = run(["security", "api-key", "list", "--data-dir", str(tmp_path)])
    assert key_id in table.output
    assert "active" in table.output
    revoked = run(["security", "api-key", "revoke", key_id, "--data-dir", str(tmp_path)])
    assert revoked.exit_code == 0, revoked.output
    assert f"API key {key_id} revoked" in revoked.output
    listed = run(["security", "api-key", "list", "--data-dir", str(tmp_path), "--json"])
    assert json.loads(listed.stdout)[0]["status"] == "revoked"
    actions = [json.loads(line)["action"] for line in (tmp_path / "audit.log").open()]
    assert actions == ["api_key_create", "api_key_revoke"]
    assert key.split("_", 2)[2] not in (tmp_path / "audit.log").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--role", "root"], "unknown role 'root'; roles: admin, developer, operator, viewer"),
        (["--role", "viewer", "--expires", "soon"], "Invalid value for '--expires'"),
        (["--role", "viewer", "--expires", "0s"], "must be a positive duration"),
        ([], "Missing option '--role'"),
    ],
)
def test_create_refuses_bad_input(tmp_path: Path, args: list[str], message: str) -> None:
    result = create(tmp_path, *args)
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output


def test_custom_roles_from_config_can_be_given(tmp_path: Path) -> None:
    config = tmp_path / "caxton.toml"
    config.write_text('[security.roles]\nauditor = ["audit"]\n')
    result = create(tmp_path, "--role", "auditor", "--config", str(config))
    assert result.exit_code == 0, result.output


def test_revoke_unknown_key(tmp_path: Path) -> None:
    result = run(["security", "api-key", "revoke", "0123456789abcdef", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "no API key with id 0123456789abcdef" in result.output


async def test_a_created_key_drives_the_cli_against_a_node(tmp_path: Path) -> None:
    factory = NodeFactory(tmp_path)
    node = factory.build("n1", config={"security.auth_enabled": True})
    made = await cli_run(
        ["security", "api-key", "create", "--role", "viewer", "--data-dir", str(tmp_path / "n1")]
    )
    assert made.exit_code == 0, made.output
    key = made.stdout.strip().splitlines()[0]
    await node.start()
    try:
        assert node.api_address is not None
        url = "http://{}:{}".format(*node.api_address)
        listed = await cli_run(["agents", "list", "--api-url", url, "--api-key", key])
        assert listed.exit_code == 0, listed.output
        by_env = await cli_run(["agents", "list", "--api-url", url], env={"CAXTON_API_KEY": key})
        assert by_env.exit_code == 0, by_env.output
        anonymous = await cli_run(["agents", "list", "--api-url", url])
        assert anonymous.exit_code == 1
        assert "Unauthorized" in anonymous.output
        denied = await cli_run(
            ["emergency", "stop", "--all-agents", "--api-url", url, "--api-key", key]
        )
        assert denied.exit_code == 1
        assert "lacks the 'cluster' permission" in denied.output
    finally:
        await node.stop()


def commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[str]:
    found: list[str] = []
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            found += commands(command, (*prefix, name))
        else:
            found.append(" ".join((*prefix, name)))
    return found


def test_every_cli_command_declares_its_permission() -> None:
    cli = make_cli(PluginHost(use_entry_points=False, env={}))
    listed = commands(cli)
    missing = sorted(set(listed) - set(CLI_PERMISSIONS))
    assert missing == [], f"add these to caxton.auth.rbac.CLI_PERMISSIONS: {missing}"
    assert sorted(set(CLI_PERMISSIONS) - set(listed)) == []
    assert set(CLI_PERMISSIONS.values()) <= {*PERMISSIONS, LOCAL}
