"""Every diagnostic command of the runbook and the tuning guide, run as written with
``--json`` through n1 of three real node processes, and what each reads from the other
nodes: the cross-node conversation, the agent on n2, the crash on n3, the replicas."""

from __future__ import annotations

import base64
import json
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster_support import NodeProcess, ProcessCluster, caxton_command, clean_environment

from caxton.testing.sandbox import build_example_agents

pytestmark = pytest.mark.cluster

#: name -> (example agent, node)
AGENTS = {"echo": ("echo", "n2"), "counter": ("counter", "n3"), "trap": ("trap", "n3")}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessCluster]:
    base = tmp_path_factory.mktemp("diagnostics")
    wasm = build_example_agents(base / "agents")
    cluster = ProcessCluster(base / "cluster")
    try:
        n1, _n2, _n3 = cluster.start(3)
        for name, (example, node) in AGENTS.items():
            body = {
                "name": name,
                "wasm_module": base64.b64encode(wasm[example]).decode(),
                "target_node": node,
            }
            n1.request("POST", "/api/v1/agents", body)
        cluster.wait_until(lambda: len(n1.agents()) == len(AGENTS), 20, "every agent known")
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def n1(cluster: ProcessCluster) -> NodeProcess:
    return cluster.nodes["n1"]


def caxton(n1: NodeProcess, *args: str, expect: int = 0) -> Any:
    """``caxton ARGS --json --api-url n1``; its JSON output."""
    done = subprocess.run(
        [*caxton_command(), *args, "--json", "--api-url", n1.api_url],
        capture_output=True,
        text=True,
        env=clean_environment(),
        timeout=120,
    )
    assert done.returncode == expect, f"caxton {' '.join(args)}: {done.stdout}{done.stderr}"
    return json.loads(done.stdout)


def test_trace_follows_a_conversation_across_nodes(n1: NodeProcess) -> None:
    body = {
        "performative": "request",
        "receiver": "echo",
        "content": "hello",
        "conversation_id": "diag-conversation",
        "wait_ms": 5000,
    }
    n1.request("POST", "/api/v1/messages", body, timeout=15)
    traced = caxton(n1, "trace", "--conversation-id", "diag-conversation")
    assert traced["found"] is True
    assert traced["nodes"] == ["n1", "n2"]
    steps = [(m["node_id"], m["performative"], m["receiver"]) for m in traced["messages"]]
    # n1 routes the request to n2, whose router hands it to echo; the reply goes back.
    assert steps[0][:2] == ("n1", "request")
    assert ("n2", "request", "echo") in steps
    assert steps[-1][:2] == ("n1", "inform")
    assert [m["offset_ms"] for m in traced["messages"]] == sorted(
        m["offset_ms"] for m in traced["messages"]
    )


def test_agents_slow_and_memory_stats_see_every_node(n1: NodeProcess) -> None:
    n1.ask("echo", "warm")
    slow = caxton(n1, "agents", "slow", "--threshold", "0ms")
    assert ("echo", "n2") in [(a["agent"], a["node_id"]) for a in slow["agents"]]
    memory = caxton(n1, "memory", "stats")
    assert [n["node_id"] for n in memory["nodes"]] == ["n1", "n2", "n3"]
    per_agent = {a["agent"]: n["node_id"] for n in memory["nodes"] for a in n["per_agent"]}
    assert per_agent == {"echo": "n2", "counter": "n3", "trap": "n3"}
    gc = caxton(n1, "memory", "gc", "--aggressive", "--node", "n3")
    assert [n["node_id"] for n in gc["nodes"]] == ["n3"]
    assert len(caxton(n1, "memory", "gc")["nodes"]) == 3


def test_error_cascade_finds_the_crash_on_another_node(n1: NodeProcess) -> None:
    reply = n1.ask("trap", "boom")
    assert reply["reply"]["performative"] == "failure"
    cascade = caxton(n1, "trace", "--error-cascade", "--last", "5m")
    assert cascade["root"]["node_id"] == "n3"
    # analyze messages through n1 finds trap's crash on n3, and the failure answer of a
    # conversation, which n3 and n1 both routed back to the client.
    body = {"performative": "request", "receiver": "trap", "content": "boom",
            "conversation_id": "c-analyze", "wait_ms": 5000}  # fmt: skip
    assert n1.request("POST", "/api/v1/messages", body)["reply"]["performative"] == "failure"
    found = caxton(n1, "analyze", "messages", "--pattern", "crash|c-analyze", "--last", "5m")
    assert found["by_kind"]["crash"] == 2
    routed = {
        (m["node_id"], m["text"].split()[0]) for m in found["matches"] if m["kind"] == "message"
    }
    assert routed == {("n1", "request"), ("n3", "request"), ("n3", "failure"), ("n1", "failure")}
    assert cascade["root"]["agent"] == "trap"
    assert cascade["root"]["kind"] == "crash"


def test_profile_of_an_agent_runs_on_its_node(n1: NodeProcess) -> None:
    report = caxton(n1, "profile", "--agent", "echo", "--duration", "1s")
    (node,) = report["nodes"]
    assert node["node_id"] == "n2"
    assert node["samples"] > 0
    assert [a["agent"] for a in node["agents"]] == ["echo"]


def test_cluster_performance_analyze_and_gossip(n1: NodeProcess) -> None:
    n1.ask("echo", "measure me")  # a forward n1 -> n2 for the remote routing figure
    done = subprocess.run(
        [*caxton_command(), "cluster", "performance", "--json", "--api-url", n1.api_url],
        capture_output=True, text=True, env=clean_environment(), timeout=120,
    )  # fmt: skip
    performance = json.loads(done.stdout)
    assert done.returncode == (0 if performance["passed"] else 1)
    assert [n["node_id"] for n in performance["nodes"]] == ["n1", "n2", "n3"]
    rows = {row["metric"]: row for row in performance["targets"]}
    assert rows["Message routing P99"]["actual_ms"] > 0  # every node's probe
    assert rows["Remote routing P50"]["actual_ms"] is not None
    assert rows["Agent startup P99"]["node_id"] in ("n2", "n3")
    analysis = caxton(n1, "cluster", "analyze")
    assert analysis["agents_per_node"] == {"n1": 0, "n2": 1, "n3": 2}
    assert analysis["suggestions"]
    gossip = caxton(n1, "cluster", "analyze-gossip")
    assert [g["node_id"] for g in gossip["nodes"]] == ["n1", "n2", "n3"]
    assert all(g["clustered"] and g["probes"] > 0 for g in gossip["nodes"])


def test_verify_deep_and_one_node(cluster: ProcessCluster, n1: NodeProcess) -> None:
    # replicas are placed right after the deploys; gossip settles within seconds
    cluster.wait_until(lambda: _verify(n1, "--deep")["consistent"], 30, "deep verify", 0.5)
    report = _verify(n1, "--deep")
    assert report["deep"] is True
    assert report["replicas_checked"] >= len(AGENTS)
    assert all(n["integrity"] == "ok" for n in report["nodes"])
    one = _verify(n1, "--node", "n2")
    assert [n["node_id"] for n in one["nodes"]] == ["n2"]
    assert one["nodes"][0]["agents"] == 1
    missing = subprocess.run(
        [*caxton_command(), "cluster", "verify", "--node", "n9", "--api-url", n1.api_url],
        capture_output=True, text=True, env=clean_environment(), timeout=60,
    )  # fmt: skip
    assert missing.returncode == 3
    assert "n9" in missing.stderr


def _verify(n1: NodeProcess, *args: str) -> Any:
    done = subprocess.run(
        [*caxton_command(), "cluster", "verify", *args, "--json", "--api-url", n1.api_url],
        capture_output=True, text=True, env=clean_environment(), timeout=60,
    )  # fmt: skip
    return json.loads(done.stdout)


def test_config_diff_between_nodes(n1: NodeProcess) -> None:
    same = caxton(n1, "config", "diff", "--other-node", "n2")
    assert same["differences"] == []  # the per-node keys are left out
    every = caxton(n1, "config", "diff", "--other-node", "n2", "--all", expect=1)
    assert "node.id" in [d["key"] for d in every["differences"]]
    baseline = caxton(n1, "config", "diff", "--baseline", str(n1.config_path), expect=1)
    keys = {d["key"] for d in baseline["differences"]}
    assert "node.id" in keys  # given on the command line, not in the file
    assert "coordination.cluster.gossip_interval" not in keys  # the file says it


def test_debug_dump_has_every_node_and_no_secret(
    cluster: ProcessCluster, n1: NodeProcess, tmp_path: Path
) -> None:
    target = tmp_path / "debug.tar.gz"
    caxton(n1, "debug", "dump", "--output", str(target))
    with tarfile.open(target) as tar:
        names = tar.getnames()
        texts = [
            tar.extractfile(m).read().decode()  # type: ignore[union-attr]
            for m in tar.getmembers()
        ]
    for node_id in ("n1", "n2", "n3"):
        assert f"caxton-debug/{node_id}/config.json" in names
        assert f"caxton-debug/{node_id}/metrics.txt" in names
    assert cluster.gossip_key is not None
    assert not any(cluster.gossip_key in text for text in texts)
    manifest = json.loads(texts[names.index("caxton-debug/manifest.json")])
    assert manifest["nodes"] == ["n1", "n2", "n3"]
    assert manifest["unreachable"] == []
