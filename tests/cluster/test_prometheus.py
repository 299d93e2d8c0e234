"""A real Prometheus server scrapes a real 3-node cluster; promtool lints a clustered
node's output; every metric of it is in docs/observability.md, and every documented
one is exported."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_support import ROOT, NodeProcess, ProcessCluster, free_port

DOC = ROOT / "docs" / "observability.md"

#: The product documents' cluster metrics, and their types here.
SEED_CLUSTER_METRICS = {
    "caxton_cluster_nodes_total": "untyped",
    "caxton_cluster_nodes_alive": "gauge",
    "caxton_cluster_nodes_failed": "gauge",
    "caxton_cluster_agents_total": "untyped",
    "caxton_cluster_gossip_latency_ms": "gauge",
    "caxton_cluster_convergence_time_ms": "gauge",
    "caxton_gossip_convergence_time_seconds": "histogram",
    "caxton_remote_routing_latency_seconds": "histogram",
}


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing: .ci/run installs the Debian package prometheus")
        pytest.skip(f"needs {name} (Debian package prometheus)")
    return found


def metrics_text(node: NodeProcess) -> str:
    url = f"http://{node.host}:{node.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def types(text: str) -> dict[str, str]:
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, echo: bytes) -> Iterator[ProcessCluster]:
    """One 3-node cluster for the module, with an agent on n2 that n1 has asked."""
    cluster = ProcessCluster(tmp_path_factory.mktemp("prometheus-cluster"))
    try:
        yield from _started(cluster, echo)
    finally:
        cluster.close()


def _started(cluster: ProcessCluster, echo: bytes) -> Iterator[ProcessCluster]:
    n1, n2, _n3 = cluster.start(3)
    n2.deploy("echo", echo)
    nodes = list(cluster.nodes.values())
    cluster.wait_until(
        lambda: all(n.agents().get("echo") == "n2" for n in nodes), 15, "echo in every registry"
    )
    for i in range(5):  # remote routing: n1 -> n2's echo
        n1.ask("echo", i)
    yield cluster


def test_prometheus_scrapes_all_three_nodes(cluster: ProcessCluster, tmp_path: Path) -> None:
    prometheus = tool("prometheus")
    port = free_port(udp_too=False)
    targets = [f"127.0.0.1:{node.metrics_port}" for node in cluster.nodes.values()]
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n  - job_name: caxton\n    static_configs:\n"
        f"      - targets: {json.dumps(targets)}\n"
    )
    log = (tmp_path / "prometheus.log").open("wb")
    server = subprocess.Popen(
        [
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()

    def query(expr: str) -> list[dict[str, object]]:
        url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def node_ids(expr: str) -> set[str]:
        try:
            return {str(r["metric"]["node_id"]) for r in query(expr)}  # type: ignore[index]
        except OSError:
            return set()

    try:
        want = {"n1", "n2", "n3"}
        ok = "up{job='caxton'} == 1"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if node_ids(f"caxton_node_info * on(instance) group_left {ok}") == want:
                break
            time.sleep(0.5)
        joined = "* on(instance) group_left(node_id) caxton_node_info"
        assert node_ids(f"caxton_node_info * on(instance) group_left {ok}") == want
        assert node_ids(f"caxton_cluster_nodes_alive {joined} == 3") == want
        assert node_ids(f"process_resident_memory_bytes {joined}") == want
        # Histograms aggregate across nodes: the cluster's P99 of remote routing latency.
        p99 = query(
            "histogram_quantile(0.99, sum by (le) (caxton_remote_routing_latency_seconds_bucket))"
        )
        assert p99
        assert float(p99[0]["value"][1]) > 0  # type: ignore[index]
        assert query("sum(caxton_agents)")[0]["value"][1] == "1"  # type: ignore[index]
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_a_clustered_nodes_metrics_pass_promtool_and_are_all_documented(
    cluster: ProcessCluster,
) -> None:
    promtool = tool("promtool")
    n1 = cluster.nodes["n1"]
    text = metrics_text(n1)
    exported = types(text)
    for name, kind in SEED_CLUSTER_METRICS.items():
        assert exported.get(name) == kind, f"{name}: {exported.get(name)!r}, want {kind}"
    assert re.search(
        r'^caxton_transport_sent_bytes_total\{peer="127\.0\.0\.1:\d+"\} [1-9]', text, re.M
    )
    assert re.search(r"^caxton_remote_routing_latency_seconds_count [1-9]", text, re.M)

    # promtool: with the two millisecond gauges of the product documents (on by
    # default) those two are all it rejects; without them it is clean.
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    flagged = {line.split()[0] for line in (result.stdout + result.stderr).splitlines() if line}
    assert flagged == {"caxton_cluster_gossip_latency_ms", "caxton_cluster_convergence_time_ms"}
    strict = "\n".join(
        line for line in text.splitlines() if not re.search(r"caxton_cluster_\w+_ms\b", line)
    )
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=strict + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr

    documented = dict(
        re.findall(r"^\| `([a-z0-9_]+)` \| ([a-z]+) \|", DOC.read_text(), re.MULTILINE)
    )
    for name, kind in exported.items():
        if not name.startswith(("process_", "python_")):
            assert documented.get(name) == kind, f"docs/observability.md: `{name}` | {kind}"
    mtls_only = {"caxton_tls_certificate_expiry_timestamp_seconds"}
    assert {n for n in documented if n.startswith("caxton_")} - mtls_only <= set(exported)
