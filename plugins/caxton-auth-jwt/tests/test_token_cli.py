"""`caxton security token create` (a core command that uses this plugin's token code)."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from caxton.cli.main import make_cli
from caxton.plugins import PluginHost


def test_token_create_without_a_secret_says_what_to_set(tmp_path: Path) -> None:
    cli = make_cli(PluginHost(use_entry_points=False, env={}))
    result = CliRunner().invoke(
        cli,
        ["security", "token", "create", "--role", "viewer", "--data-dir", str(tmp_path)],
        env={"CAXTON_CONFIG_PATH": "", "JWT_SECRET": ""},
    )
    assert result.exit_code == 1
    assert "needs a secret: set security.jwt_secret" in result.output
