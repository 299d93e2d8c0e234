"""The parts of ``caxton cluster rolling-restart`` / ``upgrade`` that need no cluster: the
start command a node gets, versions as the runbook writes them, the state file, and the
errors a run without a way to start nodes gives (the runs themselves:
tests/cluster/test_rolling_upgrade.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from caxton.cli.main import make_cli
from caxton.cli.upgrade import NodeRestart, NodeRun, Run, UpgradeError, plain_version, state_path
from caxton.plugins import PluginHost


def test_versions_as_the_runbook_writes_them() -> None:
    assert plain_version("v1.2.0") == "1.2.0"
    assert plain_version(" 1.2.0 ") == "1.2.0"
    assert plain_version("version-9") == "version-9"


def restarts(run: Run) -> NodeRestart:
    cluster: Any = None
    return NodeRestart(
        cluster, run, drain_timeout=1, rejoin_timeout=1, say=print, save=lambda: None
    )


def test_the_start_command_template_gets_the_nodes_placeholders(tmp_path: Path) -> None:
    node = NodeRun("n2", "0.2.0", "0.3.0", address="10.0.1.11:7946")
    run = Run("upgrade", "0.3.0", "", "", "", [], [node])
    argv = restarts(run)._command(
        node, "0.3.0", "ssh {host} 'start {node} at {version} ({address})'"
    )
    assert argv == ["/bin/sh", "-c", "ssh 10.0.1.11 'start n2 at 0.3.0 (10.0.1.11:7946)'"]
    with pytest.raises(UpgradeError, match="unknown placeholder 'hostname'"):
        restarts(run)._command(node, "0.3.0", "ssh {hostname}")
    with pytest.raises(UpgradeError, match="say how a node is started again: --command"):
        restarts(run)._command(node, "0.3.0", "")


def test_the_state_file_round_trips(tmp_path: Path) -> None:
    path = state_path(str(tmp_path), None)
    assert path == tmp_path / "upgrade.json"
    run = Run("upgrade", "0.3.0", "", "cmd", "", ["http://a"], [NodeRun("n1", "0.2.0", "0.3.0")])
    run.nodes[0].steps["rejoining"] = 1.5
    run.save(path)
    assert Run.load(path) == run
    with pytest.raises(UpgradeError, match="no rolling upgrade or restart recorded"):
        Run.load(tmp_path / "missing.json")


def test_upgrade_without_a_version_or_a_record_says_what_to_do(tmp_path: Path) -> None:
    runner = CliRunner()
    cli = make_cli(PluginHost(use_entry_points=False, env={}))
    result = runner.invoke(cli, ["cluster", "upgrade"])
    assert result.exit_code == 2
    assert "give --version V" in result.output
    result = runner.invoke(
        cli, ["cluster", "upgrade", "status", "--state", str(tmp_path / "none.json")]
    )
    assert result.exit_code == 1
    assert "no rolling upgrade or restart recorded" in result.output
