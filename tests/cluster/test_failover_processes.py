"""Placement and failover with real ``caxton server start`` processes (tcp, test
timings): the echo agent placed on n3 with ``caxton deploy --target-node`` through n1,
n3 SIGKILLed, the agent back on exactly one survivor, then n3 restarted with its data
without running it twice."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from cluster_support import NodeProcess, ProcessCluster, caxton_command, clean_environment

pytestmark = pytest.mark.cluster

MakeCluster = Callable[..., ProcessCluster]


def local_agents(node: NodeProcess) -> list[str]:
    """Names of the agents running on ``node`` itself ([] when it does not answer)."""
    try:
        return [a["name"] for a in node.request("GET", "/api/v1/agents", timeout=3.0)]
    except OSError:
        return []


def texts(node: NodeProcess) -> list[str]:
    return [e["text"] for e in node.request("GET", "/api/v1/cluster/events?limit=1000")["events"]]


def hosting(nodes: list[NodeProcess], name: str) -> list[str]:
    return [n.node_id for n in nodes if name in local_agents(n)]


def test_an_agent_placed_on_a_killed_node_comes_back_once(
    make_cluster: MakeCluster, echo: bytes, tmp_path: Path
) -> None:
    cluster = make_cluster()
    n1, n2, n3 = cluster.start(3)
    module = tmp_path / "echo.wasm"
    module.write_bytes(echo)
    deployed = subprocess.run(
        [*caxton_command(), "deploy", str(module), "--name", "echo", "--target-node", "n3",
         "--json", "--api-url", n1.api_url],
        capture_output=True, text=True, env=clean_environment(), timeout=60,
    )  # fmt: skip
    assert deployed.returncode == 0, deployed.stderr
    agent = json.loads(deployed.stdout)
    assert agent["node_id"] == "n3"
    assert hosting([n1, n2, n3], "echo") == ["n3"]
    cluster.wait_until(
        lambda: any(t.startswith("Agent 'echo' replicated to ") for t in texts(n3)),
        15,
        "echo replicated",
    )
    assert n1.ask("echo", "before")["reply"]["content"] == "before"

    n3.kill()  # SIGKILL
    survivors = [n1, n2]
    cluster.wait_until(lambda: len(hosting(survivors, "echo")) == 1, 30, "echo on a survivor")
    [taker] = hosting(survivors, "echo")
    cluster.wait_until(
        lambda: all(n.agents().get("echo") == taker for n in survivors), 10, "registries agree"
    )
    assert n1.ask("echo", "after")["reply"]["content"] == "after"
    assert hosting(survivors, "echo") == [taker]
    moved = next(n for n in survivors if n.node_id == taker)
    assert [a["id"] for a in moved.request("GET", "/api/v1/agents")] == [agent["id"]]
    for node in survivors:
        lines = texts(node)
        assert "Node n3 detected as failed" in lines
        assert "Redistributing 1 agents from n3" in lines
        assert f"Agent 'echo' migrated to {taker}" in lines
        assert any(t.startswith("All agents successfully redistributed (") for t in lines)

    n3.start(join=[n1.address])  # same id, ports and data
    cluster.wait_converged([n1, n2, n3], timeout=30)
    everyone = [n1, n2, n3]
    cluster.wait_until(
        lambda: (
            hosting(everyone, "echo") == [taker]
            and all(n.agents().get("echo") == taker for n in everyone)
        ),
        30,
        "one echo, on the survivor, in every registry",
    )
    cluster.wait_until(
        lambda: any("removed the stale copy on n3" in t for t in texts(n3)), 10, "dedup event"
    )
    for node in everyone:
        assert node.ask("echo", f"via {node.node_id}")["reply"]["content"] == f"via {node.node_id}"
    assert hosting(everyone, "echo") == [taker]
