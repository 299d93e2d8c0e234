"""One agent per name in the cluster, with real ``caxton server start`` processes (tcp,
gossip key, test timings): a deploy of a name that runs elsewhere is refused with 409
naming the node (REST and CLI), ``--replace`` moves the name, concurrent deploys of
one name on every node end with exactly one agent, and two copies of one agent after a
pause that outlasted the failover settle on one (docs/cluster.md, "One agent per
name")."""

from __future__ import annotations

import base64
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cluster_support import ApiError, NodeProcess, ProcessCluster, caxton_command, clean_environment

pytestmark = pytest.mark.cluster

MakeCluster = Callable[..., ProcessCluster]


def local_names(node: NodeProcess) -> list[str]:
    return [a["name"] for a in node.request("GET", "/api/v1/agents", timeout=5.0)]


def cli(node: NodeProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*caxton_command(), *args, "--api-url", node.api_url],
        capture_output=True, text=True, env=clean_environment(), timeout=60,
    )  # fmt: skip


def race(nodes: list[NodeProcess], body: dict[str, Any]) -> dict[str, Any]:
    """POST ``body`` to /api/v1/agents on every node at once: node id -> agent or error."""
    start = threading.Barrier(len(nodes))
    outcomes: dict[str, Any] = {}

    def deploy(node: NodeProcess) -> None:
        start.wait()
        try:
            outcomes[node.node_id] = node.request("POST", "/api/v1/agents", body, timeout=30)
        except ApiError as exc:
            outcomes[node.node_id] = exc

    threads = [threading.Thread(target=deploy, args=(node,)) for node in nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return outcomes


def test_a_name_that_runs_elsewhere_is_refused_naming_the_node_unless_replaced(
    make_cluster: MakeCluster, echo: bytes, tmp_path: Path
) -> None:
    cluster = make_cluster()
    n1, n2, n3 = cluster.start(3)
    first = n1.deploy("echo", echo)
    cluster.wait_until(lambda: n2.agents().get("echo") == "n1", 10, "echo known on n2")

    with pytest.raises(ApiError) as refused:
        n2.deploy("echo", echo)
    assert refused.value.status == 409
    assert refused.value.body["error"] == "Name taken"
    assert "an agent named 'echo' runs on node n1" in refused.value.body["details"]

    module = tmp_path / "echo.wasm"
    module.write_bytes(echo)
    result = cli(n3, "deploy", str(module), "--name", "echo")
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()  # one line, no traceback
    assert "an agent named 'echo' runs on node n1" in line

    replaced = cli(n3, "deploy", str(module), "--name", "echo", "--replace", "--json")
    assert replaced.returncode == 0, replaced.stderr
    cluster.wait_until(
        lambda: all(n.agents().get("echo") == "n3" for n in (n1, n2, n3)), 10, "echo on n3"
    )
    assert local_names(n1) == []
    assert local_names(n3) == ["echo"]
    assert n1.ask("echo", "hi")["reply"]["content"] == "hi"
    assert first["id"] not in {a["id"] for a in n3.request("GET", "/api/v1/agents")}


def test_concurrent_deploys_of_one_name_on_every_node_leave_exactly_one(
    make_cluster: MakeCluster, echo: bytes
) -> None:
    cluster = make_cluster()
    nodes = cluster.start(3)
    body = {"wasm_module": base64.b64encode(echo).decode()}
    rounds = 8
    for index in range(rounds):
        name = f"race-{index}"
        outcomes = race(nodes, {"name": name, **body})
        winners = [n for n, o in outcomes.items() if isinstance(o, dict)]
        assert len(winners) == 1, f"{name}: {outcomes}"
        [winner] = winners
        for node_id, outcome in outcomes.items():
            if node_id != winner:
                assert isinstance(outcome, ApiError), outcome
                assert outcome.status == 409, outcome.body
                assert f"node {winner}" in outcome.body["details"], outcome.body
        cluster.wait_until(
            lambda name=name, winner=winner: all(n.agents().get(name) == winner for n in nodes),
            10,
            f"{name} on {winner} in every registry",
        )
    for node in nodes:
        hosted = [n for n in local_names(node) if n.startswith("race-")]
        registry = node.request("GET", "/api/v1/cluster/agents")["agents"]
        assert sorted(a["name"] for a in registry) == sorted(f"race-{i}" for i in range(rounds))
        assert all(a["node_id"] != node.node_id or a["name"] in hosted for a in registry)


def test_two_copies_after_a_pause_that_outlasted_the_failover_settle_on_one(
    make_cluster: MakeCluster, echo: bytes
) -> None:
    cluster = make_cluster(extra={"partition": {"detection_timeout": "1s"}})
    n1, n2, n3 = cluster.start(3)
    agent = n3.deploy("echo", echo)
    cluster.wait_until(
        lambda: n1.request("GET", f"/api/v1/agents/{agent['id']}")["replication"]["replicated"],
        20,
        "echo replicated",
    )
    n3.signal(signal.SIGSTOP)  # cut off: the others fail it over
    try:
        cluster.wait_until(
            lambda: "echo" in local_names(n1) + local_names(n2), 30, "echo taken over"
        )
        [taker] = [n for n in (n1, n2) if "echo" in local_names(n)]
        # the majority's copy holds the name: a new deploy of it is refused
        with pytest.raises(ApiError) as refused:
            (n1 if taker is n2 else n2).deploy("echo", echo)
        assert refused.value.status == 409
        assert f"node {taker.node_id}" in refused.value.body["details"]
    finally:
        n3.signal(signal.SIGCONT)  # heal: n3 still runs its old copy
    everyone = [n1, n2, n3]
    cluster.wait_converged(everyone, timeout=30)
    cluster.wait_until(
        lambda: (
            sum("echo" in local_names(n) for n in everyone) == 1
            and all(n.agents().get("echo") == taker.node_id for n in everyone)
        ),
        30,
        "one echo, on the taker, in every registry",
    )
    assert n3.ask("echo", "after")["reply"]["content"] == "after"
