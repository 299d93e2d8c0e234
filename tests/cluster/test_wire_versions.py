"""Version gossip and the wire protocol check on join, in one process over the real
tcp transport: every member gossips its release and wire range, and a node whose wire
protocol the cluster cannot speak is refused on both sides with one line."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from test_cluster_routing import FAST, eventually

from caxton import __version__
from caxton.cluster import service, wire
from caxton.cluster.versions import WireAdmission, compatible, wire_range
from caxton.errors import IncompatibleCluster
from caxton.testing import NodeFactory


def test_wire_ranges_overlap_by_one_version() -> None:
    assert wire_range({}) == (1, 1)  # predates the keys: version 1 only
    assert wire_range({"wire": 2}) == (2, 2)
    assert wire_range({"wire": 2, "wire_min": 1}) == (1, 2)
    assert wire_range({"wire": 3, "wire_min": 7}) == (3, 3)  # nonsense minimum ignored
    this = (wire.OLDEST_VERSION, wire.MESSAGE_VERSION)
    assert this == (wire.MESSAGE_VERSION - 1, wire.MESSAGE_VERSION)
    assert compatible(this, (1, 1))  # the previous release
    assert compatible(this, (this[1], this[1] + 1))  # the next one
    assert not compatible(this, (this[1] + 1, this[1] + 2))  # two ahead
    refused: list[tuple[str, str]] = []
    admission = WireAdmission("n1", (1, 2), lambda node, line: refused.append((node, line)))
    assert admission("n2", {"wire": 2, "wire_min": 1}) is None
    assert admission("n9", {"wire": 4, "wire_min": 3, "version": "9.0.0"}) is not None
    assert admission("n9", {"wire": 4, "wire_min": 3, "version": "9.0.0"}) is not None
    assert len(refused) == 1  # logged once per member and range
    assert refused[0][1].startswith(
        "node n1 refuses node n9 (9.0.0): it speaks cluster wire protocol 3-4, this node 1-2"
    )


async def test_members_gossip_release_and_wire(tmp_path: Path) -> None:
    factory = NodeFactory(tmp_path, config=FAST)
    factory.register_driver("transport", "tcp", "caxton_transport_tcp.driver:TcpTransport")
    try:
        first = factory.build("n1", bootstrap=True)
        await first.start()
        second = factory.build("n2", join=[f"127.0.0.1:{first.cluster_address[1]}"])
        await second.start()
        await eventually(lambda: len(first.cluster.members()) == 2)
        await eventually(lambda: all(m["version"] == __version__ for m in first.cluster.members()))
        for member in first.cluster.members():
            assert member["wire"] == [wire.OLDEST_VERSION, wire.MESSAGE_VERSION]
    finally:
        await factory.stop_all()


async def test_a_node_with_an_incompatible_wire_is_refused_on_both_sides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    factory = NodeFactory(tmp_path, config=FAST)
    factory.register_driver("transport", "tcp", "caxton_transport_tcp.driver:TcpTransport")
    try:
        n1 = factory.build("n1", bootstrap=True)
        await n1.start()
        seed = f"127.0.0.1:{n1.cluster_address[1]}"
        n2 = factory.build("n2", join=[seed])
        await n2.start()
        await eventually(lambda: len(n1.cluster.members()) == 2)
        ahead = (wire.MESSAGE_VERSION + 1, wire.MESSAGE_VERSION + 2)

        def two_versions_ahead(node_id: str, supported: Any, on_refused: Any) -> WireAdmission:
            return WireAdmission(node_id, ahead, on_refused)

        # n3 runs a release two wire versions ahead (its Cluster is built at start)
        monkeypatch.setattr(service, "WireAdmission", two_versions_ahead)
        n3 = factory.build("n3", join=[seed])
        with pytest.raises(IncompatibleCluster) as refused:
            await n3.start()
        monkeypatch.undo()
        line = str(refused.value)
        assert line.startswith(
            f"node n3 refuses node n1 ({__version__}): it speaks cluster wire protocol "
            f"{wire.OLDEST_VERSION}-{wire.MESSAGE_VERSION}, this node {ahead[0]}-{ahead[1]}"
        )
        assert "\n" not in line
        # the cluster's side: refused with its own line, never in the view
        texts = [e.text for e in n1.cluster.recent_events() if e.kind == "refused"]
        assert texts
        assert texts[0].startswith("node n1 refuses node n3")
        await asyncio.sleep(1.0)  # a few gossip rounds: n3 must not spread
        for node in (n1, n2):
            assert {m["node_id"] for m in node.cluster.members()} == {"n1", "n2"}
            assert node.cluster.status()["mode"] == "read-write"
    finally:
        await factory.stop_all()
