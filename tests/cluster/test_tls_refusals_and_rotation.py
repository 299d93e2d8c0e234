"""TLS while the nodes run, with real ``caxton server start`` processes over tcp and quic.

- A node whose certificate comes from another CA is refused: the refusing node logs
  which peer and why, the refused one logs why its join failed, and ``cluster
  verify-auth`` on either says it.
- Certificates and the CA are rotated without a restart and without downtime: messages
  keep crossing nodes while every node first trusts both CAs (its ``ca.crt`` a bundle),
  gets a certificate of the new CA (``security rotate-certs``), then trusts only the new
  CA; the nodes reload the files as they change.
"""

from __future__ import annotations

import datetime
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cluster_support import (
    ApiError,
    AskLoop,
    NodeProcess,
    ProcessCluster,
    issue_certificates,
    run_caxton,
)

from caxton.security.pki import issue_node_cert

pytestmark = pytest.mark.cluster

MakeCluster = Callable[..., ProcessCluster]


@pytest.fixture(params=["tcp", "quic"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def auth(node: NodeProcess) -> dict:
    try:
        return node.request("GET", "/api/v1/cluster/auth", timeout=10)  # type: ignore[no-any-return]
    except ApiError as exc:
        return {"agree": False, "error": exc.body}


def test_a_node_of_another_ca_is_refused_with_the_reason_on_both_sides(
    make_cluster: MakeCluster, transport: str, tmp_path: Path
) -> None:
    cluster = make_cluster(transport=transport, auto_tls=True, gossip_key=False)
    n1 = cluster.add("n1")
    n1.start(bootstrap=True)
    cluster.wait_until(n1.ready, 60, "n1 ready")

    others = issue_certificates(tmp_path / "other", ["stranger"])
    foreign = make_cluster(transport=transport, mtls_dir=others, gossip_key=False)
    stranger = foreign.add("stranger")
    stranger.start(join=[n1.address])  # it starts, alone and read-only, and keeps trying

    # The stranger refuses n1's certificate first (it does not trust n1's CA) and n1
    # hears why: over quic from the handshake's close, over tcp from the alert that the
    # stranger sends by a handshake of its own (asyncio's TLS layer drops it).
    cluster.wait_until(
        lambda: "wrong CA" in stranger.log() and "wrong CA" in n1.log(), 60, "refusals logged"
    )
    refused = [line for line in stranger.log().splitlines() if "wrong CA" in line]
    assert any(f"refused {n1.address}: its certificate is not signed" in line
               for line in refused), refused  # fmt: skip
    told = [line for line in n1.log().splitlines() if "wrong CA" in line]
    assert any("127.0.0.1:" in line and " refused this node: " in line for line in told), told
    cluster.wait_until(
        lambda: any(
            "no seed answered" in line and "wrong CA" in line
            for line in stranger.log().splitlines()
        ),
        60,
        "the join failure says why",
    )
    assert "stranger" not in n1.members()

    for node in (n1, stranger):
        verdict = auth(node)
        assert not verdict["agree"], verdict
        [own] = [n for n in verdict["nodes"] if n["node_id"] == node.node_id]
        assert any("wrong CA" in problem for problem in own["problems"]), own
    shown = run_caxton("security", "verify-auth", "--api-url", stranger.api_url)
    assert shown.returncode == 1
    assert f"refused {n1.address}: " in shown.stdout, shown.stdout
    assert "wrong CA" in shown.stdout, shown.stdout
    assert "MISMATCH" in shown.stdout, shown.stdout
    shown = run_caxton("cluster", "verify-auth", "--api-url", n1.api_url)
    assert shown.returncode == 1
    assert "refused by 127.0.0.1:" in shown.stdout, shown.stdout
    assert "wrong CA" in shown.stdout, shown.stdout


def test_an_expired_certificate_and_another_nodes_are_refused_on_both_sides(
    make_cluster: MakeCluster, transport: str, tmp_path: Path
) -> None:
    """Two nodes that trust the cluster's CA: 'late' shows a certificate of that CA that
    has expired, 'impostor' shows n2's (valid, but for another node id)."""
    pki = issue_certificates(tmp_path / "pki", ["n1", "n2"])
    start = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=400)
    issue_node_cert(pki / "ca", "late", pki / "late", days=30, valid_from=start,
                    hosts=["127.0.0.1"])  # fmt: skip
    shutil.copytree(pki / "n2", pki / "impostor")
    cluster = make_cluster(transport=transport, mtls_dir=pki, gossip_key=False)
    n1 = cluster.add("n1")
    n1.start(bootstrap=True)
    cluster.wait_until(n1.ready, 60, "n1 ready")
    late, impostor = cluster.add("late"), cluster.add("impostor")
    for node in (late, impostor):
        node.start(join=[n1.address])

    said = {  # node: (what n1 says of it, what it says of n1)
        late: ("expired", "expired"),
        impostor: ("claims node id 'impostor' but its certificate is for 'n2'",) * 2,
    }

    def lines(node: NodeProcess, words: str) -> list[str]:
        return [line for line in node.log().splitlines() if words in line]

    def both_told() -> bool:
        return all(
            any("refused 127.0.0.1:" in line for line in lines(n1, of_it))
            and any(f"{n1.address} refused this node: " in line for line in lines(node, of_n1))
            for node, (of_it, of_n1) in said.items()
        )

    cluster.wait_until(both_told, 60, "both sides of each refusal logged")
    assert set(n1.members()) == {"n1"}
    shown = run_caxton("cluster", "verify-auth", "--api-url", n1.api_url)
    assert shown.returncode == 1
    for of_it, _ in said.values():
        assert of_it in shown.stdout, shown.stdout


def _bundle(*cas: Path) -> bytes:
    return b"".join(ca.read_bytes() for ca in cas)


def _replace(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".new")
    temporary.write_bytes(data)
    temporary.replace(path)


def test_certificates_and_the_ca_rotate_without_a_restart_or_downtime(
    make_cluster: MakeCluster, transport: str, echo: bytes, tmp_path: Path
) -> None:
    pki = issue_certificates(tmp_path / "pki", ["n1", "n2", "n3"])
    cluster = make_cluster(transport=transport, mtls_dir=pki, gossip_key=False)
    nodes = cluster.start(3)
    n1, n2, n3 = nodes
    for node in (n2, n3):
        node.request("POST", "/api/v1/agents", {"name": f"echo-{node.node_id}",
                     "wasm_module": __import__("base64").b64encode(echo).decode()})  # fmt: skip
    cluster.wait_until(lambda: {"echo-n2", "echo-n3"} <= set(n1.agents()), 20, "agents known on n1")

    traffic = AskLoop([(n1, "echo-n2"), (n1, "echo-n3")]).start()  # all along

    def reloaded(count: int) -> bool:
        return all(n.log().count("reloaded its TLS material") >= count for n in nodes)

    old_ca = pki / "ca" / "ca.crt"
    new = tmp_path / "new-ca"
    assert run_caxton("security", "init-ca", "--output", str(new)).returncode == 0
    # 1. Every node trusts both CAs.
    for node in nodes:
        _replace(pki / node.node_id / "ca.crt", _bundle(old_ca, new / "ca.crt"))
    cluster.wait_until(lambda: reloaded(1), 30, "bundles reloaded")
    # 2. Every node gets a certificate of the new CA, in place.
    rotated = run_caxton("security", "rotate-certs", "--ca-cert", str(new / "ca.crt"), "--ca-key",
                     str(new / "ca.key"), *(f"--dir={pki / n.node_id}" for n in nodes))  # fmt: skip
    assert rotated.returncode == 0, rotated.stderr
    cluster.wait_until(lambda: reloaded(2), 30, "new certificates reloaded")
    # 3. Every node trusts only the new CA.
    for node in nodes:
        _replace(pki / node.node_id / "ca.crt", (new / "ca.crt").read_bytes())
    cluster.wait_until(lambda: reloaded(3), 30, "old CA dropped")
    n2.signal(signal.SIGHUP)  # an explicit reload, as systemctl reload sends
    cluster.wait_until(
        lambda: "reloaded its TLS material (SIGHUP)" in n2.log(), 10, "reload on SIGHUP"
    )

    # New connections use the new material: a restarted node rejoins through them.
    n3.stop()
    n3.start(join=[n1.address])
    cluster.wait_converged(nodes, 60)
    time.sleep(1.0)
    traffic.stop()
    verdict = auth(n1)
    assert verdict["agree"], verdict
    issuers = {n["certificate"]["issuer_fingerprint"] for n in verdict["nodes"]}
    assert issuers == {n["ca_fingerprints"][0] for n in verdict["nodes"]}
    assert len(issuers) == 1
    assert traffic.sent > 10
    # n3's own restart is the only gap its agent may show; nothing else failed.
    failures = traffic.failures
    assert [f for f in failures if not f.startswith("echo-n3")] == [], failures[:5]
