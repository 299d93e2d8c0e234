"""The cluster endpoints and commands on a node that does not cluster, and the CLI's
own checks and formatting. (Clustered nodes: tests/cluster/ at the repository root.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from click.testing import CliRunner

from caxton.cli.cluster import cluster, event_line, members_table, status_text
from caxton.node import Node
from caxton.testing import NodeFactory


@pytest.fixture
async def node(caxton_node_factory: NodeFactory) -> AsyncIterator[Node]:
    async with caxton_node_factory.node("solo") as node:
        yield node


async def get(http: aiohttp.ClientSession, path: str) -> Any:
    async with http.get(path) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def test_a_standalone_node_is_a_cluster_of_one(
    node: Node, http: aiohttp.ClientSession
) -> None:
    assert node.cluster is None
    members = (await get(http, "/api/v1/cluster/members"))["members"]
    assert [(m["node_id"], m["status"], m["local"]) for m in members] == [("solo", "alive", True)]
    status = await get(http, "/api/v1/cluster/status")
    assert (status["status"], status["mode"], status["partition"]) == (
        "HEALTHY",
        "read-write",
        "standalone",
    )
    assert (status["nodes_reachable"], status["nodes_known"]) == (1, 1)
    assert await get(http, "/api/v1/cluster/agents") == {"agents": []}
    assert await get(http, "/api/v1/cluster/events") == {"events": []}
    ping = await get(http, "/api/v1/cluster/members/solo/ping")
    assert ping["reachable"] is True
    auth = await get(http, "/api/v1/cluster/auth")
    assert auth["agree"] is True
    assert auth["nodes"][0]["mode"] == "plaintext"


async def test_leave_and_remove_are_refused_without_a_cluster(http: aiohttp.ClientSession) -> None:
    async with http.post("/api/v1/cluster/leave", json={"drain_timeout_ms": 0}) as response:
        assert response.status == 409
        assert "is not part of a cluster" in (await response.json())["details"]
    async with http.post("/api/v1/cluster/remove", json={"node": "x", "force": True}) as response:
        assert response.status == 409
    async with http.post("/api/v1/cluster/remove", json={"node": "x"}) as response:
        assert response.status == 400  # force: true is required
    async with http.get("/api/v1/cluster/members/other/ping") as response:
        assert response.status == 404
    # Every operation that needs a cluster says so the same way (api.common.clustered).
    for path, payload in (
        ("/api/v1/cluster/rebalance", {}),
        ("/api/v1/cluster/drain", {}),
        ("/api/v1/cluster/nodes", {"address": "127.0.0.1:7946"}),
        ("/api/v1/cluster/stop", {}),
        ("/api/v1/cluster/rebuild", {"node": "x"}),
    ):
        async with http.post(path, json=payload) as response:
            assert response.status == 409, path
            assert "is not part of a cluster, so it cannot" in (await response.json())["details"]


async def test_the_event_stream_of_a_standalone_node_ends(http: aiohttp.ClientSession) -> None:
    async with http.get("/api/v1/cluster/events/stream?follow=true") as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/x-ndjson"
        lines = (await response.text()).splitlines()
    assert len(lines) == 1
    assert '"kind": "standalone"' in lines[0]
    async with http.get("/api/v1/cluster/events/stream?follow=maybe") as response:
        assert response.status == 400


def test_members_table_matches_the_clustering_guide() -> None:
    table = members_table(
        [
            {"node_id": "node-1", "status": "alive", "address": "10.0.1.10:7946",
             "agents": 42, "cpu": 15, "memory": 2_254_857_830, "version": "0.2.0"},
            {"node_id": "node-2", "status": "failed", "address": "10.0.1.11:7946",
             "agents": None, "cpu": None, "memory": None},
        ]
    )  # fmt: skip
    assert table.splitlines() == [
        "NODE-ID    STATUS    ADDRESS           AGENTS    CPU    MEMORY    VERSION",
        "node-1     alive     10.0.1.10:7946    42        15%    2.1GB     0.2.0",
        "node-2     failed    10.0.1.11:7946    -         -      -         -",
    ]


def test_status_text_and_event_lines() -> None:
    text = status_text(
        {"status": "DEGRADED", "partition": "minority", "mode": "read-only",
         "nodes_reachable": 1, "nodes_known": 3, "reason": "minority partition"}
    )  # fmt: skip
    assert text.splitlines()[:3] == [
        "Status: DEGRADED (minority partition)",
        "Operations: READ-ONLY",
        "Nodes: 1/3 active",
    ]
    line = event_line({"at": 0, "level": "warning", "text": "Node node-2 detected as failed"})
    assert line.endswith("[WARNING] Node node-2 detected as failed")


def test_remove_needs_force_and_bad_durations_are_refused() -> None:
    runner = CliRunner()
    result = runner.invoke(cluster, ["remove", "--node", "n3"])
    assert result.exit_code == 2
    assert "needs --force" in result.output
    result = runner.invoke(cluster, ["leave", "--drain-timeout", "soon"])
    assert result.exit_code == 2
    assert "--drain-timeout" in result.output


async def test_stop_all_and_rebuild_are_refused_without_a_cluster(
    node: Node, http: aiohttp.ClientSession
) -> None:
    async with http.post("/api/v1/cluster/stop", json={"drain_timeout_ms": 0}) as response:
        assert response.status == 409
        assert "systemctl stop caxton" in (await response.json())["details"]
    async with http.post("/api/v1/cluster/stop", json={"drain_timeout_ms": -1}) as response:
        assert response.status == 400
    async with http.post("/api/v1/cluster/rebuild", json={"node": "solo"}) as response:
        assert response.status == 409
    async with http.post("/api/v1/cluster/rebuild", json={}) as response:
        assert response.status == 400  # node is required
    assert node.state == "running"  # a refused stop stops nothing


def test_the_runbook_commands_say_what_they_need(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    result = runner.invoke(cluster, ["stop"])
    assert result.exit_code == 2
    assert "--all" in result.output
    assert "cluster leave --node" in result.output
    result = runner.invoke(cluster, ["rebuild", "--node", "n2"])
    assert result.exit_code == 2
    assert "--from-peers" in result.output
    monkeypatch.chdir(tmp_path)  # no ./caxton-cluster: the nodes are started elsewhere
    result = runner.invoke(cluster, ["start"])
    assert result.exit_code == 2
    assert "systemctl start caxton" in result.output


def test_rebuild_report_names_what_was_taken_back_and_what_was_left() -> None:
    from caxton.cli.lifecycle import rebuild_text

    text = rebuild_text(
        {
            "node_id": "n2",
            "peers": ["n1", "n3"],
            "recovered": [
                {"name": "c2", "agent_id": "a", "generation": 2, "keys": 1, "from": ["n1", "n3"]}
            ],
            "skipped": [{"name": "c3", "agent_id": "b", "reason": "runs on n1 now"}],
            "replicas_resent": 2,
            "registry_agents": 3,
            "not_recovered": "API keys",
        }
    )
    assert text.splitlines() == [
        "Node n2 rebuilt from its peers (n1, n3):",
        "  recovered c2 (generation 2, 1 keys, from n1, n3)",
        "  not taken c3: runs on n1 now",
        "  2 replicas of the peers' agents sent to it again; registry: 3 agents",
        "  Not from peers: API keys",
    ]
