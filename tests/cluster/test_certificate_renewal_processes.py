"""Certificates renewed while the nodes run, with real ``caxton server start`` processes.

Three nodes over tcp, enrolled with a join token, whose certificates live 30 s and are
renewed once less than 20 s is left (``security.cluster.enrolment``): n1, the CA holder,
renews its own; n2 and n3 renew through n1 over the enrolment exchange. Messages cross
nodes all along; every node renews and reloads twice without a restart, the first
certificates expire, and not one message fails.
"""

from __future__ import annotations

import base64
import datetime
from collections.abc import Callable

import pytest
from cluster_support import AskLoop, NodeProcess, ProcessCluster, run_caxton

pytestmark = pytest.mark.cluster

MakeCluster = Callable[..., ProcessCluster]

LIFETIME = datetime.timedelta(seconds=30)
SHORT_LIVED = {"security.cluster.enrolment": {"cert_lifetime": "30s", "renew_before": "20s"}}


def renewals(node: NodeProcess) -> int:
    return sum(
        "reloaded its TLS material (certificate renewed" in line for line in node.log().splitlines()
    )


def test_certificates_are_renewed_and_reloaded_while_messages_flow(
    make_cluster: MakeCluster, echo: bytes
) -> None:
    cluster = make_cluster(transport="tcp", auto_tls=True, gossip_key=False, extra=SHORT_LIVED)
    n1, n2, n3 = (cluster.add(f"n{i}") for i in (1, 2, 3))
    n1.start(bootstrap=True)
    cluster.wait_until(n1.ready, 60, "n1 ready")
    made = run_caxton("cluster", "token", "create", "--data-dir", str(n1.data_dir),
                      "--uses", "2")  # fmt: skip
    assert made.returncode == 0, made.stderr
    for node in (n2, n3):
        node.start(join=[n1.address], token=made.stdout.strip())
    nodes = [n1, n2, n3]
    cluster.wait_converged(nodes)
    first_expiry = max(
        datetime.datetime.fromisoformat(n["certificate"]["not_after"])
        for n in n1.request("GET", "/api/v1/cluster/auth")["nodes"]
    )
    pids = {n.node_id: n.process.pid for n in nodes if n.process is not None}
    module = base64.b64encode(echo).decode()
    for node in (n2, n3):
        node.request(
            "POST", "/api/v1/agents", {"name": f"echo-{node.node_id}", "wasm_module": module}
        )
    cluster.wait_until(
        lambda: {"echo-n2", "echo-n3"} <= set(n1.agents()) and "echo-n3" in n2.agents(),
        20,
        "agents known",
    )

    traffic = AskLoop([(n1, "echo-n2"), (n1, "echo-n3"), (n2, "echo-n3")]).start()
    try:
        cluster.wait_until(
            lambda: (
                all(renewals(n) >= 2 for n in nodes)
                and datetime.datetime.now(datetime.timezone.utc) > first_expiry
            ),
            LIFETIME.total_seconds() * 4,
            "every node renewed twice, past the first certificates' expiry",
        )
    finally:
        traffic.stop()

    assert traffic.failures == [], traffic.failures[:5]
    assert traffic.sent > 10
    assert {n.node_id: n.process.pid for n in nodes if n.process is not None} == pids
    assert any("renewed by this node's CA" in line for line in n1.log().splitlines())
    for node in (n2, n3):
        assert f"certificate renewed through {n1.address}" in node.log()
    verdict = n1.request("GET", "/api/v1/cluster/auth")
    assert verdict["agree"], verdict
    for described in verdict["nodes"]:  # each presents a certificate newer than its first
        assert datetime.datetime.fromisoformat(described["certificate"]["not_after"]) > first_expiry
    cluster.wait_converged(nodes, 10)
