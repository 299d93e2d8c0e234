"""Real clusters: ``caxton server start`` processes on loopback, over tcp and quic.

Each test starts its own three nodes (n1 bootstraps, n2 and n3 join it) with test
timings (failures found in about two seconds; the pause test uses the defaults) and
drives them through their REST APIs and the ``caxton`` CLI.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cluster_support import (
    FAST,
    ApiError,
    NodeProcess,
    ProcessCluster,
    caxton_command,
    clean_environment,
    issue_certificates,
)

pytestmark = pytest.mark.cluster

MakeCluster = Callable[..., ProcessCluster]


def cli(node: NodeProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*caxton_command(), *args, "--api-url", node.api_url],
        capture_output=True,
        text=True,
        env=clean_environment(),
        timeout=60,
    )


def event_kinds(node: NodeProcess, about: str) -> list[str]:
    events = node.request("GET", "/api/v1/cluster/events?limit=1000")["events"]
    return [e["kind"] for e in events if e.get("node_id") == about]


def wait_for_agent(cluster: ProcessCluster, name: str, where: str) -> None:
    nodes = list(cluster.nodes.values())
    cluster.wait_until(
        lambda: all(n.agents().get(name) == where for n in nodes if n.running),
        15,
        f"{name} on {where} in every registry",
    )


@pytest.mark.parametrize("transport", ["tcp", "quic"])
def test_nodes_form_a_cluster_and_route_by_name(
    make_cluster: MakeCluster, echo: bytes, transport: str
) -> None:
    cluster = make_cluster(transport=transport)
    n1, n2, n3 = cluster.start(3)
    n2.deploy("echo", echo)
    wait_for_agent(cluster, "echo", "n2")

    # An external client on n1 waits for the reply of an agent on n2.
    result = n1.ask("echo", {"hello": "from n1"})
    assert result["status"] == "replied"
    assert result["reply"]["sender"] == "echo"
    assert result["reply"]["content"] == {"hello": "from n1"}
    assert result["reply"]["in_reply_to"] == result["message_id"]
    for i in range(20):
        assert n3.ask("echo", i)["reply"]["content"] == i

    with pytest.raises(ApiError) as info:
        n3.ask("nobody", "hi")
    assert info.value.status == 404
    assert "Agent not found: nobody" in json.dumps(info.value.body)

    members = cli(n3, "cluster", "members")
    assert members.returncode == 0, members.stderr
    lines = members.stdout.splitlines()
    assert lines[0].split() == [
        "NODE-ID",
        "STATUS",
        "ADDRESS",
        "AGENTS",
        "CPU",
        "MEMORY",
        "VERSION",
    ]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == {"n1", "n2", "n3"}
    assert all(row[1] == "alive" for row in rows.values())
    assert rows["n2"][2] == n2.address

    by_node = cli(n1, "agents", "list", "--by-node", "--json")
    assert by_node.returncode == 0, by_node.stderr
    assert json.loads(by_node.stdout) == {"n2": {"running": 1}}

    status = cli(n1, "cluster", "status")
    assert status.returncode == 0, status.stderr
    assert "Status: HEALTHY (majority partition)" in status.stdout
    assert "Operations: READ-WRITE" in status.stdout
    assert "Nodes: 3/3 active" in status.stdout


def test_a_killed_node_is_marked_failed_and_its_agents_disappear(
    make_cluster: MakeCluster, echo: bytes
) -> None:
    cluster = make_cluster(cluster={**FAST, "failover": False})  # failover: test_failover_*
    n1, n2, n3 = cluster.start(3)
    n3.deploy("echo", echo)
    wait_for_agent(cluster, "echo", "n3")

    # --history: a watcher that connects late (a loaded machine) still shows the events.
    watch = subprocess.Popen(
        [*caxton_command(), "cluster", "watch", "--history", "100", "--api-url", n1.api_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_environment(),
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(watch.stdout.readline, "")))  # type: ignore[union-attr]
    reader.start()
    expected = [
        "[WARNING] Node n3 detected as failed",
        "[INFO] 1 agents of n3 dropped from the registry",
    ]
    try:
        n3.kill()  # SIGKILL
        cluster.wait_until(
            lambda: n1.members().get("n3") == "failed" and n2.members().get("n3") == "failed",
            30,
            "n3 failed on n1 and n2",
        )
        cluster.wait_until(
            lambda: all(any(e in line for line in lines) for e in expected),
            30,
            "cluster watch to show n3's failure",
        )
    finally:
        watch.terminate()
        watch.communicate(timeout=10)
        reader.join(timeout=10)
    assert "echo" not in n1.agents()
    assert "echo" not in n2.agents()
    with pytest.raises(ApiError) as info:
        n1.ask("echo", "anyone?")
    assert info.value.status == 404
    assert "failed" in event_kinds(n1, "n3")
    assert "left" not in event_kinds(n1, "n3")

    # Active means a lease round trip within partition.detection_timeout: n3 drops out
    # of it that long after its last answer, which may be after SWIM marked it failed.
    cluster.wait_until(
        lambda: "Nodes: 2/3 active" in cli(n2, "cluster", "status").stdout,
        30,
        "n2's status to count 2 of 3 nodes active",
    )

    refused = cli(n1, "cluster", "remove", "--node", "n3")
    assert refused.returncode != 0
    assert "--force" in refused.stderr
    removed = cli(n1, "cluster", "remove", "--node", "n3", "--force")
    assert removed.returncode == 0, removed.stderr
    cluster.wait_until(lambda: n2.members().get("n3") == "left", 10, "n3 removed everywhere")


def test_a_short_pause_is_not_a_failure(make_cluster: MakeCluster) -> None:
    # Default timings: the shortest suspicion timeout is 4 s; the pause is 1.5 s.
    cluster = make_cluster(cluster={})
    n1, n2, n3 = cluster.start(3)
    n3.signal(signal.SIGSTOP)
    try:
        time.sleep(1.5)
    finally:
        n3.signal(signal.SIGCONT)
    cluster.wait_converged([n1, n2, n3], timeout=15)
    time.sleep(1.0)  # a failure declared just before resuming would be gossiped by now
    for node in (n1, n2):
        assert "failed" not in event_kinds(node, "n3"), node.node_id
    assert set(n1.members().values()) == {"alive"}


def test_a_restarted_node_rejoins_with_its_agents(make_cluster: MakeCluster, echo: bytes) -> None:
    cluster = make_cluster(cluster={**FAST, "failover": False})  # failover: test_failover_*
    n1, n2, n3 = cluster.start(3)
    n3.deploy("echo", echo)
    wait_for_agent(cluster, "echo", "n3")
    n3.kill()
    cluster.wait_until(lambda: n1.members().get("n3") == "failed", 30, "n3 failed on n1")
    cluster.wait_until(lambda: "echo" not in n2.agents(), 10, "echo dropped on n2")

    n3.start(join=[n1.address])  # same id, ports and data: dead-node reclaim
    cluster.wait_converged([n1, n2, n3], timeout=30)
    wait_for_agent(cluster, "echo", "n3")  # restored from n3's store, announced again
    assert n1.ask("echo", "back?")["reply"]["content"] == "back?"
    assert event_kinds(n2, "n3").count("joined") >= 2


def test_a_graceful_leave_is_not_a_failure(make_cluster: MakeCluster, echo: bytes) -> None:
    cluster = make_cluster()
    n1, n2, n3 = cluster.start(3)
    n3.deploy("echo", echo)
    wait_for_agent(cluster, "echo", "n3")
    left = cli(n3, "cluster", "leave", "--drain-timeout", "2s")
    assert left.returncode == 0, left.stderr
    assert "Node n3 left the cluster" in left.stdout
    assert n3.process is not None
    assert n3.process.wait(20) == 0
    cluster.wait_until(
        lambda: n1.members().get("n3") == "left" and n2.members().get("n3") == "left",
        10,
        "n3 left on n1 and n2",
    )
    time.sleep(1.0)  # longer than the suspicion timeout of the test timings
    for node in (n1, n2):
        kinds = event_kinds(node, "n3")
        assert "left" in kinds, (node.node_id, kinds)
        assert "failed" not in kinds, (node.node_id, kinds)
        # The leave drained n3 first: echo moved live to a survivor, it did not fail over.
        assert node.agents().get("echo") in ("n1", "n2")
    assert "Node n3: 1 agents moved" in left.stdout, left.stdout
    assert f"  echo -> {n1.agents()['echo']}" in left.stdout, left.stdout
    assert n1.ask("echo", "still here")["reply"]["content"] == "still here"
    status = cli(n1, "cluster", "status")
    assert "Nodes: 2/2 active" in status.stdout


def test_an_mtls_cluster_routes_and_its_keys_agree(
    make_cluster: MakeCluster, echo: bytes, tmp_path: Path
) -> None:
    certs = issue_certificates(tmp_path / "pki", ["n1", "n2", "n3"])
    cluster = make_cluster(mtls_dir=certs, gossip_key=False)
    n1, n2, n3 = cluster.start(3)
    n1.deploy("echo", echo)
    wait_for_agent(cluster, "echo", "n1")
    assert n3.ask("echo", "over mTLS")["reply"]["content"] == "over mTLS"

    verified = cli(n2, "cluster", "verify-auth", "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    report = json.loads(verified.stdout)
    assert report["agree"] is True
    assert {n["node_id"] for n in report["nodes"]} == {"n1", "n2", "n3"}
    assert len({n["ca_fingerprint"] for n in report["nodes"]}) == 1
    assert all(n["certificate"]["node_id"] == n["node_id"] for n in report["nodes"])

    ping = cli(n1, "cluster", "ping", "n3")
    assert ping.returncode == 0, ping.stderr
    assert ping.stdout.startswith(f"n3 ({n3.address}, alive): gossip ")

    # n1 asks n2 to leave: n2 drains, announces it and stops.
    left = cli(n1, "cluster", "leave", "--node", "n2", "--drain-timeout", "0s")
    assert left.returncode == 0, left.stderr
    assert "Node n2 leaving the cluster" in left.stdout
    assert n2.process is not None
    assert n2.process.wait(20) == 0
    cluster.wait_until(lambda: n3.members().get("n2") == "left", 10, "n2 left on n3")


def test_a_node_cut_off_from_the_majority_is_degraded_until_it_heals(
    make_cluster: MakeCluster,
) -> None:
    cluster = make_cluster()
    n1, n2, n3 = cluster.start(3)

    def status() -> dict[str, object]:
        result: dict[str, object] = n1.request("GET", "/api/v1/cluster/status")
        return result

    def modes() -> int:
        kinds = [e["kind"] for e in n1.request("GET", "/api/v1/cluster/events")["events"]]
        return kinds.count("mode")

    # (Forming the cluster, n1 was briefly read-only between n2 joining and answering.)
    before = modes()
    # n2 and n3 stop answering for longer than the suspicion timeout: n1 is alone.
    n2.signal(signal.SIGSTOP)
    n3.signal(signal.SIGSTOP)
    try:
        cluster.wait_until(lambda: status()["status"] == "DEGRADED", 30, "n1 degraded")
        degraded = cli(n1, "cluster", "status")
        assert "Status: DEGRADED (minority partition)" in degraded.stdout
        assert "Operations: READ-ONLY" in degraded.stdout
        assert "Nodes: 1/3 active" in degraded.stdout
    finally:
        n2.signal(signal.SIGCONT)
        n3.signal(signal.SIGCONT)
    cluster.wait_converged([n1, n2, n3], timeout=30)  # the failed members refute, rejoin
    cluster.wait_until(lambda: status()["status"] == "HEALTHY", 10, "n1 healthy again")
    # Read-only, then read-write again; on a loaded machine a late heartbeat answer can
    # add a brief read-only spell around the cut (the lease doing its job), so at least 2.
    assert modes() - before >= 2
