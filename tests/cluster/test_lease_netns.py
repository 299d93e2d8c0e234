"""One-way partitions with real processes: three ``caxton server start`` processes, each
in its own network namespace on one bridge; an nftables rule drops what the bridge
forwards from n3 to the others (n3 receives but cannot send), or to n3 from them (n3
sends but cannot receive). Either way n3 is read-only, and refuses deploys, once
``partition.detection_timeout`` has passed since the cut (the quorum lease), while the
majority keeps writing; after the heal n3 is read-write again.

Needs root (CAP_NET_ADMIN), ``ip`` and ``nft``; skipped naming what is missing, except
under ``CI``, where it fails.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster_support import ApiError, NetnsLab, NodeProcess, ProcessCluster, netns_missing

NODES = ("n1", "n2", "n3")
#: partition.detection_timeout (seconds).
LEASE = 2.0


@pytest.fixture
def lab(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[NetnsLab, ProcessCluster]]:
    missing = netns_missing()
    if missing is not None:
        if os.environ.get("CI"):
            pytest.fail(f"the one-way partition test needs {missing}; CI must provide it")
        pytest.skip(f"needs {missing}")
    lab = NetnsLab()
    cluster = ProcessCluster(
        tmp_path,
        transport=request.param,
        extra={
            "security": {"allow_insecure_remote": True},
            "partition": {"detection_timeout": f"{LEASE:g}s"},
        },
    )
    try:
        for name in NODES:
            cluster.add(name, host=lab.add(name), netns=lab.namespaces[name])
        yield lab, cluster
    finally:
        cluster.close()
        lab.close()


def status(node: NodeProcess) -> dict[str, Any]:
    try:
        result: dict[str, Any] = node.request("GET", "/api/v1/cluster/status", timeout=3.0)
    except (ApiError, OSError):
        return {}
    return result


@pytest.mark.parametrize(
    ("lab", "direction"),
    [("tcp", "n3 cannot send"), ("tcp", "n3 cannot receive"), ("quic", "n3 cannot send")],
    indirect=["lab"],
)
def test_a_one_way_cut_makes_the_node_read_only_within_the_detection_timeout(
    lab: tuple[NetnsLab, ProcessCluster], direction: str, echo: bytes
) -> None:
    net, cluster = lab
    n1, n2, n3 = (cluster.nodes[name] for name in NODES)
    n1.start(bootstrap=True)
    cluster.wait_until(n1.ready, 60, "n1 ready")
    n2.start(join=[n1.address])
    n3.start(join=[n1.address])
    cluster.wait_converged([n1, n2, n3])
    cluster.wait_until(
        lambda: all(status(n).get("lease", {}).get("held") for n in (n1, n2, n3)), 30, "leases"
    )

    for other in ("n1", "n2"):
        if direction == "n3 cannot send":
            net.cut_one_way("n3", other)
        else:
            net.cut_one_way(other, "n3")
    time.sleep(LEASE + 0.1)  # no round trip sent before the cut counts any more

    cut_off = status(n3)
    assert (cut_off["mode"], cut_off["lease"]["held"]) == ("read-only", False), cut_off
    with pytest.raises(ApiError) as refused:
        n3.deploy("late", echo)
    assert refused.value.status == 503
    assert refused.value.body["error"] == "Read-only (minority partition)"
    assert status(n1)["mode"] == "read-write"
    n1.deploy("fine", echo)  # the majority keeps writing

    net.heal()
    cluster.wait_until(lambda: status(n3).get("mode") == "read-write", 60, "n3 read-write")
