"""An agent on n3 managed entirely through n1, with real ``caxton server start``
processes and auth on: every ``caxton agent`` command names the agent, n1 finds its
node and n3 carries the operation out (get, lifecycle, update, logs, a live move to n2,
remove); a viewer is refused on both nodes."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cluster_support import NodeProcess, ProcessCluster, caxton_command, clean_environment

pytestmark = pytest.mark.cluster

MakeCluster = Callable[..., ProcessCluster]


def caxton(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*caxton_command(), *args], capture_output=True, text=True,
        env=clean_environment(), timeout=60,
    )  # fmt: skip


def audited(node: NodeProcess, action: str) -> list[dict[str, Any]]:
    entries = node.request("GET", f"/api/v1/audit?action={action}")["entries"]
    return list(entries)


def test_an_agent_on_n3_is_managed_entirely_through_n1(
    make_cluster: MakeCluster, echo: bytes, tmp_path: Path
) -> None:
    cluster = make_cluster(extra={"security": {"auth_enabled": True}})
    n1, n2, n3 = cluster.start(3, roles=("admin", "viewer"))
    module = tmp_path / "echo.wasm"
    module.write_bytes(echo)

    def through(node: NodeProcess, *args: str, key: str | None = None) -> Any:
        done = caxton(*args, "--api-url", node.api_url, "--api-key", key or str(node.api_key))
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout) if "--json" in args else done.stdout

    deployed = through(n1, "deploy", str(module), "--name", "echo", "--target-node", "n3", "--json")
    assert deployed["node_id"] == "n3"
    cluster.wait_until(lambda: n1.agents().get("echo") == "n3", 10, "echo in n1's registry")

    assert through(n1, "agent", "get", "echo", "--json")["node_id"] == "n3"
    for action, state in (("suspend", "suspended"), ("resume", "running"),
                          ("stop", "stopped"), ("start", "running")):  # fmt: skip
        assert through(n1, "agent", action, "echo", "--json")["state"] == state
        [here] = n3.request("GET", "/api/v1/agents?name=echo")
        assert here["state"] == state
    updated = through(n1, "agent", "update", "echo", "--max-fuel", "123456", "--json")
    assert updated["limits"]["max_fuel"] == 123_456
    listed = through(n1, "agents", "list", "--cluster", "--name", "ech*", "--json")
    assert [(a["name"], a["node_id"]) for a in listed] == [("echo", "n3")]
    assert n1.ask("echo", "hello")["reply"]["content"] == "hello"

    # A viewer reads through n1, and is refused a change by n1 and by n3.
    assert through(n1, "agent", "get", "echo", "--json", key=n1.keys["viewer"])["node_id"] == "n3"
    for node, key in ((n1, n1.keys["viewer"]), (n3, n3.keys["viewer"])):
        refused = caxton("agent", "suspend", "echo", "--api-url", node.api_url, "--api-key", key)
        assert refused.returncode == 1
        assert "Forbidden" in refused.stderr
    [here] = n3.request("GET", "/api/v1/agents?name=echo")
    assert here["state"] == "running"

    # Audited on both nodes: n1 as the REST request, n3 as forwarded by n1.
    on_n1 = [e["result"] for e in audited(n1, "suspend_agent")]
    on_n3 = audited(n3, "suspend_agent")
    assert sorted(on_n1) == ["denied", "success"]
    assert sorted(e["result"] for e in on_n3) == ["denied", "success"]
    assert [e["source"].split()[0] for e in on_n3 if e["result"] == "success"] == ["node:n1"]

    # Its logs, read through n1 from n3 (a viewer may read them).
    logs = through(n1, "logs", "echo", "--json", key=n1.keys["viewer"])
    assert logs["agent"] == "echo"
    assert isinstance(logs["lines"], list)

    # A live move to n2 asked of n1; a viewer may not move it, on n1 or on n3.
    for node, key in ((n1, n1.keys["viewer"]), (n3, n3.keys["viewer"])):
        refused = caxton("agent", "move", "echo", "--to", "n2", "--api-url", node.api_url,
                         "--api-key", key)  # fmt: skip
        assert refused.returncode == 1
        assert "Forbidden" in refused.stderr
    moved = through(n1, "agent", "move", "echo", "--to", "n2", "--json")
    assert (moved["moved_from"], moved["node_id"]) == ("n3", "n2")
    assert n3.request("GET", "/api/v1/agents") == []
    cluster.wait_until(lambda: n1.agents().get("echo") == "n2", 10, "echo on n2 in n1's registry")
    assert n1.ask("echo", "moved")["reply"]["content"] == "moved"
    assert [e["result"] for e in audited(n3, "move_agent")].count("success") == 1

    through(n1, "agent", "remove", "echo")
    assert n2.request("GET", "/api/v1/agents") == []
    gone = caxton("agent", "get", "echo", "--api-url", n1.api_url, "--api-key", str(n1.api_key))
    assert gone.returncode != 0
    assert "Agent not found: echo" in gone.stderr
