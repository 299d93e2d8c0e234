"""Join tokens with real ``caxton server start`` processes, over tcp and quic.

The clustering guide's commands with a token as the only addition: n1 started with
``--bootstrap`` and no certificates makes the cluster CA in its data directory, n2 and
n3 join with ``--token`` and form a mutual-TLS cluster that fails over. A reused and an
expired token are each refused, with one line on the joining node and a log line naming
it on the CA holder (revoked and foreign tokens and a stolen node id: test_enrolment.py).
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


def test_reused_and_expired_tokens_are_refused_on_both_sides(
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
    short = create_token(n1, "--ttl", "1s")
    time.sleep(1.5)  # expired now

    attempts = {  # name: (token, what both sides say)
        "reuser": (once, "was already used (1 of 1 uses, by n2)"),
        "late": (short, f"join token {short.split('.')[2]} expired"),
    }
    joiners = {name: cluster.add(name) for name in attempts}
    for name, node in joiners.items():  # both at once: each start is a process start
        node.start(join=[n1.address], token=attempts[name][0])
    for name, node in joiners.items():
        assert node.process is not None
        assert node.process.wait(60) == 1, name
        line = node.log().strip().splitlines()[-1]
        assert f"Error: enrolment through {n1.address} refused: " in line, (name, line)
        assert attempts[name][1] in line, (name, line)
    log = n1.log()
    for name, (_, reason) in attempts.items():
        assert any(
            f"refused enrolment of node {name} from 127.0.0.1:" in line and reason in line
            for line in log.splitlines()
        ), (name, log[-3000:])
    for token in (once, short):
        assert token.split(".")[3] not in log  # secrets never logged
