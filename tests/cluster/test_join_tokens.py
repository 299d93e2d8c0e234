"""Join tokens with real ``caxton server start`` processes, over tcp and quic.

The clustering guide's commands with a token as the only addition: n1 started with
``--bootstrap`` and no certificates makes the cluster CA in its data directory, n2 and
n3 join with ``--token`` and form a mutual-TLS cluster that fails over. A reused, an
expired, a revoked and a foreign token are each refused, with one line on the joining
node and a log line naming it on the CA holder.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cluster_support import NodeProcess, ProcessCluster, run_caxton

pytestmark = pytest.mark.cluster

MakeCluster = Callable[..., ProcessCluster]


def create_token(node: NodeProcess, *options: str) -> str:
    made = run_caxton("cluster", "token", "create", "--data-dir", str(node.data_dir), *options)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("CXJ1.")
    return token


def refused(node: NodeProcess, token: str, seed: NodeProcess, timeout: float = 60) -> str:
    """Start ``node`` with ``token``; it must exit 1. Its last line."""
    node.start(join=[seed.address], token=token)
    assert node.process is not None
    assert node.process.wait(timeout) == 1
    return node.log().strip().splitlines()[-1]


@pytest.fixture(params=["tcp", "quic"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_the_guides_commands_with_a_token_form_an_mtls_cluster_that_fails_over(
    make_cluster: MakeCluster, transport: str, echo: bytes, tmp_path: Path
) -> None:
    cluster = make_cluster(transport=transport, auto_tls=True, gossip_key=False)
    n1, n2, n3 = (cluster.add(f"n{i}") for i in (1, 2, 3))
    n1.start(bootstrap=True)
    cluster.wait_until(n1.ready, 60, "n1 ready")
    assert (n1.data_dir / "ca" / "ca.key").stat().st_mode & 0o777 == 0o600
    token = create_token(n1, "--uses", "2", "--ttl", "10m")
    for node in (n2, n3):
        node.start(join=[n1.address], token=token)
    cluster.wait_converged([n1, n2, n3])
    assert token not in "".join(n.log() for n in (n1, n2, n3))  # never logged

    auth = n1.request("GET", "/api/v1/cluster/auth")
    assert auth["agree"], auth
    assert {n["mode"] for n in auth["nodes"]} == {"mtls"}
    assert len({n["ca_fingerprint"] for n in auth["nodes"]}) == 1
    listed = json.loads(run_caxton("cluster", "token", "list", "--data-dir", str(n1.data_dir),
                               "--json").stdout)  # fmt: skip
    assert [(t["used"], t["status"], sorted(t["nodes"])) for t in listed] == [
        (2, "used", ["n2", "n3"])
    ]
    assert all("secret" not in t for t in listed)

    # Failover between enrolled nodes: replicas are accepted (the peers authenticate).
    module = tmp_path / "echo.wasm"
    module.write_bytes(echo)
    deployed = run_caxton("deploy", str(module), "--name", "echo", "--target-node", "n2",
                      "--api-url", n1.api_url)  # fmt: skip
    assert deployed.returncode == 0, deployed.stderr
    cluster.wait_until(
        lambda: any(
            e["text"].startswith("Agent 'echo' replicated to ")
            for e in n2.request("GET", "/api/v1/cluster/events?limit=1000")["events"]
        ),
        20,
        "echo replicated",
    )
    n2.kill()
    cluster.wait_until(lambda: _answers(n1, "echo", "after"), 30, "echo answering from a survivor")

    # A restart needs no token: the certificate is in the data directory.
    n2.start(join=[n1.address])
    cluster.wait_converged([n1, n2, n3])


def _answers(node: NodeProcess, name: str, text: str) -> bool:
    try:
        return bool(node.ask(name, text, wait_ms=2000)["reply"]["content"] == text)
    except Exception:
        return False


def test_reused_expired_revoked_and_foreign_tokens_are_refused_on_both_sides(
    make_cluster: MakeCluster, transport: str
) -> None:
    cluster = make_cluster(transport=transport, auto_tls=True, gossip_key=False)
    n1 = cluster.add("n1")
    n1.start(bootstrap=True)
    cluster.wait_until(n1.ready, 60, "n1 ready")

    once = create_token(n1)
    n2 = cluster.add("n2")
    n2.start(join=[n1.address], token=once)
    cluster.wait_converged([n1, n2])
    line = refused(cluster.add("reuser"), once, n1)
    assert "was already used (1 of 1 uses, by n2)" in line, line
    assert "refused enrolment of node reuser from 127.0.0.1:" in n1.log()
    if transport == "quic":
        return  # the checks below are the CA holder's, the same whatever the transport

    short = create_token(n1, "--ttl", "1s")
    time.sleep(1.5)
    line = refused(cluster.add("late"), short, n1)
    assert f"join token {short.split('.')[2]} expired" in line, line

    revoked = create_token(n1)
    assert run_caxton("cluster", "token", "revoke", revoked.split(".")[2], "--data-dir",
                  str(n1.data_dir)).returncode == 0  # fmt: skip
    line = refused(cluster.add("unwelcome"), revoked, n1)
    assert "was revoked" in line, line

    # A token of another cluster's CA: n1 never made it.
    other_ca = cluster.base_dir / "other-ca"
    assert run_caxton("security", "init-ca", "--output", str(other_ca)).returncode == 0
    made = run_caxton("cluster", "token", "create", "--ca", str(other_ca))
    assert made.returncode == 0, made.stderr
    foreign = made.stdout.strip()
    line = refused(cluster.add("stranger"), foreign, n1)
    assert "is unknown to this CA" in line, line

    # Someone with a token cannot take a live member's identity.
    spare = create_token(n1)
    impostor = cluster.add("n2-again")
    impostor.node_id = "n2"
    line = refused(impostor, spare, n1)
    assert "node id 'n2' is a live member of the cluster already" in line, line

    log = n1.log()
    for node_id, reason in [
        ("late", "expired"),
        ("unwelcome", "revoked"),
        ("stranger", "unknown to this CA"),
    ]:
        assert any(
            f"refused enrolment of node {node_id} from 127.0.0.1:" in line and reason in line
            for line in log.splitlines()
        ), (node_id, log[-3000:])
    for token in (once, short, revoked, foreign, spare):
        assert token.split(".")[3] not in log  # secrets never logged
