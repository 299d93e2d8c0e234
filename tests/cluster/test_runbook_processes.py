"""The operational runbook's whole-cluster procedures on real node processes, each
command run as the runbook writes it: "Recovery from Backup" (``cluster stop --all``,
``backup restore --id --target``, ``cluster start --verify``) and "Data Corruption
Recovery" (``cluster rebuild --node N --from-peers``)."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from cluster_support import ProcessCluster, http_json, run_caxton

from caxton.testing.sandbox import build_example_agents

pytestmark = pytest.mark.cluster

#: agent name -> the node it is deployed on
AGENTS = {"c1": "n1", "c2": "n2", "c3": "n3"}


def caxton(*args: str) -> subprocess.CompletedProcess[str]:
    return run_caxton(*args, timeout=180)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


api = http_json


def tick(url: str, name: str) -> int:
    ask = {"receiver": name, "performative": "request", "content": "tick", "wait_ms": 8000}
    count: int = api(url, "/api/v1/messages", ask)["reply"]["content"]["count"]
    return count


def answers(url: str) -> bool:
    try:
        api(url, "/api/v1/health")
    except (urllib.error.URLError, OSError):
        return False
    return True


def wait_until(condition: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.fixture(scope="module")
def counter(tmp_path_factory: pytest.TempPathFactory) -> str:
    wasm = build_example_agents(tmp_path_factory.mktemp("agents"))["counter"]
    return base64.b64encode(wasm).decode()


def up(directory: Path) -> dict[str, str]:
    """``caxton cluster up`` of three nodes; node id -> API URL."""
    out = ok(
        caxton(
            "cluster", "up", "--data-dir", str(directory), "--api-port", "0",
            "--cluster-port", "0", "--fast", "--json",
        )
    )  # fmt: skip
    return {n["node_id"]: n["api_url"] for n in json.loads(out)["nodes"]}


def deploy(urls: dict[str, str], counter: str) -> None:
    for name, node in AGENTS.items():
        body = {"name": name, "wasm_module": counter, "target_node": node}
        assert api(urls["n1"], "/api/v1/agents", body)["node_id"] == node


def test_recovery_from_backup_as_the_runbook_writes_it(cluster_dir: Path, counter: str) -> None:
    urls = up(cluster_dir)
    deploy(urls, counter)
    for name in AGENTS:
        assert [tick(urls["n1"], name) for _ in range(3)] == [1, 2, 3]

    # Scheduled backup: each node's own, through its API.
    backups = {}
    for node_id, url in urls.items():
        made = ok(caxton("backup", "create", "--type", "full", "--json", "--api-url", url))
        backups[node_id] = json.loads(made)["id"]
    for name in AGENTS:  # state the restore must take back
        assert tick(urls["n1"], name) == 4

    # 1. Stop cluster (asked of n2: any node; it stops last).
    stopped = ok(caxton("cluster", "stop", "--all", "--api-url", urls["n2"]))
    lines = stopped.splitlines()
    assert [line.split(":")[0] for line in lines] == ["n1", "n3", "n2"], stopped
    assert all(": stopped (1 agents; queues drained)" in line for line in lines), stopped
    assert wait_until(lambda: not any(answers(url) for url in urls.values()), 15)
    for node_id in urls:  # no failover while stopping: each still hosted its own agent
        record = json.loads((cluster_dir / node_id / "data" / "cluster-stop.json").read_text())
        assert record["agents"] == [n for n, where in AGENTS.items() if where == node_id]
        assert record["members"] == ["n1", "n2", "n3"]

    # 2. Restore from backup, each node's into its data directory.
    for node_id, backup_id in backups.items():
        target = str(cluster_dir / node_id / "data")
        ok(caxton("backup", "restore", "--id", backup_id, "--target", target))

    # 3. Start cluster.
    started = ok(caxton("cluster", "start", "--verify", "--data-dir", str(cluster_dir)))
    assert "Cluster verified: 3 members alive (n1, n2, n3)" in started, started
    assert "3 agents" in started, started
    agents = api(urls["n1"], "/api/v1/cluster/agents")["agents"]
    assert {a["name"]: a["node_id"] for a in agents} == AGENTS
    for name in AGENTS:  # the state of the backup, not the later tick
        assert tick(urls["n1"], name) == 4

    # Asked again while it runs: one line, exit 1.
    again = caxton("cluster", "start", "--data-dir", str(cluster_dir))
    assert again.returncode == 1
    assert again.stderr.strip().count("\n") == 0
    assert "already up" in again.stderr
    ok(caxton("cluster", "down", "--data-dir", str(cluster_dir)))


def test_rebuild_from_peers_takes_back_lost_agents_and_never_a_stale_owner(
    tmp_path: Path, counter: str
) -> None:
    cluster = ProcessCluster(tmp_path / "rebuild")
    try:
        n1, n2, n3 = cluster.start(3)
        urls = {n.node_id: n.api_url for n in (n1, n2, n3)}
        deploy(urls, counter)
        for name in AGENTS:
            assert [tick(n1.api_url, name) for _ in range(3)] == [1, 2, 3]

        # n2's data directory is lost while the cluster is stopped (no failover, no drain).
        ok(caxton("cluster", "stop", "--all", "--api-url", n1.api_url))
        for node in (n1, n2, n3):
            assert node.process is not None
            assert node.process.wait(20) == 0
        shutil.rmtree(n2.data_dir)
        n1.start(bootstrap=True)
        assert wait_until(n1.ready, 60), n1.log()[-3000:]
        for node in (n2, n3):
            node.start(join=[n1.address])
        cluster.wait_converged([n1, n2, n3])
        assert "c2" not in n1.agents()  # it ran only in the lost directory

        # The runbook's "Data Corruption Recovery", steps 2-4.
        ok(caxton("cluster", "isolate", "--node", "n2", "--api-url", n1.api_url))
        report = ok(
            caxton("cluster", "rebuild", "--node", "n2", "--from-peers", "--api-url", n3.api_url)
        )
        assert "Node n2 rebuilt from its peers (n1, n3):" in report, report
        taken = re.search(r"recovered c2 \(generation (\d+), 1 keys, from n1, n3\)", report)
        assert taken is not None, report
        assert int(taken[1]) >= 2, report  # above the generation it had before
        ok(caxton("cluster", "verify", "--api-url", n1.api_url))
        ok(caxton("cluster", "rejoin", "--node", "n2", "--api-url", n1.api_url))
        assert tick(n1.api_url, "c2") == 4  # its state came back with it
        again = json.loads(
            ok(caxton("cluster", "rebuild", "--node", "n2", "--from-peers", "--json",
                      "--api-url", n1.api_url))
        )  # fmt: skip
        assert again["recovered"] == []
        assert [(s["name"], s["reason"]) for s in again["skipped"]] == [
            ("c2", "already runs on n2")
        ]

        # n3 dies with its disk: its agent fails over; rebuilt, n3 does not take it back.
        n3.kill()
        cluster.wait_until(lambda: n1.agents().get("c3") in ("n1", "n2"), 60, "c3 failed over")
        owner = n1.agents()["c3"]
        shutil.rmtree(n3.data_dir)
        n3.start(join=[n1.address])
        cluster.wait_converged([n1, n2, n3])
        rebuilt = json.loads(
            ok(caxton("cluster", "rebuild", "--node", "n3", "--from-peers", "--json",
                      "--api-url", n1.api_url))
        )  # fmt: skip
        assert "c3" not in [a["name"] for a in rebuilt["recovered"]], rebuilt
        assert rebuilt["replicas_resent"] >= 1, rebuilt  # what n3 held for the others
        assert n1.agents()["c3"] == owner
        assert tick(n1.api_url, "c3") == 4
        assert "c3" not in {a["name"] for a in n3.request("GET", "/api/v1/agents")}

        # One line and exit 1 for a node that is not a member.
        missing = caxton(
            "cluster", "rebuild", "--node", "n9", "--from-peers", "--api-url", n1.api_url
        )
        assert missing.returncode == 3  # the CLI's "not found"
        assert missing.stderr.count("\n") == 1
        assert "not a live member" in missing.stderr
    finally:
        cluster.close()
