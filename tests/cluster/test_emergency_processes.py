"""The runbook's emergency commands on three real node processes, each run as the runbook
writes it through n1, with its effect on every node and its reversal."""

from __future__ import annotations

import base64
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster_support import ApiError, NodeProcess, ProcessCluster, caxton_command, clean_environment

from caxton.testing.sandbox import build_example_agents

pytestmark = pytest.mark.cluster

#: name -> (node, priority)
AGENTS = {
    "a1": ("n1", "low"),
    "a2": ("n2", "low"),
    "a3": ("n3", "normal"),
    "b3": ("n3", "critical"),
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessCluster]:
    base = tmp_path_factory.mktemp("emergency")
    counter = build_example_agents(base / "agents")["counter"]
    cluster = ProcessCluster(base / "cluster", cluster={})  # default timings (see snapshot test)
    try:
        n1, _n2, _n3 = cluster.start(3)
        for name, (node, priority) in AGENTS.items():
            body = {
                "name": name,
                "wasm_module": base64.b64encode(counter).decode(),
                "target_node": node,
                "priority": priority,
            }
            n1.request("POST", "/api/v1/agents", body)
        cluster.wait_until(lambda: len(n1.agents()) == len(AGENTS), 20, "every agent known")
        yield cluster
    finally:
        cluster.close()


def caxton(n1: NodeProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*caxton_command(), *args, "--api-url", n1.api_url],
        capture_output=True,
        text=True,
        env=clean_environment(),
        timeout=120,
    )


def states(cluster: ProcessCluster) -> dict[str, str]:
    """agent name -> state, asked of the node that runs it."""
    found = {}
    for node in cluster.nodes.values():
        for agent in node.request("GET", "/api/v1/agents"):
            found[agent["name"]] = agent["state"]
    return found


def tick(n1: NodeProcess, name: str) -> Any:
    try:
        return n1.ask(name, "tick")["reply"]["content"]["count"]
    except ApiError as exc:
        return exc.status, exc.body.get("details", "") if isinstance(exc.body, dict) else ""


def nodes(cluster: ProcessCluster) -> tuple[NodeProcess, NodeProcess, NodeProcess]:
    return cluster.nodes["n1"], cluster.nodes["n2"], cluster.nodes["n3"]


def test_emergency_stop_cluster_with_dump_then_start(
    cluster: ProcessCluster, tmp_path: Path
) -> None:
    n1, n2, _n3 = nodes(cluster)
    before = tick(n1, "a2")
    a2 = next(a for a in n2.request("GET", "/api/v1/agents") if a["name"] == "a2")
    n2.request("POST", f"/api/v1/agents/{a2['id']}/suspend")
    n1.request(
        "POST", "/api/v1/messages", {"performative": "inform", "receiver": "a2", "content": "q"}
    )
    cluster.wait_until(
        lambda: n2.request("GET", "/api/v1/queues")["agents"].get("a2", {}).get("queued") == 1,
        15,
        "a message queued for a2",
    )
    dump = tmp_path / "emergency"
    dump.mkdir()
    stopped = caxton(n1, "emergency", "stop", "--cluster", "--preserve-state",
                     "--dump-to", str(dump))  # fmt: skip
    assert stopped.returncode == 0, stopped.stderr
    lines = stopped.stdout.splitlines()
    assert lines[0] == "Emergency stop: 4 agents stopped"
    assert [line.split(":")[0] for line in lines[1:]] == ["n1", "n2", "n3"]  # each confirms
    assert set(states(cluster).values()) == {"stopped"}
    for node_id in ("n1", "n2", "n3"):
        written = json.loads((dump / node_id / "state.json").read_text())
        assert (dump / node_id / written["backup"]).is_file()
    n2_dump = json.loads((dump / "n2" / "state.json").read_text())
    assert [m["content"] for a in n2_dump["agents"] for m in a["queued"]] == ["q"]

    started = caxton(n1, "emergency", "start", "--cluster", "--replay-from", str(dump))
    assert started.returncode == 0, started.stderr
    assert set(states(cluster).values()) == {"running"}
    assert tick(n1, "a2") == before + 2  # the queued message, re-sent, then this one


def test_isolate_then_rejoin(cluster: ProcessCluster) -> None:
    n1, _n2, n3 = nodes(cluster)
    assert isinstance(tick(n1, "a3"), int)
    isolated = caxton(n1, "cluster", "isolate", "--node", "n3")
    assert isolated.returncode == 0, isolated.stderr
    assert isolated.stdout.startswith("n3: isolated")
    cluster.wait_until(lambda: not isinstance(tick(n1, "a3"), int), 15, "a3 refused")
    status, details = tick(n1, "a3")
    assert status == 503
    assert "runs on node n3, which is isolated" in details
    with pytest.raises(ApiError) as refused:  # no placement on it either
        n1.request("POST", "/api/v1/agents", {"name": "x", "wasm_module": "AGFzbQEAAAA=",
                                             "target_node": "n3"})  # fmt: skip
    assert refused.value.status in (404, 409, 503), refused.value.body
    assert n3.ready()  # not killed: it still serves its own API
    rejoined = caxton(n1, "cluster", "rejoin", "n3")
    assert rejoined.returncode == 0, rejoined.stderr
    cluster.wait_until(lambda: isinstance(tick(n1, "a3"), int), 15, "a3 answering again")


def test_circuit_breaker_activate_then_reset(cluster: ProcessCluster) -> None:
    n1, n2, _n3 = nodes(cluster)
    opened = caxton(n1, "circuit-breaker", "activate", "a3")
    assert opened.returncode == 0, opened.stderr
    assert opened.stdout.splitlines() == ["n1: open for a3", "n2: open for a3", "n3: open for a3"]
    started = time.monotonic()
    status, details = tick(n1, "a3")
    assert status == 503
    assert "circuit breaker open for agent a3" in details
    assert time.monotonic() - started < 5  # fast, not a wait for a timeout
    assert isinstance(tick(n2, "b3"), int)  # other agents are not affected
    reset = caxton(n1, "circuit-breaker", "reset", "--all")
    assert reset.returncode == 0, reset.stderr
    assert isinstance(tick(n1, "a3"), int)
    gradual = caxton(n1, "circuit-breaker", "activate", "--all")
    assert gradual.returncode == 0, gradual.stderr
    assert tick(n1, "b3")[0] == 503
    reset = caxton(n1, "circuit-breaker", "reset", "--gradual", "--duration", "1s")
    assert reset.returncode == 0, reset.stderr
    cluster.wait_until(lambda: isinstance(tick(n1, "b3"), int), 10, "b3 answering again")


def test_agents_suspend_by_priority_then_resume(cluster: ProcessCluster) -> None:
    n1, _n2, _n3 = nodes(cluster)
    suspended = caxton(n1, "agents", "suspend", "--priority", "low")
    assert suspended.returncode == 0, suspended.stderr
    assert suspended.stdout.splitlines() == [
        "n1: suspended a1",
        "n2: suspended a2",
        "n3: suspended none",
    ]
    assert states(cluster) == {"a1": "suspended", "a2": "suspended", "a3": "running",
                               "b3": "running"}  # fmt: skip
    resumed = caxton(n1, "agents", "resume", "--priority", "low")
    assert resumed.returncode == 0, resumed.stderr
    assert set(states(cluster).values()) == {"running"}


def test_shed_load_then_reset(cluster: ProcessCluster) -> None:
    n1, _n2, _n3 = nodes(cluster)
    shed = caxton(n1, "cluster", "shed-load", "--percentage", "20")
    assert shed.returncode == 0, shed.stderr
    # ceil(20% of each node's running agents), lowest priority first: a3 before b3.
    assert shed.stdout.splitlines() == [
        "n1: suspended a1; 0 running",
        "n2: suspended a2; 0 running",
        "n3: suspended a3; 1 running",
    ]
    assert states(cluster)["b3"] == "running"
    reset = caxton(n1, "cluster", "shed-load", "--reset")
    assert reset.returncode == 0, reset.stderr
    assert set(states(cluster).values()) == {"running"}
