"""Cluster snapshots with three real node processes: ``caxton cluster backup`` to a
directory and to an S3-compatible server (moto, on loopback), the cluster wiped,
``caxton cluster restore``: every agent back on its node with its key/value state and its
queued messages, ``caxton cluster verify`` passing."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster_support import (
    NodeProcess,
    ProcessCluster,
    caxton_command,
    clean_environment,
    free_port,
)

from caxton.testing.sandbox import build_example_agents

pytestmark = pytest.mark.cluster

BUCKET = "caxton-backups"


@pytest.fixture(scope="module")
def counter_wasm(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """examples/agents/c/counter.c: counts what it receives in its KV store."""
    return build_example_agents(tmp_path_factory.mktemp("agents"))["counter"]


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A moto S3 server on a loopback port with one bucket: the AWS_* environment for it."""
    try:
        import boto3
        import moto.server  # noqa: F401
    except ImportError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"the S3 snapshot test needs moto[server] and boto3 ({exc})")
        pytest.skip(f"needs moto[server] and boto3: {exc}")
    port = free_port(udp_too=False)
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    try:
        import boto3

        client = boto3.client(
            "s3",
            endpoint_url=env["AWS_ENDPOINT_URL"],
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                client.create_bucket(Bucket=BUCKET)
                break
            except Exception:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.2)
        yield env
    finally:
        process.kill()
        process.wait(10)
        log.close()


def caxton(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*caxton_command(), *args],
        capture_output=True,
        text=True,
        env=clean_environment(env),
        timeout=120,
    )


def deploy(node: NodeProcess, name: str, wasm: bytes, target: str) -> None:
    body = {"name": name, "wasm_module": base64.b64encode(wasm).decode(), "target_node": target}
    node.request("POST", "/api/v1/agents", body)


def count(node: NodeProcess, name: str) -> int:
    return int(node.ask(name, "tick")["reply"]["content"]["count"])


def local(node: NodeProcess) -> dict[str, dict[str, Any]]:
    return {a["name"]: a for a in node.request("GET", "/api/v1/agents")}


def restart(cluster: ProcessCluster, nodes: list[NodeProcess]) -> None:
    first, *others = nodes
    for node in nodes:
        node.process = None  # killed ones would end the wait for n1 at once
    first.start(bootstrap=True)
    cluster.wait_until(first.ready, 60, "n1 ready")
    for node in others:
        node.start(join=[first.address])
    cluster.wait_converged(nodes)


def refuse_mismatches(dest: str, n1: NodeProcess, tmp_path: Path) -> None:
    """A node the snapshot does not know, or another cluster's keys: refused."""
    stranger = caxton(
        "cluster", "restore", "--from", dest, "--target", f"n9={tmp_path / 'n9'}",
        "--config", str(n1.config_path), "--dry-run",
    )  # fmt: skip
    assert stranger.returncode == 1
    assert "has no backup of node n9" in stranger.stderr
    other = tmp_path / "other.toml"
    other.write_text('[security.cluster]\ngossip_keys = ["' + "A" * 43 + '="]\n')
    foreign = caxton(
        "cluster", "restore", "--from", dest, "--target", f"n1={n1.data_dir}",
        "--config", str(other), "--dry-run",
    )  # fmt: skip
    assert foreign.returncode == 1
    assert "of another cluster" in foreign.stderr


@pytest.mark.parametrize("where", ["dir", "s3"])
def test_snapshot_wipe_restore(
    where: str,
    tmp_path: Path,
    counter_wasm: bytes,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    aws: dict[str, str] = {}
    if where == "s3":
        aws = request.getfixturevalue("s3_server")
        for key, value in aws.items():
            monkeypatch.setenv(key, value)  # the node processes inherit it
        dest = f"s3://{BUCKET}/snapshots/{tmp_path.name}"
    else:
        dest = str(tmp_path / "snapshots")
    cluster = ProcessCluster(
        tmp_path / "cluster",
        # The default membership timings: building an S3 client costs the coordinator a
        # CPU-bound second, which on a loaded test machine the fast test timings could
        # take for a failure (and fail its agents over) before the snapshot.
        cluster={},
        extra={"messaging": {"delivery_guarantee": "at-least-once"}},
    )
    try:
        nodes = cluster.start(3)
        n1, n2, _n3 = nodes
        for i, node in enumerate(nodes, 1):
            deploy(n1, f"c{i}", counter_wasm, node.node_id)
        for i in range(1, 4):
            for expected in range(1, i + 1):
                assert count(n1, f"c{i}") == expected
        # Two messages wait in c2's queue on n2 (suspended) when the snapshot is taken.
        c2 = local(n2)["c2"]
        n2.request("POST", f"/api/v1/agents/{c2['id']}/suspend")
        for text in ("queued-1", "queued-2"):
            n1.request(
                "POST",
                "/api/v1/messages",
                {"performative": "inform", "receiver": "c2", "content": text},
            )
        cluster.wait_until(
            lambda: n2.request("GET", "/api/v1/queues")["agents"].get("c2", {}).get("queued") == 2,
            15,
            "two messages queued for c2",
        )

        made = caxton("cluster", "backup", "--dest", dest, "--json", "--api-url", n1.api_url)
        assert made.returncode == 0, made.stderr
        snapshot = json.loads(made.stdout)
        assert sorted(snapshot["backups"]) == ["n1", "n2", "n3"]
        assert snapshot["failed"] == {}
        held = {n: b["agents"] for n, b in snapshot["backups"].items()}
        assert held == {"n1": 1, "n2": 1, "n3": 1}, [local(n) for n in nodes]

        # Wipe the cluster: every process killed, every data directory gone.
        cluster.close()
        for node in nodes:
            shutil.rmtree(node.data_dir)

        if where == "dir":
            refuse_mismatches(dest, n1, tmp_path)

        targets = [arg for n in nodes for arg in ("--target", f"{n.node_id}={n.data_dir}")]
        restored = caxton(
            "cluster", "restore", "--from", dest, *targets,
            "--config", str(n1.config_path), "--json", env=aws,
        )  # fmt: skip
        assert restored.returncode == 0, restored.stderr
        plan = json.loads(restored.stdout)
        assert [(n["node_id"], n["agents"]) for n in plan["nodes"]] == [
            ("n1", 1),
            ("n2", 1),
            ("n3", 1),
        ]

        restart(cluster, nodes)
        cluster.wait_until(
            lambda: n1.agents() == {"c1": "n1", "c2": "n2", "c3": "n3"},
            30,
            "every agent back on its node",
        )
        assert {name: a["state"] for name, a in local(n2).items()} == {"c2": "suspended"}
        assert count(n1, "c1") == 2
        assert count(n1, "c3") == 4
        n2.request("POST", f"/api/v1/agents/{c2['id']}/resume")
        # c2 had 2 ticks, then handles its 2 queued messages, then this one.
        assert count(n1, "c2") == 5
        verified = caxton("cluster", "verify", "--api-url", n1.api_url)
        assert verified.returncode == 0, verified.stdout + verified.stderr
    finally:
        cluster.close()
