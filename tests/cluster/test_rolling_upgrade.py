"""Rolling restart, upgrade and rollback of a real ``caxton cluster up`` cluster.

A second installable release is built for the test (the ``next_release`` fixture of
conftest.py): caxton-core and the tcp transport copied from this checkout with another
version number (``<version>.post1``), installed with uv into a venv of their own. The
cluster (three node processes, mutual TLS) runs this checkout's release; ``caxton cluster
rolling-restart`` restarts it node by node, the new release's ``caxton cluster upgrade
start`` moves every node to it, ``upgrade status`` reports it, ``upgrade rollback``
takes every node back, and an upgrade whose start command fails stops at the first node
with one line and is rolled back. An echo agent answers after each of them
(docs/cluster.md, "Rolling restart and upgrade").
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster_support import caxton_command, clean_environment

from caxton import __version__

pytestmark = pytest.mark.cluster


def run(command: list[str], *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [*command, *args], capture_output=True, text=True, env=clean_environment(), timeout=600
    )
    if ok:
        assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done


@pytest.fixture
def local_cluster(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    directory = tmp_path / "cluster"
    up = run(caxton_command(), "cluster", "up", "--nodes", "3", "--fast", "--data-dir",
             str(directory), "--api-port", "0", "--cluster-port", "0", "--json")  # fmt: skip
    api = json.loads(up.stdout)["nodes"][0]["api_url"]
    try:
        yield directory, api
    finally:
        run(caxton_command(), "cluster", "down", "--data-dir", str(directory), ok=False)


def versions(api: str) -> dict[str, str]:
    members = json.loads(
        run(caxton_command(), "cluster", "members", "--json", "--api-url", api).stdout
    )
    return {m["node_id"]: m["version"] for m in members if m["status"] == "alive"}


def ask(api: str, content: str) -> Any:
    answer = run(caxton_command(), "message", "send", "--to", "echo", "--content", content,
                 "--wait", "10s", "--json", "--api-url", api)  # fmt: skip
    return json.loads(answer.stdout)["reply"]["content"]


def test_rolling_restart_upgrade_and_rollback(
    local_cluster: tuple[Path, str],
    next_release: tuple[list[str], str],
    tmp_path: Path,
    echo: bytes,
) -> None:
    directory, api = local_cluster
    new_caxton, new_version = next_release
    old = caxton_command()
    where = ["--data-dir", str(directory), "--api-url", api]
    module = tmp_path / "echo.wasm"
    module.write_bytes(echo)
    run(old, "deploy", str(module), "--name", "echo", "--target-node", "n2", "--api-url", api)
    assert ask(api, "before") == "before"
    assert versions(api) == dict.fromkeys(("n1", "n2", "n3"), __version__)

    restarted = run(old, "cluster", "rolling-restart", "--reason", "cert-rotation", *where)
    order = [line.split(":")[0] for line in restarted.stdout.splitlines() if "done in" in line]
    assert order == ["n2", "n3", "n1"]  # the node whose API drives the run goes last
    assert restarted.stdout.strip().endswith("Rolling restart completed: 3/3 nodes")
    assert ask(api, "restarted") == "restarted"

    # the runbook's form, with the "v" it writes; run by the new release's caxton
    upgraded = run(
        new_caxton, "cluster", "upgrade", "start", "--version", f"v{new_version}", *where
    )
    assert upgraded.stdout.strip().endswith(
        f"Rolling upgrade to {new_version} completed: 3/3 nodes"
    )
    assert versions(api) == dict.fromkeys(("n1", "n2", "n3"), new_version)
    assert ask(api, "upgraded") == "upgraded"
    status = run(old, "cluster", "upgrade", "status", *where).stdout.splitlines()
    assert status[:2] == ["PHASE: Completed", "PROGRESS: 3/3 nodes upgraded"]
    members = run(old, "cluster", "members", "--api-url", api).stdout.splitlines()
    assert members[0].split()[-1] == "VERSION"
    assert all(line.split()[-1] == new_version for line in members[1:])

    rolled = run(old, "cluster", "upgrade", "rollback", *where)
    assert rolled.stdout.strip().endswith(
        "Rollback done: 3 nodes back at the version they ran before"
    )
    assert versions(api) == dict.fromkeys(("n1", "n2", "n3"), __version__)
    assert ask(api, "rolled back") == "rolled back"

    # a start command that fails: the run stops at the first node and says so in one line
    failed = run(old, "cluster", "upgrade", "--version", "9.9.9", "--command", "exit 3",
                 *where, ok=False)  # fmt: skip
    assert failed.returncode == 1
    [line] = failed.stderr.strip().splitlines()
    assert line.startswith(
        "Error: stopped at node n2: node n2: the start command exited with status 3"
    )
    status = run(old, "cluster", "upgrade", "status", *where).stdout.splitlines()
    assert status[0] == "PHASE: Failed"
    assert any(row.split()[:4] == ["n2", __version__, "9.9.9", "failed"] for row in status)
    assert set(versions(api)) == {"n1", "n3"}
    run(old, "cluster", "upgrade", "rollback", *where)
    assert versions(api) == dict.fromkeys(("n1", "n2", "n3"), __version__)
    assert ask(api, "again") == "again"
