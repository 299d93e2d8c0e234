"""``caxton cluster up`` / ``down``: a local mTLS cluster in one command, as real processes."""

from __future__ import annotations

import base64
import json
import os
import signal
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from cluster_support import echo_wasm, http_json, run_caxton

pytestmark = pytest.mark.cluster


def caxton(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return run_caxton(*args, timeout=timeout)


api = http_json


def up(directory: Path, *args: str) -> list[dict[str, Any]]:
    result = caxton(
        "cluster", "up", "--data-dir", str(directory), "--api-port", "0",
        "--cluster-port", "0", "--fast", "--json", *args,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    nodes: list[dict[str, Any]] = json.loads(result.stdout)["nodes"]
    return nodes


def test_up_starts_an_mtls_cluster_that_routes_and_fails_over(cluster_dir: Path) -> None:
    nodes = up(cluster_dir)
    assert [n["node_id"] for n in nodes] == ["n1", "n2", "n3"]
    n1 = nodes[0]["api_url"]
    for node in nodes:  # every node sees all three alive
        members = api(node["api_url"], "/api/v1/cluster/members")["members"]
        assert {(m["node_id"], m["status"]) for m in members} == {
            ("n1", "alive"), ("n2", "alive"), ("n3", "alive"),
        }  # fmt: skip
    # Node-to-node traffic is mutual TLS with certificates of the cluster's own CA.
    assert "mtls" in json.dumps(api(n1, "/api/v1/cluster/auth")).lower()
    ca_key = cluster_dir / "ca" / "ca.key"
    assert stat.S_IMODE(ca_key.stat().st_mode) == 0o600
    assert stat.S_IMODE((cluster_dir / "n1" / "config.toml").stat().st_mode) == 0o600

    wasm = base64.b64encode(echo_wasm()).decode()
    deployed = api(n1, "/api/v1/agents", {"name": "echo", "wasm_module": wasm, "target_node": "n2"})
    assert deployed["node_id"] == "n2"
    ask = {"receiver": "echo", "performative": "request", "content": "hi", "wait_ms": 5000}
    assert api(n1, "/api/v1/messages", ask)["reply"]["content"] == "hi"

    # A survivor can restart echo only once it holds echo's replica: wait until both
    # holders confirmed theirs (the agent's detail, fetched by n1 from n2, says so).
    deadline = time.monotonic() + 30
    while True:
        replication = api(n1, f"/api/v1/agents/{deployed['id']}")["replication"]
        if replication["replicated"] and sorted(replication["holders"]) == ["n1", "n3"]:
            break
        assert time.monotonic() < deadline, f"echo was not replicated to two holders: {replication}"
        time.sleep(0.1)
    assert replication["generation"] == 1
    assert replication["durability"] == "quorum"
    shown = caxton("agent", "get", "echo", "--api-url", n1)
    assert "Replicas:" in shown.stdout, shown.stderr
    assert "(confirmed)" in shown.stdout
    os.kill(nodes[1]["pid"], signal.SIGKILL)  # n2 dies; a survivor restarts echo
    deadline = time.monotonic() + 60
    while True:
        try:
            if api(n1, "/api/v1/messages", ask)["reply"]["content"] == "hi":
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, "echo did not come back within 60 s"
        time.sleep(0.5)

    down = caxton("cluster", "down", "--data-dir", str(cluster_dir), "--json")
    assert down.returncode == 0, down.stderr
    assert json.loads(down.stdout)["nodes"] == {
        "n1": "stopped", "n2": "was not running", "n3": "stopped",
    }  # fmt: skip
    for node in nodes:
        assert not Path(f"/proc/{node['pid']}").exists() or _zombie(node["pid"])
    assert not (cluster_dir / "cluster.json").exists()


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


def test_a_second_up_is_refused_and_down_twice_says_so(cluster_dir: Path) -> None:
    up(cluster_dir, "--nodes", "1")
    again = caxton("cluster", "up", "--data-dir", str(cluster_dir), "--nodes", "1")
    assert again.returncode == 1
    assert again.stderr.strip().splitlines() == [
        f"Error: a local cluster is already up in {cluster_dir} (n1); "
        f"stop it with: caxton cluster down --data-dir {cluster_dir}"
    ]
    assert caxton("cluster", "down", "--data-dir", str(cluster_dir)).stdout == "n1: stopped\n"
    twice = caxton("cluster", "down", "--data-dir", str(cluster_dir))
    assert twice.returncode == 1
    assert twice.stderr.strip() == f"Error: no local cluster in {cluster_dir} (no cluster.json)"


def test_up_again_reuses_the_ca_and_the_nodes_data(cluster_dir: Path) -> None:
    first = up(cluster_dir, "--nodes", "1")
    ca = (cluster_dir / "ca" / "ca.crt").read_bytes()
    api(first[0]["api_url"], "/api/v1/agents",
        {"name": "keeper", "wasm_module": base64.b64encode(echo_wasm()).decode()})  # fmt: skip
    assert caxton("cluster", "down", "--data-dir", str(cluster_dir)).returncode == 0
    second = up(cluster_dir, "--nodes", "1")
    assert (cluster_dir / "ca" / "ca.crt").read_bytes() == ca
    names = [a["name"] for a in api(second[0]["api_url"], "/api/v1/agents")]
    assert names == ["keeper"]


def test_up_with_a_missing_transport_is_one_line(cluster_dir: Path) -> None:
    result = caxton("cluster", "up", "--data-dir", str(cluster_dir), "--transport", "carrier")
    assert result.returncode == 1
    assert result.stderr.startswith("Error: transport driver 'carrier' is not installed")
    assert "Traceback" not in result.stderr
